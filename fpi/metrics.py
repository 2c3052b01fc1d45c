"""Classification metrics on class indices (NumPy): the model's, its baselines', humans'.

Confusion matrices, per-class precision, recall and F1, macro-F1, the expected
calibration error, human agreement (a second annotator scored against the gold
label) and the soft confusion matrix. Both the trainer (:mod:`fpi.model`) and
:func:`fpi.evaluate.evaluate` use them.

Macro-F1 averages the per-class F1 over the classes present in the gold labels
(a class with no support has no defined recall).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from fpi.numbers import stable_round
from fpi.schema import CLASSES

#: Number of equal-width confidence bins for the expected calibration error.
ECE_BINS = 15


# ---------------------------------------------------------------------------
# Metric primitives (numpy, class indices in CLASSES order)
# ---------------------------------------------------------------------------

def confusion_matrix(y: np.ndarray, pred: np.ndarray, k: int = len(CLASSES)) -> np.ndarray:
    """``(k, k)`` counts, rows true class, columns predicted class."""
    return np.bincount(y.astype(np.int64) * k + pred.astype(np.int64),
                       minlength=k * k).reshape(k, k)


def _per_class(conf: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    tp = np.diag(conf).astype(np.float64)
    support = conf.sum(axis=1).astype(np.float64)
    predicted = conf.sum(axis=0).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, np.nan)
        recall = np.where(support > 0, tp / support, np.nan)
        denom = support + predicted
        f1 = np.where(denom > 0, 2 * tp / denom, np.nan)
    return precision, recall, f1, support


def macro_f1_score(y: np.ndarray, pred: np.ndarray, k: int = len(CLASSES)) -> float:
    """Mean F1 over the classes present in ``y``."""
    _, _, f1, support = _per_class(confusion_matrix(y, pred, k))
    present = support > 0
    return float(np.mean(f1[present])) if present.any() else float("nan")


def expected_calibration_error(proba: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-label ECE: |confidence - accuracy| averaged over equal-width bins, by count."""
    if len(y) == 0:
        return float("nan")
    conf = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == y).astype(np.float64)
    idx = np.minimum((conf * bins).astype(np.int64), bins - 1)
    sum_conf = np.bincount(idx, weights=conf, minlength=bins)
    sum_acc = np.bincount(idx, weights=correct, minlength=bins)
    return float(np.abs(sum_conf - sum_acc).sum() / len(y))


def _num(x: float) -> float | None:
    return None if not np.isfinite(x) else stable_round(x, 6)


def classification_metrics(y: np.ndarray, pred: np.ndarray,
                           proba: np.ndarray | None = None) -> dict[str, Any]:
    """Stable metrics document: macro_f1, accuracy, per_class, confusion, calibration.

    ``per_class`` always holds all six classes; an undefined value is ``None``.
    """
    k = len(CLASSES)
    conf = confusion_matrix(y, pred, k)
    precision, recall, f1, support = _per_class(conf)
    out: dict[str, Any] = {
        "n_turns": len(y),
        "macro_f1": _num(macro_f1_score(y, pred, k)),
        "accuracy": _num(float(np.mean(y == pred))) if len(y) else None,
        "per_class": {
            c: {"precision": _num(precision[i]), "recall": _num(recall[i]), "f1": _num(f1[i]),
                "support": int(support[i])}
            for i, c in enumerate(CLASSES)
        },
        "confusion": conf.tolist(),
    }
    if proba is not None:
        out["calibration_error"] = _num(expected_calibration_error(proba, y))
        rates = np.bincount(y, minlength=k) / max(len(y), 1)
        out["rate_estimate"] = {
            c: {"true": _num(rates[i]), "mean_probability": _num(float(proba[:, i].mean()))}
            for i, c in enumerate(CLASSES)
        }
    return out


def labels_to_index(labels: pl.Series) -> np.ndarray:
    """Class names to indices in CLASSES order (nulls and unknown names become -1)."""
    mapping = {c: i for i, c in enumerate(CLASSES)}
    return labels.replace_strict(mapping, default=-1, return_dtype=pl.Int64).to_numpy()


