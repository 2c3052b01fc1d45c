"""Measure a model bundle on labelled turns, side by side with its baselines and humans.

:func:`evaluate` scores the model, the first-bad-stage rule and the no-context
model on the same turns, and, where turns carry a second annotator's label
(``label.failure_point_2``), the human agreement per class (annotator 2 scored
against the gold label) and the model's F1 as a percentage of it. The metrics
themselves are :mod:`fpi.metrics`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import polars as pl

from fpi.errors import InputError
from fpi.metrics import brief_metrics, classification_metrics, human_agreement, labels_to_index
from fpi.schema import CLASSES

if TYPE_CHECKING:
    from fpi.model import ModelBundle


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


def evaluate(turns: pl.DataFrame, bundle: ModelBundle,
             *, features: pl.DataFrame | None = None) -> EvaluationResult:
    """Score ``bundle`` on labelled canonical turns.

    Parameters
    ----------
    turns
        Canonical frame; turns without ``label.failure_point`` are ignored.
    bundle
        A loaded model bundle (:func:`fpi.model.load_bundle`, or :func:`fpi.model.fit`).
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
        baselines["rules"] = brief_metrics(
            classification_metrics(y, bundle.rule_baseline.predict(feats))
        )
    if bundle.has_no_context_model:
        baselines["no_context"] = brief_metrics(
            classification_metrics(y, bundle.predict_proba_no_context(feats).argmax(axis=1))
        )
    second = labels_to_index(turns["label"].struct.field("failure_point_2"))[labelled]
    human = human_agreement(y, second, metrics["per_class"])
    return EvaluationResult(metrics, baselines, human, str(bundle.path) if bundle.path else None)
