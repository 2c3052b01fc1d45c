"""Examples from the flagged slices and the classes that moved: confident and borderline.

Which slices get flagged is only known once the night has been read, so the stream
keeps a bounded pool: for every slice value of every dimension and every predicted
failure class, the ``per_group`` most confident turns and the ``per_group`` turns
with the smallest margin between the two most probable classes (borderline calls).
That is at most ``2 * per_group * classes * values`` rows whatever the size of the
night. Once the flags are known, :func:`pick` takes a few of each kind per target.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import polars as pl

from fpi.schema import CLASSES, KEY_COLUMNS

_PREFIX = "_slice_"


class ExamplePool:
    """Per (slice value, predicted class): the most confident and the most borderline turns."""

    def __init__(self, per_group: int) -> None:
        self.per_group = per_group
        self.pool: pl.DataFrame | None = None

    def add(self, view: pl.DataFrame, feats: pl.DataFrame, probs: np.ndarray,
            slices: pl.DataFrame) -> None:
        """One batch: ``view`` (turn columns), its features, probabilities and slice values."""
        if self.per_group <= 0:
            return
        pred = probs.argmax(axis=1)
        top2 = np.sort(probs, axis=1)[:, -2:]
        slim = pl.DataFrame({
            "session_id": view["session_id"], "turn_index": view["turn_index"],
            "_prob": top2[:, 1], "_margin": top2[:, 1] - top2[:, 0],
            "_pred": pred.astype(np.int64), "_i": np.arange(len(pred)),
        }).with_columns(*[slices[c].cast(pl.String).alias(_PREFIX + c)
                          for c in slices.columns]).filter(pl.col("_pred") > 0)
        # choose on the slim frame, then gather the few chosen rows' text and features
        chosen = self._trim(slim).sort("_i")
        idx = chosen["_i"].to_numpy()
        cand = view[idx].with_columns(
            feats[idx].drop(KEY_COLUMNS).to_struct("_feats"),
            *[chosen[c] for c in chosen.columns if c.startswith("_") and c != "_i"])
        self.pool = self._trim(cand if self.pool is None
                               else pl.concat([self.pool, cand], how="vertical_relaxed"))

    def _trim(self, cand: pl.DataFrame) -> pl.DataFrame:
        k = self.per_group
        keys = ["session_id", "turn_index"]
        parts: list[pl.DataFrame] = []
        for col in (c for c in cand.columns if c.startswith(_PREFIX)):
            for by, desc in (("_prob", True), ("_margin", False)):
                parts.append(cand.sort([by, *keys], descending=[desc, False, False])
                             .group_by(["_pred", col], maintain_order=True).head(k)
                             .select(cand.columns))
        return pl.concat(parts).unique(keys, maintain_order=True).sort(keys)


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
