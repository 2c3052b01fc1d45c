"""Random valid turns (hypothesis strategies) and their JSON records, shared by the
ingest tests (round trips, screening, sorting); a helper module, not a test module."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import polars as pl
from hypothesis import strategies as st

from fpi.schema import CLASSES, TURN_SCHEMA

unit = st.floats(0, 1, allow_nan=False)
ms = st.floats(0, 1e6, allow_nan=False)
# Text with the characters that break naive writers: quotes, commas, newlines, non-ASCII.
text = st.text(alphabet=st.sampled_from('ab ,"\'\n\té\\{}[]ü'), min_size=1, max_size=12)


def _opt(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), strategy)


def _block(first: dict[str, st.SearchStrategy[Any]], rest: dict[str, st.SearchStrategy[Any]]
           ) -> st.SearchStrategy[dict[str, Any] | None]:
    # The first field is never null, so a present block is visible in every form
    # (in CSV a block whose cells are all empty is absent).
    return _opt(st.fixed_dictionaries({**first, **{k: _opt(v) for k, v in rest.items()}}))


devices = _block({"type": st.sampled_from(["speaker", "phone", "tv"])},
                 {"has_screen": st.booleans(), "locale": text, "app_version": text})
wakes = st.fixed_dictionaries({"detected": st.booleans(), "score": _opt(unit),
                               "device_directed_score": _opt(unit)})
asrs = _block({"text": text}, {
    "confidence": unit,
    "nbest": st.lists(st.fixed_dictionaries({"text": _opt(text), "confidence": _opt(unit)}),
                      max_size=2),
    "audio_ms": ms, "latency_ms": ms})
nlus = _block({"domain": text}, {
    "intent": text, "confidence": unit,
    "alternatives": st.lists(st.fixed_dictionaries(
        {"domain": _opt(text), "intent": _opt(text), "confidence": _opt(unit)}), max_size=2),
    "slots": st.lists(st.fixed_dictionaries(
        {"name": _opt(text), "value": _opt(text), "confidence": _opt(unit)}), max_size=2)})
ers = _block({"entities": st.lists(st.fixed_dictionaries({
    "slot": _opt(text), "mention": _opt(text), "resolved_id": _opt(text),
    "resolved_name": _opt(text), "score": _opt(unit),
    "status": _opt(st.sampled_from(["resolved", "unresolved", "ambiguous"]))}), max_size=2)},
    {"latency_ms": ms})
results = _block({"status": st.sampled_from(["success", "error", "no_action", "clarification"])},
                 {"action": text, "response_text": text, "latency_ms": ms})
feedbacks = _block({"barge_in": st.booleans()},
                   {"explicit": st.sampled_from(["positive", "negative"])})
labels = _block({"failure_point": st.sampled_from(CLASSES)},
                {"annotator": text, "failure_point_2": st.sampled_from(CLASSES)})
timestamps = _opt(st.datetimes(min_value=dt.datetime(2000, 1, 1),
                               max_value=dt.datetime(2100, 1, 1),
                               timezones=st.just(dt.UTC)))


@st.composite
def turns(draw: st.DrawFn, max_size: int = 8) -> list[dict[str, Any]]:
    """A list of 1 to ``max_size`` valid turns with unique (session_id, turn_index), in
    random order."""
    keys = draw(st.lists(st.tuples(st.sampled_from(["s-1", "s-2", "a b", "ü-7", "S-10"]),
                                   st.integers(0, 30)), min_size=1, max_size=max_size,
                         unique=True))
    out = []
    for sid, ti in keys:
        turn: dict[str, Any] = {
            "schema_version": 1, "session_id": sid, "turn_index": ti,
            "timestamp": draw(timestamps), "device": draw(devices), "wake": draw(wakes),
            "asr": draw(asrs), "nlu": draw(nlus), "er": draw(ers), "result": draw(results),
            "feedback": draw(feedbacks), "label": draw(labels), "extra": None,
        }
        extra = {}
        if draw(st.booleans()):
            extra["user_tier"] = draw(text)
        if turn["asr"] is not None and draw(st.booleans()):
            extra["asr.model_version"] = draw(text)
        turn["extra"] = json.dumps(extra) if extra else None
        out.append(turn)
    return out


def canonical(rows: list[dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=TURN_SCHEMA).sort("session_id", "turn_index")


def iso(ts: dt.datetime | None) -> str | None:
    return None if ts is None else ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def record(turn: dict[str, Any]) -> dict[str, Any]:
    """A turn as a nested JSON record, extras expanded back to their places."""
    rec = {k: v for k, v in turn.items() if k != "extra"}
    rec["timestamp"] = iso(turn["timestamp"])
    rec = {k: (dict(v) if isinstance(v, dict) else v) for k, v in rec.items()}
    for key, value in json.loads(turn["extra"] or "{}").items():
        head, _, tail = key.partition(".")
        if tail:
            rec[head][tail] = value
        else:
            rec[key] = value
    return rec
