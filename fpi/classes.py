"""The trace format's plain names: failure-point classes, stages, components, value sets.

Part of :mod:`fpi.schema` (which re-exports every name here), kept apart because it
needs no Polars: modules that only name classes (gates, trend, the report renderers)
import it without loading Polars, so ``fpi trend`` and error paths start faster.
"""

from __future__ import annotations

from typing import Final

#: The failure-point classes, in pipeline order (``correct`` first).
CLASSES: Final[tuple[str, ...]] = ("correct", "false_wake", "asr", "nlu", "er", "result")

#: Accepted spellings of each class (compared after lower-casing and trimming;
#: ``-`` and spaces count as ``_``).
LABEL_ALIASES: Final[dict[str, str]] = {
    "correct": "correct",
    "ok": "correct",
    "none": "correct",
    "no_failure": "correct",
    "false_wake": "false_wake",
    "falsewake": "false_wake",
    "wake": "false_wake",
    "asr": "asr",
    "nlu": "nlu",
    "er": "er",
    "entity": "er",
    "entity_resolution": "er",
    "result": "result",
}

#: The pipeline stages, in order.
STAGES: Final[tuple[str, ...]] = ("wake", "asr", "nlu", "er", "result")

#: The ``stage`` values a stage event may carry.
EVENT_STAGES: Final[tuple[str, ...]] = (*STAGES, "feedback", "label", "device")

#: Feature / attribution groups: one per pipeline stage plus dialogue context.
COMPONENTS: Final[tuple[str, ...]] = ("wake", "asr", "nlu", "er", "result", "context")

RESULT_STATUSES: Final[tuple[str, ...]] = ("success", "error", "no_action", "clarification")
ENTITY_STATUSES: Final[tuple[str, ...]] = ("resolved", "unresolved", "ambiguous")
EXPLICIT_FEEDBACK: Final[tuple[str, ...]] = ("positive", "negative")
