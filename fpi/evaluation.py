"""Measure a model bundle on labelled turns, side by side with its baselines and humans.

:func:`evaluate` scores the model, the first-bad-stage rule and the no-context
model on the same turns, and, where turns carry a second annotator's label
(``label.failure_point_2``), the human agreement per class (annotator 2 scored
against the gold label) and the model's F1 as a percentage of it.

Macro-F1 averages the per-class F1 over the classes present in the gold labels
(a class with no support has no defined recall).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from fpi.errors import InputError
from fpi.numbers import stable_round
from fpi.schema import CLASSES

if TYPE_CHECKING:
    from fpi.model import ModelBundle

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


# ---------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class EvaluationResult:
    """Model metrics on labelled turns, with baselines and human agreement side by side."""

    metrics: dict[str, Any]
    baselines: dict[str, dict[str, Any]]
    human: dict[str, Any] | None
    model_dir: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def macro_f1(self) -> float | None:
        """The model's macro-F1."""
        return self.metrics["macro_f1"]

    def to_dict(self) -> dict[str, Any]:
        """Stable JSON document (keys: macro_f1, accuracy, per_class, confusion,
        calibration_error, rate_estimate, n_turns, classes, baselines, human)."""
        return {
            "classes": list(CLASSES),
            **self.metrics,
            "baselines": self.baselines,
            "human": self.human,
            **({"model": self.model_dir} if self.model_dir else {}),
            **self.extra,
        }


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


def _summary(m: dict[str, Any]) -> dict[str, Any]:
    return {"macro_f1": m["macro_f1"], "accuracy": m["accuracy"],
            "per_class": m["per_class"], "confusion": m["confusion"]}


def evaluate(turns: pl.DataFrame, bundle: ModelBundle,
             *, features: pl.DataFrame | None = None) -> EvaluationResult:
    """Score ``bundle`` on labelled canonical turns.

    Parameters
    ----------
    turns
        Canonical frame; turns without ``label.failure_point`` are ignored.
    bundle
        A loaded model bundle (:func:`fpi.model.load_bundle`).
    features
        Precomputed :func:`fpi.features.build_features` of ``turns`` (optional).

    Raises
    ------
    InputError
        No turn carries a label.
    SchemaError
        The bundle does not match the data.
    """
    from fpi.features import build_features

    bundle.check_compatible(turns)
    y_all = labels_to_index(turns["label"].struct.field("failure_point"))
    labelled = y_all >= 0
    if not labelled.any():
        raise InputError(
            f"none of the {turns.height} turns has a label.failure_point: evaluate needs "
            "labelled turns"
        )
    if features is None:
        features = build_features(turns)
    mask = pl.Series(labelled)
    feats = features.filter(mask)
    y = y_all[labelled]
    proba = bundle.predict_proba(feats)
    metrics = classification_metrics(y, proba.argmax(axis=1), proba)
    baselines: dict[str, dict[str, Any]] = {}
    if bundle.rule_baseline is not None:
        baselines["rules"] = _summary(
            classification_metrics(y, bundle.rule_baseline.predict(feats))
        )
    if bundle.has_no_context_model:
        baselines["no_context"] = _summary(
            classification_metrics(y, bundle.predict_proba_no_context(feats).argmax(axis=1))
        )
    second = labels_to_index(turns["label"].struct.field("failure_point_2"))[labelled]
    human = human_agreement(y, second, metrics["per_class"])
    return EvaluationResult(metrics, baselines, human, str(bundle.path) if bundle.path else None)
