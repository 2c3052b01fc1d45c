"""Baselines the model must beat: "the first stage that looks bad", with fitted thresholds.

The rule walks the pipeline in order and blames the first stage whose confidence
is below its threshold or whose status looks bad; if none does, the turn is
``correct``. Thresholds are fitted on the training data by coordinate ascent on
a grid, maximising macro-F1. (The other baseline, the same model without context
features, lives in the bundle as a second LightGBM model: see :mod:`fpi.model.training`.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import polars as pl

from fpi.errors import ModelError
from fpi.schema import CLASSES

#: Result-status sets the rule may call bad (fitted: the one with the best macro-F1).
_RESULT_BAD_SETS: Final[tuple[tuple[str, ...], ...]] = (
    ("error",),
    ("error", "no_action"),
    ("error", "clarification"),
    ("error", "no_action", "clarification"),
)
#: Threshold grid: below the threshold is bad; -1 switches the check off.
_GRID: Final = np.concatenate([[-1.0], np.round(np.arange(0.05, 1.0001, 0.025), 4)])
_STAGES: Final = ("wake", "asr", "nlu", "er")


@dataclass(frozen=True)
class RuleBaseline:
    """Thresholds of the first-bad-stage rule.

    ``wake``/``asr``/``nlu``/``er`` are confidence thresholds (a stage is bad below it;
    ER is also bad when an entity is unresolved or ambiguous and ``er_status`` is on);
    ``result_bad`` are the result statuses that count as bad.
    """

    wake: float
    asr: float
    nlu: float
    er: float
    er_status: bool
    result_bad: tuple[str, ...]

    def predict(self, features: pl.DataFrame) -> np.ndarray:
        """Predicted class index per row of a features frame (from fpi.features)."""
        cols = _columns(features)
        return _rule(cols, self.wake, self.asr, self.nlu, self.er, self.er_status,
                     _result_bad(cols, self.result_bad))

    def to_dict(self) -> dict[str, Any]:
        """JSON form stored in the bundle manifest."""
        return {"wake": self.wake, "asr": self.asr, "nlu": self.nlu, "er": self.er,
                "er_status": self.er_status, "result_bad": list(self.result_bad)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RuleBaseline:
        """Inverse of :meth:`to_dict`; ``ModelError`` if malformed."""
        try:
            return cls(float(data["wake"]), float(data["asr"]), float(data["nlu"]),
                       float(data["er"]), bool(data["er_status"]),
                       tuple(str(s) for s in data["result_bad"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"model manifest has a malformed rule baseline: {exc}") from exc


def _columns(features: pl.DataFrame) -> dict[str, np.ndarray]:
    need = ("wake_detected", "wake_min_score", "asr_confidence", "nlu_confidence",
            "er_score_min", "er_n_unresolved", "er_n_ambiguous", "result_status")
    missing = [c for c in need if c not in features.columns]
    if missing:
        raise ModelError(f"rule baseline needs feature column(s) {', '.join(missing)}")
    num = {c: features[c].cast(pl.Float64).fill_null(np.nan).to_numpy() for c in need[:-1]}
    num["result_status"] = features["result_status"].fill_null("").to_numpy()
    return num


def _result_bad(cols: dict[str, np.ndarray], bad: tuple[str, ...]) -> np.ndarray:
    return np.isin(cols["result_status"], np.asarray(bad, dtype=object))


def _stage_bad(cols: dict[str, np.ndarray], stage: str, threshold: Any) -> np.ndarray:
    """Rows where ``stage``'s confidence is below ``threshold`` (for wake: or no wake);
    a column of thresholds gives one row of these per threshold."""
    if stage == "wake":
        return (cols["wake_detected"] == 0) | (cols["wake_min_score"] < threshold)
    return cols[f"{stage}_confidence" if stage != "er" else "er_score_min"] < threshold


def _er_status_bad(cols: dict[str, np.ndarray]) -> np.ndarray:
    return (cols["er_n_unresolved"] > 0) | (cols["er_n_ambiguous"] > 0)


def _first_bad(bad: list[np.ndarray]) -> np.ndarray:
    """Class per row: the first stage whose rows are ``bad`` (class k is stage k-1, after
    "correct"), else correct (0). Several rows of one stage's ``bad`` (a 2-D array) give
    one row of classes each."""
    shape = np.broadcast_shapes(*(b.shape for b in bad))
    pred = np.zeros(shape, dtype=np.int64)
    undecided = np.ones(shape, dtype=bool)
    for k, stage_bad in enumerate(bad, start=1):
        hit = undecided & stage_bad
        pred[hit] = k
        undecided &= ~hit
    return pred


def _rule(cols: dict[str, np.ndarray], wake: float, asr: float, nlu: float, er: float,
          er_status: bool, result_bad: np.ndarray) -> np.ndarray:
    # NaN (stage absent) compares False: absent is unknown, not bad.
    er_bad = _stage_bad(cols, "er", er) | (er_status & _er_status_bad(cols))
    return _first_bad([_stage_bad(cols, "wake", wake), _stage_bad(cols, "asr", asr),
                       _stage_bad(cols, "nlu", nlu), er_bad, result_bad])


#: Each value of each parameter coordinate ascent tries, in order.
_OPTIONS: Final[dict[str, tuple[Any, ...]]] = {
    **{s: tuple(float(v) for v in _GRID) for s in _STAGES},
    "er_status": (False, True), "result_bad": _RESULT_BAD_SETS}


class _Scorer:
    """The rule's macro-F1 on fixed rows for every value of one parameter at once (the
    others fixed), as coordinate ascent tries them: each stage's bad rows per threshold
    are worked out once, the classes' support once; each value's F1 is
    :func:`fpi.metrics.macro_f1_score`'s (the same floats)."""

    def __init__(self, cols: dict[str, np.ndarray], y: np.ndarray, k: int) -> None:
        self.k = k
        self.yk = y.astype(np.int64) * k
        self.support = np.bincount(y.astype(np.int64), minlength=k).astype(np.float64)
        self.present = self.support > 0
        grid = np.asarray(_OPTIONS["wake"])[:, None]
        self.bad = {s: _stage_bad(cols, s, grid) for s in _STAGES}  # (thresholds, rows)
        self.status_bad = _er_status_bad(cols)
        self.result_bad = np.stack([_result_bad(cols, s) for s in _RESULT_BAD_SETS])

    def scores(self, p: dict[str, Any], name: str) -> np.ndarray:
        """Macro-F1 of ``{**p, name: value}`` for each value of ``_OPTIONS[name]``."""
        at = {n: _OPTIONS[n].index(p[n]) for n in _OPTIONS}
        bad = {s: self.bad[s] if s == name else self.bad[s][at[s]] for s in _STAGES}
        er_bad = (np.stack([bad["er"], bad["er"] | self.status_bad]) if name == "er_status"
                  else bad["er"] | self.status_bad if p["er_status"] else bad["er"])
        result = self.result_bad if name == "result_bad" else self.result_bad[at["result_bad"]]
        pred = _first_bad([bad["wake"], bad["asr"], bad["nlu"], er_bad, result])
        m, k = len(pred), self.k
        if not self.present.any():
            return np.full(m, np.nan)
        conf = np.bincount((np.arange(m)[:, None] * (k * k) + self.yk + pred).ravel(),
                           minlength=m * k * k).reshape(m, k, k)
        tp = conf[:, np.arange(k), np.arange(k)].astype(np.float64)[:, self.present]
        predicted = conf.sum(axis=1).astype(np.float64)[:, self.present]
        return np.mean(2 * tp / (self.support[self.present] + predicted), axis=1)


