"""The model measured on production traffic, from the queue's probability sample.

Only queue turns drawn at random with a known inclusion probability count (strata
``random`` and ``stratified``; the targeted ``coverage`` and ``uncertainty`` picks
are not a sample of the night and are left out). Each labelled sampled turn of
design stratum ``h`` weighs ``N_h / m_h`` (``m_h`` of its ``n_h`` sampled turns were
labelled; unlabelled ones are treated as missing at random within their stratum,
so with all of them labelled the weight is ``1 / inclusion_prob``).

For each class ``c`` the weighted (Horvitz-Thompson) totals of true positives
``TP``, predicted ``P`` and true ``T`` give ratio estimators of the night's
precision ``TP/P``, recall ``TP/T``, F1 ``2TP/(P+T)`` and rate ``T/N``. Two
interval methods, both respecting the strata:

``bootstrap``
    Each stratum's labelled turns are resampled with replacement, the ratios
    recomputed, and the percentiles taken. Degenerate for a rare class whose few
    sampled turns all agree (an interval of one point).
``dirichlet`` (the default)
    Per class and stratum, the shares of the four cells (true positive, false
    positive, false negative, the rest) get a Dirichlet posterior with a Jeffreys
    prior (counts + 1/2); draws of the cell shares times ``N_h``, summed over strata,
    give draws of the ratios, and their percentiles the interval. The half counts keep
    rare classes honest (the benchmark's coverage, docs/labels.md). Macro-F1 always
    uses the bootstrap (it needs the classes jointly).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import polars as pl

from fpi.errors import InputError
from fpi.schema import CLASSES, KEY_COLUMNS

KEY = list(KEY_COLUMNS)
PROBABILITY_STRATA: Final = ("random", "stratified")
METRICS: Final = ("precision", "recall", "f1", "rate")
METHODS: Final = ("dirichlet", "bootstrap")


@dataclass(frozen=True)
class Measurement:
    """Design-based estimates of the model's per-class metrics on the sampled night."""

    population: int
    sampled: int
    labelled: int
    level: float
    replicates: int
    per_class: dict[str, dict[str, dict[str, float | None]]]
    macro_f1: dict[str, float | None]
    method: str = "dirichlet"

    def to_dict(self) -> dict[str, Any]:
        """Stable JSON document (``fpi labels measure --json``)."""
        return {"classes": list(CLASSES), "population": self.population,
                "sampled": self.sampled, "labelled": self.labelled, "level": self.level,
                "method": self.method, "estimators": "ratio (Horvitz-Thompson)",
                "replicates": self.replicates, "per_class": self.per_class,
                "macro_f1": self.macro_f1}


def _sample(queue: pl.DataFrame, labels: pl.DataFrame,
            predictions: pl.DataFrame | None) -> tuple[pl.DataFrame, int, int]:
    sample = queue.filter(pl.col("stratum").is_in(PROBABILITY_STRATA)
                          & pl.col("inclusion_prob").is_not_null())
    if sample.is_empty():
        raise InputError("the queue has no random stratum (turns with an inclusion "
                         "probability): build it with --random-share > 0")
    if predictions is not None:
        sample = sample.drop("predicted").join(predictions.select(*KEY, "predicted"), on=KEY,
                                               how="left")
    if sample["predicted"].null_count() == sample.height:
        raise InputError("the queue carries no model predictions: give the model (and logs) "
                         "to score the sampled turns")
    lab = sample.join(labels.select(*KEY, pl.col("failure_point").alias("true")), on=KEY)
    if lab.is_empty():
        raise InputError(f"none of the {sample.height} randomly sampled queue turns is "
                         "labelled: import their labels first (fpi labels import)")
    m_h = pl.len().over("design_stratum")
    lab = lab.with_columns((pl.col("stratum_population") / m_h).alias("weight"))
    population = int(sample.unique("design_stratum")["stratum_population"].sum())
    return lab, population, sample.height


def _indicators(lab: pl.DataFrame) -> np.ndarray:
    """``(m, 3k)``: true-positive, predicted and true indicators per class."""
    cols = [((pl.col("predicted") == c) & (pl.col("true") == c)) for c in CLASSES]
    cols += [pl.col("predicted") == c for c in CLASSES]
    cols += [pl.col("true") == c for c in CLASSES]
    return lab.select(*(e.fill_null(False).cast(pl.Float64).alias(f"v{i}")
                        for i, e in enumerate(cols))).to_numpy()


