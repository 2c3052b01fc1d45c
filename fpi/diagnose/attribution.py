"""Per-component attribution from exact TreeSHAP values.

``ModelBundle.contributions`` returns LightGBM's ``pred_contrib``: exact
TreeSHAP values on the raw (margin) scale, the same numbers as shap's
``TreeExplainer``, one per feature plus a bias, for every class. Each feature
belongs to one component (``Feature.group``), so summing a turn's values by
group says how much each component's logs pushed the call toward the class it
was given.

Exact values for every turn of a big night do not fit a nightly budget on a
small machine, so by default they are computed for a *stratified sample*: the
same number of turns per predicted class (every class represented, rare ones
in full), drawn with seeded random keys (bottom-k per class, so a streaming
caller can keep a bounded reservoir), and sized from a time budget. Per-class,
per-component and per-slice means are then estimated with inverse-probability
weights ``N_class / sampled_class`` and normal intervals. ``all`` computes every
turn; ``none`` skips attribution.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from fpi.features import Feature
from fpi.numbers import stable_round
from fpi.schema import CLASSES, COMPONENTS

if TYPE_CHECKING:
    from fpi.model import ModelBundle

MODES: tuple[str, ...] = ("sample", "all", "none")
#: Column names of the grouped contributions: one per component, then the bias.
GROUP_COLUMNS: tuple[str, ...] = (*COMPONENTS, "bias")


def group_matrix(features: Sequence[Feature]) -> np.ndarray:
    """(n_features + 1, n_components + 1) 0/1 matrix summing features into groups (+ bias)."""
    m = np.zeros((len(features) + 1, len(GROUP_COLUMNS)))
    for i, f in enumerate(features):
        m[i, COMPONENTS.index(f.group)] = 1.0
    m[-1, -1] = 1.0
    return m


def grouped(contrib: np.ndarray, features: Sequence[Feature]) -> np.ndarray:
    """Sum ``(n, k, F + 1)`` contributions into ``(n, k, len(GROUP_COLUMNS))`` groups."""
    return contrib @ group_matrix(features)


def for_class(values: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Pick each row's slice ``values[i, classes[i]]`` from an ``(n, k, g)`` array."""
    return values[np.arange(len(values)), classes]


@dataclass(frozen=True)
class Timing:
    """Measured attribution throughput, to size a sample from a time budget."""

    rows: int
    seconds: float

    @property
    def rows_per_second(self) -> float:
        return self.rows / max(self.seconds, 1e-9)


def measure(bundle: ModelBundle, features: pl.DataFrame, rows: int = 100) -> Timing:
    """Time exact contributions toward each row's predicted class (as diagnose computes
    them) on up to ``rows`` rows of ``features``."""
    part = features.head(rows)
    pred = bundle.predict_proba(part).argmax(axis=1)
    bundle.contributions(part.head(1), pred[:1])  # builds the per-class models: not timed
    t0 = time.perf_counter()
    bundle.contributions(part, pred)
    return Timing(part.height, time.perf_counter() - t0)


def sample_size(timing: Timing, budget_seconds: float, *, minimum: int = 120,
                maximum: int = 200_000) -> int:
    """How many turns fit ``budget_seconds`` of attribution at the measured throughput."""
    return int(min(max(timing.rows_per_second * budget_seconds, minimum), maximum))


def per_class_quota(total: int, n_classes: int = len(CLASSES)) -> int:
    """Equal allocation per predicted class: rare classes are kept in full."""
    return max(1, math.ceil(total / n_classes))


def bottom_k(keys: np.ndarray, pred: np.ndarray, quota: int) -> np.ndarray:
    """Indices of the ``quota`` smallest keys within each predicted class (sorted)."""
    order = np.lexsort((keys, pred))
    sorted_pred = pred[order]
    starts = np.searchsorted(sorted_pred, sorted_pred, side="left")
    rank = np.arange(len(order)) - starts
    return np.sort(order[rank < quota])