def fit_rule_baseline(features: pl.DataFrame, y: np.ndarray, *, max_rows: int = 200_000,
                      seed: int = 0, passes: int = 3) -> RuleBaseline:
    """Fit the rule's thresholds on training data by coordinate ascent on macro-F1.

    Parameters
    ----------
    features
        Features frame of the training turns.
    y
        True class indices, in :data:`fpi.schema.CLASSES` order.
    max_rows
        Fit on a seeded sample of at most this many rows (the rule has 6 parameters).
    """
    if features.height > max_rows:
        idx = np.sort(np.random.default_rng(seed).choice(features.height, max_rows,
                                                         replace=False))
        features, y = features[idx], y[idx]
    score = _Scorer(_columns(features), y, len(CLASSES))
    params: dict[str, Any] = {s: -1.0 for s in _STAGES}
    params.update(er_status=True, result_bad=_RESULT_BAD_SETS[0])
    best = float(score.scores(params, "wake")[_OPTIONS["wake"].index(params["wake"])])
    for _ in range(passes):
        improved = False
        for name, options in _OPTIONS.items():  # each value with the others as they are
            for value, s in zip(options, score.scores(params, name), strict=True):
                if s > best + 1e-12:
                    best, params, improved = float(s), {**params, name: value}, True
        if not improved:
            break
    return RuleBaseline(params["wake"], params["asr"], params["nlu"], params["er"],
                        params["er_status"], tuple(params["result_bad"]))