def _ratios(totals: np.ndarray, population: float) -> dict[str, np.ndarray]:
    k = len(CLASSES)
    tp, pred, true = totals[..., :k], totals[..., k:2 * k], totals[..., 2 * k:]
    with np.errstate(divide="ignore", invalid="ignore"):
        return {"precision": tp / pred, "recall": tp / true, "f1": 2 * tp / (pred + true),
                "rate": true / population}


def _resample_counts(strata: np.ndarray, replicates: int, rng: np.random.Generator
                     ) -> np.ndarray:
    """``(B, m)`` multiplicities of a with-replacement resample within each stratum."""
    counts = np.zeros((replicates, len(strata)))
    for h in np.unique(strata):
        idx = np.flatnonzero(strata == h)
        counts[:, idx] = rng.multinomial(len(idx), np.full(len(idx), 1 / len(idx)),
                                         size=replicates)
    return counts


def _dirichlet_totals(lab: pl.DataFrame, replicates: int, rng: np.random.Generator) -> np.ndarray:
    """``(B, 3k)`` posterior draws of the weighted TP, predicted and true totals."""
    k = len(CLASSES)
    ind = _indicators(lab)
    out = np.zeros((replicates, 3 * k))
    strata = lab["design_stratum"].to_numpy()
    for h in np.unique(strata):
        rows = strata == h
        n_h = float(lab.filter(pl.Series(rows))["stratum_population"][0])
        for i in range(k):
            tp = ind[rows, i].sum()
            fp = ind[rows, k + i].sum() - tp
            fn = ind[rows, 2 * k + i].sum() - tp
            rest = rows.sum() - tp - fp - fn
            share = rng.dirichlet(np.array([tp, fp, fn, rest]) + 0.5, size=replicates) * n_h
            out[:, i] += share[:, 0]
            out[:, k + i] += share[:, 0] + share[:, 1]
            out[:, 2 * k + i] += share[:, 0] + share[:, 2]
    return out


def _num(x: float) -> float | None:
    return None if not np.isfinite(x) else round(float(x), 6)


def measure(queue: pl.DataFrame, labels: pl.DataFrame, *,
            predictions: pl.DataFrame | None = None, level: float = 0.95,
            replicates: int = 2000, seed: int = 0, method: str = "dirichlet") -> Measurement:
    """Estimate per-class precision, recall, F1 and rate on the queue's night.

    Parameters
    ----------
    queue
        ``queue.parquet`` of a queue directory (:func:`fpi.labels.export.read_queue`).
    labels
        One label per turn (:func:`fpi.labels.resolve.resolve_labels`).
    predictions
        ``session_id, turn_index, predicted`` to measure instead of the queue's model.

    Raises
    ------
    InputError
        No random stratum, no predictions, or no labelled sampled turn.
    """
    if not 0 < level < 1:
        raise InputError(f"--level must be between 0 and 1, not {level}")
    if method not in METHODS:
        raise InputError(f"--method must be one of {', '.join(METHODS)}, not {method!r}")
    lab, population, sampled = _sample(queue, labels, predictions)
    v = _indicators(lab) * lab["weight"].to_numpy()[:, None]
    point = _ratios(v.sum(axis=0), population)
    strata = lab["design_stratum"].to_numpy()
    rng = np.random.default_rng(seed)
    boot = _ratios(_resample_counts(strata, replicates, rng) @ v, population)
    draws = (_ratios(_dirichlet_totals(lab, replicates, rng), population)
             if method == "dirichlet" else boot)
    lo_q, hi_q = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    per_class: dict[str, dict[str, dict[str, float | None]]] = {}
    for i, c in enumerate(CLASSES):
        per_class[c] = {}
        for m in METRICS:
            b = draws[m][:, i]
            b = b[np.isfinite(b)]
            lo, hi = (np.percentile(b, [lo_q, hi_q]) if len(b) else (np.nan, np.nan))
            per_class[c][m] = {"estimate": _num(point[m][i]), "low": _num(lo), "high": _num(hi)}
    with np.errstate(invalid="ignore"):
        macro_boot = np.nanmean(boot["f1"], axis=1)
    macro = {"estimate": _num(float(np.nanmean(point["f1"]))),
             "low": _num(float(np.nanpercentile(macro_boot, lo_q))),
             "high": _num(float(np.nanpercentile(macro_boot, hi_q)))}
    return Measurement(population, sampled, lab.height, level, replicates, per_class, macro,
                       method)