def summarize(
    values: np.ndarray,
    pred: np.ndarray,
    predicted_counts: np.ndarray,
    *,
    mode: str,
    slices: pl.DataFrame | None = None,
    slice_targets: Sequence[dict[str, Any]] = (),
    z: float = 1.96,
) -> dict[str, Any]:
    """Per-class, per-component and per-slice attribution estimates with intervals.

    The attributed turns' :class:`AllMoments` through :func:`summarize_moments` (the
    one estimator; ``--attribution all`` merges the moments over partitions).

    Parameters
    ----------
    values : (m, len(GROUP_COLUMNS)) each attributed turn's grouped contributions
        toward its own predicted class (log-odds).
    pred : (m,) predicted class index of each attributed turn.
    predicted_counts : (k,) how many turns of the night were predicted as each class.
    mode : ``sample`` or ``all`` (recorded in the result).
    slices : (m rows) slice columns of the attributed turns, for ``slice_targets``.
    slice_targets : entries with ``dimension``, ``value``, ``class`` (the flagged slices).
    z : normal quantile of the intervals.
    """
    mom = AllMoments.of(values, np.asarray(pred, np.int64),
                        pl.DataFrame() if slices is None else slices)
    return summarize_moments(mom, predicted_counts, mode=mode,
                             slice_targets=() if slices is None else slice_targets, z=z)


def top_features(row: np.ndarray, features: Sequence[Feature], values: dict[str, Any],
                 n: int = 5) -> list[dict[str, Any]]:
    """The ``n`` features with the largest absolute contribution in one (F + 1,) row."""
    # ranked on |contribution| to 1e-12: last-bit noise between machines cannot
    # reorder two features that tie (ties keep model column order)
    idx = np.argsort(-np.round(np.abs(row[:-1]), 12), kind="stable")[:n]
    out = []
    for i in idx:
        f = features[int(i)]
        v = values.get(f.name)
        if isinstance(v, float):
            v = stable_round(v, 4)
        out.append({"name": f.name, "component": f.group, "value": v,
                    "contribution": stable_round(float(row[i]), 4)})
    return out


# ---------------------------------------------------------------------------
# --attribution all over partitions: count, sum and sum of squares merge by adding
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Moments:
    """Per group of rows: count (m,), sum (m, c) and sum of squares (m, c) of values."""

    count: np.ndarray
    total: np.ndarray
    squares: np.ndarray

    @classmethod
    def of(cls, values: np.ndarray, codes: np.ndarray, groups: int) -> Moments:
        total = np.zeros((groups, values.shape[1]))
        squares = np.zeros((groups, values.shape[1]))
        np.add.at(total, codes, values)
        np.add.at(squares, codes, values**2)
        return cls(np.bincount(codes, minlength=groups).astype(np.int64), total, squares)

    def __add__(self, other: Moments) -> Moments:
        return Moments(self.count + other.count, self.total + other.total,
                       self.squares + other.squares)

    def mean_var(self, i: int, j: int) -> tuple[float, float]:
        """Mean and sample variance (ddof=1; 0 for fewer than two rows) of group ``i``,
        column ``j``."""
        m = int(self.count[i])
        mean = float(self.total[i, j]) / max(m, 1)
        var = max(float(self.squares[i, j]) - m * mean * mean, 0.0) / (m - 1) if m > 1 else 0.0
        return mean, var

    def mean_ci(self, i: int, j: int, z: float) -> dict[str, float | None]:
        m = int(self.count[i])
        if m == 0:
            return {"mean": None, "low": None, "high": None}
        mean, var = self.mean_var(i, j)
        se = math.sqrt(var / m)
        return {"mean": stable_round(mean, 5), "low": stable_round(mean - z * se, 5),
                "high": stable_round(mean + z * se, 5)}


