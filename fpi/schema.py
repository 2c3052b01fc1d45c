"""The fpi trace format, version 1, as code: names, dtypes, classes, value rules.

This module is the single place that knows the shape of a turn. Ingest
validates against it, the simulator writes it, features read it. The user-facing
description is ``docs/traces.md``.

The *canonical frame* is one row per turn, sorted by ``session_id`` then
``turn_index``, with one nested struct column per stage (null when the stage is
absent: absent means unknown, not failed). Its exact dtypes are
:data:`TURN_SCHEMA`.
"""

from __future__ import annotations

from typing import Final

import polars as pl
from polars.datatypes import DataTypeClass

from fpi.classes import CLASSES as CLASSES
from fpi.classes import COMPONENTS as COMPONENTS
from fpi.classes import ENTITY_STATUSES as ENTITY_STATUSES
from fpi.classes import EVENT_STAGES as EVENT_STAGES
from fpi.classes import EXPLICIT_FEEDBACK as EXPLICIT_FEEDBACK
from fpi.classes import LABEL_ALIASES as LABEL_ALIASES
from fpi.classes import RESULT_STATUSES as RESULT_STATUSES
from fpi.classes import STAGES as STAGES

#: A Polars dtype as Polars hands it out: an instance (``pl.Struct({...})``) or a
#: bare class (``pl.Int64``, as in struct fields and ``List.inner``).
PolarsDType = pl.DataType | DataTypeClass

#: Version of the trace format this module describes.
FORMAT_VERSION: Final = 1

# ---------------------------------------------------------------------------
# Classes: the names are in fpi.classes (no Polars there), re-exported above
# ---------------------------------------------------------------------------


def normalize_label_expr(expr: pl.Expr) -> pl.Expr:
    """The class each label spelling names (after trimming, lower-casing, and ``-`` or
    spaces as ``_``); unknown spellings become null."""
    key = expr.str.strip_chars().str.to_lowercase().str.replace_all(r"[-\s]", "_")
    return key.replace_strict(LABEL_ALIASES, default=None, return_dtype=pl.String)


# ---------------------------------------------------------------------------
# Dtypes of the canonical frame
# ---------------------------------------------------------------------------

NBEST_ITEM: Final = pl.Struct({"text": pl.String, "confidence": pl.Float64})
NLU_ALTERNATIVE: Final = pl.Struct(
    {"domain": pl.String, "intent": pl.String, "confidence": pl.Float64}
)
NLU_SLOT: Final = pl.Struct({"name": pl.String, "value": pl.String, "confidence": pl.Float64})
ER_ENTITY: Final = pl.Struct(
    {
        "slot": pl.String,
        "mention": pl.String,
        "resolved_id": pl.String,
        "resolved_name": pl.String,
        "score": pl.Float64,
        "status": pl.String,
    }
)

DEVICE: Final = pl.Struct(
    {"type": pl.String, "has_screen": pl.Boolean, "locale": pl.String, "app_version": pl.String}
)
WAKE: Final = pl.Struct(
    {"detected": pl.Boolean, "score": pl.Float64, "device_directed_score": pl.Float64}
)
ASR: Final = pl.Struct(
    {
        "text": pl.String,
        "confidence": pl.Float64,
        "nbest": pl.List(NBEST_ITEM),
        "audio_ms": pl.Float64,
        "latency_ms": pl.Float64,
    }
)
NLU: Final = pl.Struct(
    {
        "domain": pl.String,
        "intent": pl.String,
        "confidence": pl.Float64,
        "alternatives": pl.List(NLU_ALTERNATIVE),
        "slots": pl.List(NLU_SLOT),
    }
)
ER: Final = pl.Struct({"entities": pl.List(ER_ENTITY), "latency_ms": pl.Float64})
RESULT: Final = pl.Struct(
    {
        "status": pl.String,
        "action": pl.String,
        "response_text": pl.String,
        "latency_ms": pl.Float64,
    }
)
FEEDBACK: Final = pl.Struct({"barge_in": pl.Boolean, "explicit": pl.String})
LABEL: Final = pl.Struct(
    {"failure_point": pl.String, "annotator": pl.String, "failure_point_2": pl.String}
)

