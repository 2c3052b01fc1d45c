"""One turn's call explained: probabilities, per-component contributions, top features."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from fpi.diagnose import attribution as attr
from fpi.diagnose.examples import example_dict, turn_view
from fpi.diagnose.inputs import as_list, canonical_parquet, load_model
from fpi.errors import InputError, MissingExtra
from fpi.features import build_features
from fpi.numbers import stable_round
from fpi.redact import ID_PREFIX, SALT_ENV, redactor
from fpi.schema import CLASSES

if TYPE_CHECKING:
    from fpi.model import ModelBundle


@dataclass(frozen=True)
class Explanation:
    """One turn's call: probabilities, per-component contributions, top features."""

    session_id: str
    turn_index: int
    predicted: str
    probabilities: dict[str, float]
    #: class -> component -> contribution (log-odds), plus ``bias``
    components: dict[str, dict[str, float]]
    features: list[dict[str, Any]]
    turn: dict[str, Any]
    #: every feature's contribution toward the predicted class, its value, and the bias
    feature_names: tuple[str, ...] = ()
    feature_values: tuple[Any, ...] = ()
    contributions: tuple[float, ...] = ()
    bias: float = 0.0

    def to_shap(self) -> Any:
        """The call as a :class:`shap.Explanation` (e.g. for ``shap.plots.waterfall``).

        Needs the ``shap`` extra (``pip install 'fpi[shap]'``); raises
        :class:`~fpi.errors.MissingExtra` without it.
        """
        try:
            import shap
        except ImportError as exc:
            raise MissingExtra(f"Explanation.to_shap needs shap, which is not installed "
                               f"({exc}): pip install 'fpi[shap]'") from exc

        return shap.Explanation(values=np.asarray(self.contributions), base_values=self.bias,
                                data=np.asarray(self.feature_values, dtype=object),
                                feature_names=list(self.feature_names))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"session_id": self.session_id, "turn_index": self.turn_index,
                "predicted": self.predicted, "probabilities": self.probabilities,
                "components": self.components, "features": self.features, "turn": self.turn}


def _resolve_session(lf: pl.LazyFrame, session_id: str, salt: str | None) -> str:
    """The real id behind a pseudonym (``anon-...``); any other id unchanged."""
    if not session_id.startswith(ID_PREFIX):
        return session_id
    if lf.filter(pl.col("session_id") == session_id).select(pl.len()).collect().item():
        return session_id  # a real id that happens to look like a pseudonym
    red = redactor(salt)
    if not red.stable:
        raise InputError(f"session {session_id!r} is a pseudonym from a redacted report: give "
                         f"the salt it was made with ({SALT_ENV} or --redact-salt)")
    ids = lf.select(pl.col("session_id").unique()).collect()["session_id"]
    found = ids.filter(red.ids(ids) == session_id)
    if found.len() == 0:
        raise InputError(f"session {session_id!r} is not in the input under this salt "
                         f"(salt id {red.describe()['salt_id']})")
    return str(found[0])


def explain(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    model: str | os.PathLike[str] | ModelBundle,
    session_id: str,
    turn_index: int,
    top: int = 8,
    redact_salt: str | None = None,
    allow_truncated: bool = False,
) -> Explanation:
    """Explain the call on one turn (its session supplies the context features).

    ``session_id`` may also be a pseudonym from a redacted report (``anon-...``):
    the session is then found with the salt the report was made with
    (``redact_salt``, else ``$FPI_REDACT_SALT``).
    """
    from fpi.ingest import read_traces

    bundle = load_model(model)
    paths = as_list(inputs)
    canonical = canonical_parquet(paths)
    if canonical is not None:
        # ingested Parquet: read only the session's rows
        lf = pl.scan_parquet(canonical)
        bundle.check_compatible(lf)
    else:
        turns, _ = read_traces(paths, allow_truncated=allow_truncated)
        bundle.check_compatible(turns)
        lf = turns.lazy()
    session_id = _resolve_session(lf, session_id, redact_salt)
    session = lf.filter(pl.col("session_id") == session_id).collect()
    if session.height == 0:
        raise InputError(f"session {session_id!r} is not in the input")
    pos = session["turn_index"].to_list()
    if turn_index not in pos:
        raise InputError(f"session {session_id!r} has no turn {turn_index} "
                         f"(its turns: {', '.join(map(str, pos[:20]))})")
    i = pos.index(turn_index)
    feats = build_features(session)
    probs = bundle.predict_proba(feats)[i]
    contrib = bundle.contributions(feats[i: i + 1])[0]
    p = int(probs.argmax())
    g = contrib @ attr.group_matrix(bundle.features)
    row = {**turn_view(session).row(i, named=True), "_feats": feats.row(i, named=True)}
    ex = example_dict(row, probs[p], p, contrib[p], bundle.features, red=None)
    return Explanation(
        session_id=session_id, turn_index=turn_index, predicted=CLASSES[p],
        probabilities={c: stable_round(float(probs[k]), 6) for k, c in enumerate(CLASSES)},
        components={c: {col: stable_round(float(g[k, j]), 4) for j, col in
                        enumerate(attr.GROUP_COLUMNS)} for k, c in enumerate(CLASSES)},
        features=attr.top_features(contrib[p], bundle.features, row["_feats"], n=top),
        turn={k: v for k, v in ex.items() if k not in ("components", "features")},
        feature_names=tuple(f.name for f in bundle.features),
        feature_values=tuple(row["_feats"].get(f.name) for f in bundle.features),
        contributions=tuple(float(v) for v in contrib[p, :-1]),
        bias=float(contrib[p, -1]),
    )

