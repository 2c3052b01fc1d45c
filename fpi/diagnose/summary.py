"""The summary of a diagnose run as typed records, rendered to ``summary.json``.

:class:`Summary` holds the document's top-level blocks; the blocks computed by other
steps (slices, traffic, attribution, examples, gates, the headline, the run metadata)
are JSON objects of their own documented shape. ``Summary.to_dict()`` gives exactly
the ``summary.json`` document; ``docs/summary.schema.json`` is its published JSON Schema
(tests validate every summary they produce against it).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fpi.diagnose.baseline import bundle_id
from fpi.diagnose.rates import ESTIMATOR_NAMES, INTERVAL_NAMES, RateTable
from fpi.metrics import macro_f1_score
from fpi.numbers import stable_round
from fpi.schema import CLASSES

if TYPE_CHECKING:
    from fpi.model import ModelBundle

#: A JSON object.
Json = dict[str, Any]


@dataclass(frozen=True)
class IngestInfo:
    """How the inputs were read: records, kept turns, rejects by rule."""

    records_read: int
    turns_kept: int
    rejected: int
    rejects_by_rule: dict[str, int]
    rejects_file: str | None


@dataclass(frozen=True)
class HeldoutInfo:
    """The model's held-out quality, from its manifest."""

    macro_f1: float | None
    accuracy: float | None


@dataclass(frozen=True)
class ModelInfo:
    """Which model made the run."""

    id: str
    training_data: str | None
    fpi_version: str | None
    format_version: int | None
    training_turns: int | None
    class_prior: dict[str, float] | None
    heldout: HeldoutInfo

    @classmethod
    def of(cls, bundle: ModelBundle) -> ModelInfo:
        m = bundle.manifest
        tr = m.get("training", {})
        metrics = (m.get("heldout") or {}).get("metrics") or {}
        return cls(id=bundle_id(bundle), training_data=tr.get("fingerprint"),
                   fpi_version=m.get("fpi_version"), format_version=m.get("format_version"),
                   training_turns=tr.get("labelled_turns", tr.get("turns")),
                   class_prior=tr.get("class_prior"),
                   heldout=HeldoutInfo(macro_f1=metrics.get("macro_f1"),
                                       accuracy=metrics.get("accuracy")))


@dataclass(frozen=True)
class Method:
    """The rate estimator, its interval and its settings."""

    estimator: str
    estimator_key: str
    weight: float | None
    interval: str
    alternatives: dict[str, str]
    confidence: float
    bootstrap: int
    seed: int

    @classmethod
    def of(cls, rates: RateTable, *, confidence: float, n_boot: int, seed: int) -> Method:
        return cls(
            estimator=ESTIMATOR_NAMES[rates.estimator], estimator_key=rates.estimator,
            weight=None if rates.weight is None else round(float(rates.weight[0]), 6),
            interval=INTERVAL_NAMES[rates.estimator],
            alternatives={"count_rate": ESTIMATOR_NAMES["cc"],
                          "mean_probability": ESTIMATOR_NAMES["pcc"],
                          "acc": ESTIMATOR_NAMES["acc"], "pacc": ESTIMATOR_NAMES["pacc"],
                          "em": ESTIMATOR_NAMES["em"], "spacc": ESTIMATOR_NAMES["spacc"]},
            confidence=confidence, bootstrap=n_boot, seed=seed)


@dataclass(frozen=True)
class Failure:
    """Any failure: ``1 - correct``, with the interval mirrored."""

    estimate: float
    low: float
    high: float
    count: int
    count_rate: float

    @classmethod
    def of(cls, rates: Json, turns: int) -> Failure:
        correct = rates["correct"]
        return cls(estimate=stable_round(1 - correct["estimate"], 6),
                   low=stable_round(1 - correct["high"], 6),
                   high=stable_round(1 - correct["low"], 6),
                   count=int(turns - correct["count"]),
                   count_rate=stable_round(1 - correct["count_rate"], 6))


@dataclass(frozen=True)
class LabelMetrics:
    """Agreement with the labels the logs carry (only when some turns are labelled)."""

    turns: int
    accuracy: float
    macro_f1: float
    true_rates: dict[str, float]

    @classmethod
    def of(cls, labels: np.ndarray, pred: np.ndarray) -> LabelMetrics | None:
        """``labels`` class indices (-1 unlabelled) against predicted indices."""
        labelled = labels >= 0
        if not labelled.any():
            return None
        y, p = labels[labelled], pred[labelled]
        return cls(turns=int(labelled.sum()),
                   accuracy=stable_round(float(np.mean(y == p)), 6),
                   macro_f1=stable_round(macro_f1_score(y, p), 6),
                   true_rates={c: stable_round(float(np.mean(y == i)), 6)
                               for i, c in enumerate(CLASSES)})


@dataclass(frozen=True)
class BaselineInfo:
    """The baseline night compared with, and the per-class change."""

    inputs: list[str]
    turns: int | None
    model_id: str | None
    same_model: bool
    changes: Json


@dataclass(frozen=True)
class Summary:
    """One run's ``summary.json`` (schema :data:`fpi.report.SUMMARY_SCHEMA_VERSION`).

    ``headline``, ``focus_examples`` and ``run`` are filled last (they read the rest);
    ``drift`` only exists with a baseline.
    """

    schema_version: int
    fpi_version: str
    versions: dict[str, str]
    inputs: list[str]
    turns: int
    sessions: int
    ingest: IngestInfo
    model: ModelInfo
    method: Method
    rates: Json
    failure: Failure
    labels: LabelMetrics | None
    slices: Json
    traffic: Json
    attribution: Json
    baseline: BaselineInfo | None
    gates: list[Json]
    gate_status: str
    examples: dict[str, list[Json]]
    redacted: bool
    redaction: Json | None
    drift: Json | None = None
    headline: Json | None = None
    focus_examples: list[Json] | None = None
    run: Json | None = None

    def to_dict(self) -> Json:
        """The ``summary.json`` document (blocks not filled yet are left out)."""
        doc = _plain(self)
        if self.baseline is None:
            del doc["drift"]
        for late in ("headline", "focus_examples", "run"):
            if doc[late] is None:
                del doc[late]
        return doc


def _plain(value: Any) -> Any:
    """``dataclasses.asdict`` for a summary: dataclasses become dicts, and dicts, lists and
    tuples are copied level by level, but the leaves (strings, numbers, booleans, None:
    all a summary holds) are shared rather than deep-copied, which made ``asdict`` most
    of the cost of the five documents a run builds."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_plain(item) for item in value)
    return value