@dataclass(frozen=True)
class AllMoments:
    """What ``--attribution all`` needs of a partition: per predicted class the moments of
    the attributed values and of failure calls' positive shares, and per (slice value,
    predicted class) the moments of the values."""

    by_class: Moments  # k groups, len(GROUP_COLUMNS) columns
    share: Moments  # k groups, len(COMPONENTS) columns (failure calls only)
    #: dimension -> (its values, moments of value v and class c at row v * k + c)
    by_slice: dict[str, tuple[tuple[str, ...], Moments]]

    @classmethod
    def of(cls, values: np.ndarray, pred: np.ndarray, slices: pl.DataFrame) -> AllMoments:
        k, nc = len(CLASSES), len(COMPONENTS)
        pos = np.clip(values[:, :nc], 0, None)
        share = pos / np.clip(pos.sum(axis=1, keepdims=True), 1e-12, None)
        fail = pred > 0
        by_slice = {}
        for dim in slices.columns:
            cats, codes = np.unique(slices[dim].to_numpy().astype(str), return_inverse=True)
            codes = codes.reshape(-1)
            by_slice[dim] = (tuple(str(c) for c in cats),
                             Moments.of(values, codes * k + pred, len(cats) * k))
        return cls(Moments.of(values, pred, k), Moments.of(share[fail], pred[fail], k), by_slice)

    @staticmethod
    def merge(parts: Sequence[AllMoments]) -> AllMoments:
        k = len(CLASSES)
        by_class = parts[0].by_class
        share = parts[0].share
        for p in parts[1:]:
            by_class, share = by_class + p.by_class, share + p.share
        by_slice = {}
        for dim in parts[0].by_slice:
            values = tuple(sorted({v for p in parts for v in p.by_slice[dim][0]}))
            index = {v: i for i, v in enumerate(values)}
            cols = by_class.total.shape[1]
            acc = Moments(np.zeros(len(values) * k, np.int64), np.zeros((len(values) * k, cols)),
                          np.zeros((len(values) * k, cols)))
            for p in parts:
                vals, mom = p.by_slice[dim]
                at = (np.array([index[v] for v in vals], np.int64)[:, None] * k
                      + np.arange(k)).reshape(-1)
                acc.count[at] += mom.count
                acc.total[at] += mom.total
                acc.squares[at] += mom.squares
            by_slice[dim] = (values, acc)
        return AllMoments(by_class, share, by_slice)


def summarize_moments(mom: AllMoments, predicted_counts: np.ndarray, *, mode: str = "all",
                      slice_targets: Sequence[dict[str, Any]] = (), z: float = 1.96
                      ) -> dict[str, Any]:
    """:func:`summarize` from moments: of a sample (``mode="sample"``), or of every turn
    merged over partitions (``all``)."""
    k = len(CLASSES)
    comps = list(COMPONENTS)
    by_class: dict[str, Any] = {}
    for ci, c in enumerate(CLASSES):
        m = int(mom.by_class.count[ci])
        by_class[c] = {
            "turns_predicted": int(predicted_counts[ci]), "turns_attributed": m,
            "components": {g: mom.by_class.mean_ci(ci, j, z) for j, g in enumerate(comps)},
            "bias": None if m == 0 else stable_round(mom.by_class.mean_var(ci, len(comps))[0], 5),
        }
    # Share of the positive evidence for failure calls, by component. Stratified by
    # predicted class: sum_c W_c mean_c, variance sum_c W_c^2 var_c / m_c, each class
    # weighted by its turns in the night (a sample's classes were drawn in equal numbers).
    strata = np.asarray(predicted_counts if mode == "sample" else mom.share.count, np.float64)
    present = [ci for ci in range(1, k) if mom.share.count[ci] > 0]
    total_w = float(sum(strata[ci] for ci in present))
    by_component: dict[str, Any] = {}
    for j, g in enumerate(comps):
        if total_w <= 0:
            by_component[g] = {"share": None, "low": None, "high": None}
            continue
        est, var = 0.0, 0.0
        for ci in present:
            mean, v = mom.share.mean_var(ci, j)
            wc = strata[ci] / total_w
            est += wc * mean
            var += wc**2 * v / int(mom.share.count[ci])
        se = math.sqrt(var)
        by_component[g] = {"share": stable_round(float(est), 5),
                           "low": stable_round(float(max(est - z * se, 0)), 5),
                           "high": stable_round(float(min(est + z * se, 1)), 5)}
    by_slice: list[dict[str, Any]] = []
    for t in slice_targets:
        ci = CLASSES.index(t["class"])
        values, sm = mom.by_slice.get(t["dimension"], ((), None))
        row = (values.index(str(t["value"])) * k + ci
               if sm is not None and str(t["value"]) in values else None)
        empty = Moments(np.zeros(1, np.int64), np.zeros((1, len(GROUP_COLUMNS))),
                        np.zeros((1, len(GROUP_COLUMNS))))
        src, i = (sm, row) if sm is not None and row is not None else (empty, 0)
        by_slice.append({
            "dimension": t["dimension"], "value": t["value"], "class": t["class"],
            "turns_attributed": int(src.count[i]),
            "components": {g: src.mean_ci(i, j, z) for j, g in enumerate(comps)},
        })
    return {
        "mode": mode,
        "turns_attributed": int(mom.by_class.count.sum()),
        "scale": "log-odds (raw margin), toward each turn's predicted class",
        "by_class": by_class,
        "by_component": by_component,
        "by_slice": by_slice,
    }
