"""Examples from the flagged slices and the classes that moved: confident and borderline.

Which slices get flagged is only known once the night has been read, so the stream
keeps a bounded pool: for every slice value of every dimension and every predicted
failure class, the ``per_group`` most confident turns and the ``per_group`` turns
with the smallest margin between the two most probable classes (borderline calls).
That is at most ``2 * per_group * classes * values`` rows whatever the size of the
night. Once the flags are known, :func:`pick` takes a few of each kind per target.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from fpi.diagnose import attribution as attr
from fpi.numbers import stable_round
from fpi.redact import Redactor
from fpi.schema import CLASSES, COMPONENTS, KEY_COLUMNS

if TYPE_CHECKING:
    from fpi.model import ModelBundle

_PREFIX = "_slice_"


def turn_view(turns: pl.DataFrame) -> pl.DataFrame:
    """The columns an example shows, plus the next turn's text (same session)."""
    asr, nlu, res, fb = (pl.col(c) for c in ("asr", "nlu", "result", "feedback"))
    return turns.select(
        "session_id", "turn_index",
        asr.struct.field("text").alias("heard_text"),
        asr.struct.field("confidence").alias("heard_confidence"),
        asr.struct.field("nbest").alias("heard_nbest"),
        nlu.struct.field("domain").alias("nlu_domain"),
        nlu.struct.field("intent").alias("nlu_intent"),
        nlu.struct.field("confidence").alias("nlu_confidence"),
        nlu.struct.field("slots").alias("nlu_slots"),
        pl.col("er").struct.field("entities").alias("er_entities"),
        res.struct.field("status").alias("result_status"),
        res.struct.field("action").alias("result_action"),
        res.struct.field("response_text").alias("result_response"),
        fb.struct.field("barge_in").alias("next_barge_in"),
        fb.struct.field("explicit").alias("next_explicit"),
        asr.struct.field("text").shift(-1).over("session_id").alias("next_text"),
        asr.struct.field("text").shift(1).over("session_id").alias("prev_text"),
        pl.col("label").struct.field("failure_point").alias("label"),
    )


def turn_view_rows(turns: pl.DataFrame, rows: np.ndarray) -> pl.DataFrame:
    """``turn_view(turns)[rows]``, built from the turns of those rows' sessions only (the
    next and previous texts come from the same session)."""
    ids = turns["session_id"].gather(rows)
    keep = np.flatnonzero(turns["session_id"].is_in(ids.unique().implode()).to_numpy())
    return turn_view(turns[keep])[np.searchsorted(keep, rows)]


class ExamplePool:
    """Per (slice value, predicted class): the most confident and the most borderline turns."""

    def __init__(self, per_group: int) -> None:
        self.per_group = per_group
        self.pool: pl.DataFrame | None = None

    def add(self, turns: pl.DataFrame, feats: pl.DataFrame, probs: np.ndarray,
            slices: pl.DataFrame) -> None:
        """One batch: its turns (whole sessions), features, probabilities and slice values."""
        if self.per_group <= 0:
            return
        pred = probs.argmax(axis=1)
        top2 = np.sort(probs, axis=1)[:, -2:]
        slim = pl.DataFrame({
            "session_id": turns["session_id"], "turn_index": turns["turn_index"],
            "_prob": top2[:, 1], "_margin": top2[:, 1] - top2[:, 0],
            "_pred": pred.astype(np.int64), "_i": np.arange(len(pred)),
        }).with_columns(*[slices[c].cast(pl.String).alias(_PREFIX + c)
                          for c in slices.columns]).filter(pl.col("_pred") > 0)
        # choose on the slim frame, then gather the few chosen rows' text and features
        chosen = self._trim(slim).sort("_i")
        idx = chosen["_i"].to_numpy()
        cand = turn_view_rows(turns, idx).with_columns(
            feats[idx].drop(KEY_COLUMNS).to_struct("_feats"),
            *[chosen[c] for c in chosen.columns if c.startswith("_") and c != "_i"])
        self.pool = self._trim(cand if self.pool is None
                               else pl.concat([self.pool, cand], how="vertical_relaxed"))

    @staticmethod
    def merge(pools: Sequence[pl.DataFrame], per_group: int) -> pl.DataFrame:
        """The pool of the union of partitions' pools (each trimmed the same way, so the
        merge keeps exactly the turns one pool over the whole night would)."""
        return ExamplePool(per_group)._trim(pl.concat(pools, how="vertical_relaxed"))

    def _trim(self, cand: pl.DataFrame) -> pl.DataFrame:
        k = self.per_group
        keys = ["session_id", "turn_index"]
        # each order once (the keys are unique, so it is total); in it, a row is kept if it
        # is among the first k of its (class, value) group of any slice dimension
        in_head = pl.any_horizontal(pl.int_range(pl.len()).over(["_pred", col]) < k
                                    for col in cand.columns if col.startswith(_PREFIX))
        heads = [cand.sort([by, *keys], descending=[desc, False, False]).filter(in_head)
                 for by, desc in (("_prob", True), ("_margin", False))]
        return pl.concat(heads).unique(keys, maintain_order=True).sort(keys)