def human_agreement(gold: np.ndarray, second: np.ndarray,
                    model_per_class: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Annotator 2 scored against gold (rows where both exist), per class F1.

    With ``model_per_class`` (the model's per-class metrics on the same turns), adds
    the model's F1 as a percentage of the human F1 per class.
    """
    mask = (gold >= 0) & (second >= 0)
    if not mask.any():
        return None
    m = classification_metrics(gold[mask], second[mask])
    per_class: dict[str, Any] = {}
    for c in CLASSES:
        h = m["per_class"][c]["f1"]
        entry: dict[str, Any] = {"f1": h, "support": m["per_class"][c]["support"]}
        if model_per_class is not None:
            mf = model_per_class[c]["f1"]
            entry["model_f1"] = mf
            entry["model_pct_of_human"] = (
                stable_round(100.0 * mf / h, 2) if (mf is not None and h) else None
            )
        per_class[c] = entry
    return {"n_turns": int(mask.sum()), "macro_f1": m["macro_f1"], "accuracy": m["accuracy"],
            "per_class": per_class}


def brief_metrics(m: dict[str, Any]) -> dict[str, Any]:
    """The headline of a :func:`classification_metrics` document (what baselines show)."""
    return {"macro_f1": m["macro_f1"], "accuracy": m["accuracy"],
            "per_class": m["per_class"], "confusion": m["confusion"]}


def soft_confusion(y: np.ndarray, proba: np.ndarray) -> list[list[float]]:
    """Sum of calibrated probabilities per true class (rows true, columns predicted).

    The probabilistic counterpart of the confusion counts: row ``i`` divided by its
    sum is the mean calibrated posterior of class-``i`` turns, what the rate
    estimator (:func:`fpi.diagnose.rates.estimate_rates`) uses to check and correct
    the calibration. Sums, so matrices of disjoint held-out parts (folds) add.
    """
    k = proba.shape[1]
    out = np.zeros((k, k))
    np.add.at(out, y, proba)
    return [[round(float(v), 6) for v in row] for row in out]


#: The field the stratified soft confusion matrices are cut by, and how many quantile
#: bins of it (plus one stratum for turns without it).
STRATA_FIELD = "asr.confidence"
STRATA_BINS = 5


def stratum_codes(values: np.ndarray, edges: np.ndarray | list[float]) -> np.ndarray:
    """Stratum of each turn: 0 when ``values`` is missing (NaN), else ``1 + bin``."""
    v = np.asarray(values, np.float64)
    codes = 1 + np.searchsorted(np.asarray(edges, np.float64), np.nan_to_num(v), side="right")
    return np.where(np.isnan(v), 0, codes).astype(np.int64)


def stratified_soft_confusion(y: np.ndarray, proba: np.ndarray, values: np.ndarray,
                              bins: int = STRATA_BINS) -> dict[str, Any]:
    """:func:`soft_confusion` per stratum of ``values`` (the held-out turns' ASR confidence).

    The strata are the missing values and ``bins`` quantile bins of the present ones
    (``edges``: the inner quantiles). A new speaker population or device changes what
    a given confidence means; within a bin of it, the rest of the logs of each class
    look as before, so the rate estimator corrects each bin with its own matrix
    (:func:`fpi.diagnose.rates.estimate_rates`, ``spacc``). Sums, as the overall matrix.
    """
    v = np.asarray(values, np.float64)
    present = v[~np.isnan(v)]
    qs = np.linspace(0.0, 1.0, bins + 1)[1:-1]
    edges = np.unique(np.quantile(present, qs)) if len(present) else np.zeros(0)
    codes = stratum_codes(v, edges)
    k = proba.shape[1]
    out = np.zeros((len(edges) + 2, k, k))
    np.add.at(out, (codes, y), proba)
    return {"field": STRATA_FIELD, "edges": [round(float(e), 6) for e in edges],
            "soft_confusion": [[[round(float(x), 6) for x in row] for row in m] for m in out]}


def strata_values(turns: pl.DataFrame) -> np.ndarray:
    """Each turn's :data:`STRATA_FIELD` (the ASR confidence), NaN where it is not logged."""
    if "asr" not in turns.columns:
        return np.full(turns.height, np.nan)
    conf = turns["asr"].struct.field("confidence").cast(pl.Float64)
    return conf.fill_nan(None).to_numpy().astype(np.float64)