#: Struct dtype of each nested block, by top-level field name.
BLOCKS: Final[dict[str, pl.Struct]] = {
    "device": DEVICE,
    "wake": WAKE,
    "asr": ASR,
    "nlu": NLU,
    "er": ER,
    "result": RESULT,
    "feedback": FEEDBACK,
    "label": LABEL,
}

# Typed as a dict first: the literal mixes dtype classes and instances.
_TURN_COLUMNS: Final[dict[str, PolarsDType]] = {
    "schema_version": pl.Int64,
    "session_id": pl.String,
    "turn_index": pl.Int64,
    "timestamp": pl.Datetime("us", "UTC"),
    **BLOCKS,
    "extra": pl.String,
}
#: The canonical frame: exact column names, order and dtypes.
#: ``extra`` holds unknown fields as a JSON object keyed by dotted path
#: (``{"asr.model_version": "7b", "user_tier": "gold"}``), or null.
TURN_SCHEMA: Final = pl.Schema(_TURN_COLUMNS)

#: Columns that identify a turn.
KEY_COLUMNS: Final[tuple[str, str]] = ("session_id", "turn_index")


def empty_frame() -> pl.DataFrame:
    """A canonical frame with no rows."""
    return pl.DataFrame(schema=TURN_SCHEMA)


def conform(frame: pl.DataFrame) -> pl.DataFrame:
    """Cast ``frame`` to :data:`TURN_SCHEMA`: missing columns become null, order fixed.

    Raises :class:`fpi.errors.SchemaError` when a column cannot be cast.
    """
    from fpi.errors import SchemaError

    exprs: list[pl.Expr] = []
    for name, dtype in TURN_SCHEMA.items():
        if name in frame.columns:
            exprs.append(pl.col(name).cast(dtype, strict=False) if frame.schema[name] != dtype
                         else pl.col(name))
        else:
            exprs.append(pl.lit(None, dtype=dtype).alias(name))
    try:
        return frame.select(exprs)
    except pl.exceptions.PolarsError as exc:  # pragma: no cover - depends on input
        raise SchemaError(f"frame does not fit the trace format: {exc}") from exc


# ---------------------------------------------------------------------------
# Value rules
# ---------------------------------------------------------------------------

#: Fields whose values must lie in [0, 1] (dotted paths; ``[]`` marks a list element).
UNIT_INTERVAL_FIELDS: Final[tuple[str, ...]] = (
    "wake.score",
    "wake.device_directed_score",
    "asr.confidence",
    "asr.nbest[].confidence",
    "nlu.confidence",
    "nlu.alternatives[].confidence",
    "nlu.slots[].confidence",
    "er.entities[].score",
)

#: Fields that must be non-negative milliseconds.
NON_NEGATIVE_FIELDS: Final[tuple[str, ...]] = (
    "asr.audio_ms",
    "asr.latency_ms",
    "er.latency_ms",
    "result.latency_ms",
)

#: Fields restricted to a set of values (null is always allowed).
ENUM_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    "result.status": RESULT_STATUSES,
    "er.entities[].status": ENTITY_STATUSES,
    "feedback.explicit": EXPLICIT_FEEDBACK,
}


#: Deepest nesting a record may have (the record object itself is level 1; the
#: canonical fields need 4). Deeper records are rejected as ``too_deep``: parsers
#: recurse per level, and a few thousand levels crash them.
MAX_DEPTH: Final[int] = 64

#: Longest record, in bytes of JSON text (a turn is typically 1-3 KB). Longer
#: records are rejected as ``too_large``.
MAX_RECORD_BYTES: Final[int] = 1 << 20