def _targets(summary: Mapping[str, Any], max_slices: int) -> list[dict[str, Any]]:
    """Flagged slices (against the baseline when there is one), then moved classes."""
    sl = summary.get("slices") or {}
    vs = sl.get("vs_baseline")
    rows = (vs["top"] if vs is not None else sl.get("top") or [])[:max_slices]
    out = [{k: t[k] for k in ("dimension", "value", "class", "also") if k in t} for t in rows]
    for m in (summary.get("headline") or {}).get("moved") or []:
        if m["direction"] == "up" and not any(t["class"] == m["class"] for t in out):
            out.append({"dimension": None, "value": None, "class": m["class"]})
    return out


def pick(pool: ExamplePool, summary: Mapping[str, Any],
         render: Callable[[pl.DataFrame], list[dict[str, Any]]], *, per_kind: int = 2,
         max_slices: int = 3) -> list[dict[str, Any]]:
    """The ``focus_examples`` block: per target, ``per_kind`` confident and borderline turns
    (``render`` turns pool rows into example dicts: attribution, redaction)."""
    if pool.pool is None or pool.pool.height == 0:
        return []
    out = []
    keys = ["session_id", "turn_index"]
    for t in _targets(summary, max_slices):
        if t["class"] not in CLASSES[1:]:
            continue
        rows = pool.pool.filter(pl.col("_pred") == CLASSES.index(t["class"]))
        if t["dimension"] is not None:
            rows = rows.filter(pl.col(_PREFIX + t["dimension"]) == str(t["value"]))
        conf = rows.sort(["_prob", *keys], descending=[True, False, False]).head(per_kind)
        rest = rows.join(conf.select(keys), on=keys, how="anti")
        border = rest.sort(["_margin", *keys]).head(per_kind)
        chosen = pl.concat([conf.with_columns(pl.lit("confident").alias("_kind")),
                            border.with_columns(pl.lit("borderline").alias("_kind"))])
        if chosen.height:
            out.append({**t, "examples": render(chosen)})
    return out


# ---------------------------------------------------------------------------
# Rendering examples
# ---------------------------------------------------------------------------


def _runner_up(text: str | None, nbest: list[dict[str, Any]] | None) -> str | None:
    for alt in nbest or []:
        if alt.get("text") is not None and alt.get("text") != text:
            return str(alt["text"])
    return None


def example_dict(row: Mapping[str, Any], probs_row: float, pred: int, contrib: np.ndarray,
             features: Sequence[Any], red: Redactor | None) -> dict[str, Any]:
    """One example turn; with ``red`` every log string that can carry user content is
    masked and the session id pseudonymised (categorical fields stay)."""
    def txt(v: Any) -> Any:
        return v if red is None else red.text(v)

    grouped = contrib @ attr.group_matrix(features)
    return {
        "session_id": row["session_id"] if red is None else red.id(row["session_id"]),
        "turn_index": int(row["turn_index"]),
        "predicted": CLASSES[pred],
        "probability": stable_round(float(probs_row), 6),
        "label": row["label"],
        "heard": {"text": txt(row["heard_text"]), "confidence": row["heard_confidence"],
                  "runner_up": txt(_runner_up(row["heard_text"], row["heard_nbest"]))},
        "understood": {"domain": row["nlu_domain"], "intent": row["nlu_intent"],
                       "confidence": row["nlu_confidence"],
                       "slots": [{"name": s["name"], "value": txt(s["value"])}
                                 for s in row["nlu_slots"] or []]},
        "resolved": [{"mention": txt(e["mention"]), "resolved_name": txt(e["resolved_name"]),
                      "status": e["status"], "score": e["score"]}
                     for e in row["er_entities"] or []],
        "answered": {"status": row["result_status"], "action": txt(row["result_action"]),
                     "response": txt(row["result_response"])},
        "next": {"barge_in": row["next_barge_in"], "explicit": row["next_explicit"],
                 "text": txt(row["next_text"])},
        "previous": {"text": txt(row.get("prev_text"))},
        "components": {g: stable_round(float(grouped[j]), 4) for j, g in enumerate(COMPONENTS)},
        "features": attr.top_features(contrib, features, row["_feats"], n=5),
    }


def render_examples(examples: pl.DataFrame | None, bundle: ModelBundle,
                    red: Redactor | None) -> dict[str, list[dict[str, Any]]]:
    """The ``examples`` block: the top candidates per predicted failure class, attributed."""
    out: dict[str, list[dict[str, Any]]] = {c: [] for c in CLASSES[1:]}
    if examples is None or examples.height == 0:
        return out
    ex = examples.sort(["_pred", "_prob", "session_id", "turn_index"],
                           descending=[False, True, False, False])
    contrib = bundle.contributions(ex.select(*KEY_COLUMNS, pl.col("_feats").struct.unnest()),
                                   ex["_pred"].to_numpy())
    for i, row in enumerate(ex.iter_rows(named=True)):
        p = int(row["_pred"])
        out[CLASSES[p]].append(example_dict(row, row["_prob"], p, contrib[i, p], bundle.features,
                                        red))
    return out


def render_focus(rows: pl.DataFrame, bundle: ModelBundle, red: Redactor | None
                  ) -> list[dict[str, Any]]:
    """Pool rows (with ``_kind``) as example dicts, each with its attribution."""
    contrib = bundle.contributions(rows.select(*KEY_COLUMNS, pl.col("_feats").struct.unnest()),
                                   rows["_pred"].to_numpy())
    return [{"kind": row["_kind"],
             **example_dict(row, row["_prob"], int(row["_pred"]), contrib[i, int(row["_pred"])],
                        bundle.features, red)}
            for i, row in enumerate(rows.iter_rows(named=True))]

