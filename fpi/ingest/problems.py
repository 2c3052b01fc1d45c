"""Problems with the input: the one record of a record set aside, and the rules it can break.

Every stage of ingest (reading bytes, parsing lines, validating rows,
assembling stage events, finding repeated turns) reports what it sets aside as
a :class:`Problem`. A stage that sees only a block of lines or a frame of rows
reports the problem where it found it (:meth:`Problem.found`); ingest then
places it in its file, with its line and raw text (:meth:`Problem.placed`),
and writes it to the rejects file.

:data:`RULES` is the one table of the rules a record can break: the rule ids
the rejects file names, what each means (the docs, redacted rejects) and, for
the rules checked field by field, what a message says after the field's path.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Final

import orjson

from fpi.schema import CLASSES, FORMAT_VERSION, MAX_DEPTH, MAX_RECORD_BYTES


@dataclass(frozen=True)
class Problem:
    """One record set aside: where it came from, the rule it broke and its raw text.

    Placed (in a rejects file, an :class:`~fpi.ingest.IngestReport`): ``line``
    is 1-based (for CSV the row as a spreadsheet shows it, header = 1; for
    Parquet the row number, 1 when the whole file could not be opened).
    ``involved`` lists every ``file:line`` that made up a stage-event turn.

    Found (:meth:`found`): ``file`` is empty and ``line`` is the record's
    0-based position in the block or frame where a stage found it
    (:attr:`index`), until ingest places it.
    """

    file: str
    line: int
    rule: str
    message: str
    raw: str = ""
    involved: tuple[str, ...] = ()

    @classmethod
    def found(cls, index: int, rule: str, message: str) -> Problem:
        """A problem with the record at 0-based ``index`` of a block or frame, not yet placed."""
        return cls("", index, rule, message)

    @property
    def index(self) -> int:
        """Position in its block or frame, for a problem made by :meth:`found`."""
        return self.line

    def placed(self, file: str, line: int, raw: str = "",
               involved: tuple[str, ...] = ()) -> Problem:
        """This problem in its file: ``line`` there, with its raw text."""
        return dataclasses.replace(self, file=file, line=line, raw=raw, involved=involved)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object written to the rejects file."""
        out = dataclasses.asdict(self)
        out["involved"] = list(self.involved)
        if not self.involved:
            del out["involved"]
        return out


@dataclass(frozen=True)
class Rule:
    """One rule a record can break; ``id`` is what the rejects file names.

    ``detail``, for a rule checked field by field, is what a message says after
    the field's path (``asr.confidence is outside [0, 1] (got 1.7)``).
    """

    id: str
    description: str
    detail: str = ""


def _field_rule(id: str, field: str, detail: str) -> Rule:
    """A rule about one field, described by its field and its detail."""
    return Rule(id, f"{field} {detail}", detail)


#: Every rule a record can be rejected for, by id. Ingest uses exactly these ids.
RULES: Final[dict[str, Rule]] = {
    r.id: r
    for r in (
        Rule("invalid_utf8", "the line is not valid UTF-8"),
        Rule("invalid_json", "the line is not a valid JSON value"),
        Rule("too_deep", f"the record is nested more than {MAX_DEPTH} levels deep"),
        Rule("too_large", f"the record is longer than {MAX_RECORD_BYTES:,} bytes"),
        Rule("not_an_object", "the record is not a JSON object"),
        Rule("unreadable", "the file or part of it could not be read (truncated or corrupt)"),
        _field_rule("missing_session_id", "session_id",
                    "is required and must be a non-empty string"),
        _field_rule("bad_turn_index", "turn_index", "is required and must be an integer >= 0"),
        Rule("missing_wake", "the wake stage is required"),
        Rule("bad_type", "a field has the wrong type (e.g. text where a number belongs)"),
        Rule("out_of_range", "a confidence or score is outside [0, 1]", "is outside [0, 1]"),
        Rule("negative_duration", "a latency or duration is negative",
             "must be >= 0 milliseconds"),
        Rule("bad_enum", "a field is not one of its allowed values"),
        Rule("bad_timestamp", "timestamp is not an ISO 8601 date-time",
             "is not an ISO 8601 date-time (e.g. 2026-11-20T18:03:12.481Z)"),
        Rule("bad_label", "label.failure_point (or failure_point_2) is not one of the six classes",
             f"is not one of {', '.join(CLASSES)} (or an alias)"),
        Rule("bad_schema_version", f"schema_version is not {FORMAT_VERSION}",
             f"must be {FORMAT_VERSION} (the only trace format version)"),
        Rule("bad_event", "a stage event lacks session_id, turn_index, a known stage or data"),
        Rule("duplicate_event", "a turn has two events for the same stage"),
        Rule("event_without_wake", "a turn's events include no wake event"),
        Rule("duplicate_turn", "(session_id, turn_index) was already seen; the first is kept"),
    )
}

#: Rule for a value of the wrong type, by field (default ``bad_type``).
TYPE_RULE: Final[dict[str, str]] = {
    "schema_version": "bad_schema_version",
    "session_id": "missing_session_id",
    "turn_index": "bad_turn_index",
    "timestamp": "bad_timestamp",
    "label.failure_point": "bad_label",
    "label.failure_point_2": "bad_label",
}

#: Characters of a value quoted in a message.
SHOWN_CHARS = 60


def shown(value: Any) -> str:
    """A value as a message quotes it: its JSON, cut to :data:`SHOWN_CHARS` characters."""
    try:
        text = orjson.dumps(value, default=str).decode()
    except TypeError:  # an integer beyond 64 bits or a lone surrogate (from a "\ud800"
        # escape), which orjson refuses: the standard library's JSON, all in ASCII, so a
        # lone surrogate is shown as its escape and the message stays writable anywhere
        text = json.dumps(value, default=str, ensure_ascii=True, separators=(",", ":"))
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."
