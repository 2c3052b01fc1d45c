"""Round trips: random valid turns, written in every input form, read back identical.

The writers here are deliberately small and independent of ``fpi.writers`` so
that a bug shared by a writer and the reader cannot hide.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import json
import random
from pathlib import Path
from typing import Any

import polars as pl
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from fpi.ingest import read_traces
from fpi.schema import BLOCKS, CLASSES, TURN_SCHEMA

# ---------------------------------------------------------------------------
# Random valid turns
# ---------------------------------------------------------------------------

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
def turns(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A list of valid turns with unique (session_id, turn_index), in random order."""
    keys = draw(st.lists(st.tuples(st.sampled_from(["s-1", "s-2", "a b", "ü-7", "S-10"]),
                                   st.integers(0, 30)), min_size=1, max_size=8, unique=True))
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


# ---------------------------------------------------------------------------
# Writers (one per input form)
# ---------------------------------------------------------------------------


def _iso(ts: dt.datetime | None) -> str | None:
    return None if ts is None else ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _record(turn: dict[str, Any]) -> dict[str, Any]:
    """A turn as a nested JSON record, extras expanded back to their places."""
    rec = {k: v for k, v in turn.items() if k != "extra"}
    rec["timestamp"] = _iso(turn["timestamp"])
    rec = {k: (dict(v) if isinstance(v, dict) else v) for k, v in rec.items()}
    for key, value in json.loads(turn["extra"] or "{}").items():
        head, _, tail = key.partition(".")
        if tail:
            rec[head][tail] = value
        else:
            rec[key] = value
    return rec


def write_jsonl(rows: list[dict[str, Any]], path: Path, compress: str | None = None) -> None:
    data = "".join(json.dumps(_record(t)) + "\n" for t in rows).encode()
    if compress == "gz":
        data = gzip.compress(data)
    elif compress == "zst":
        data = zstandard.ZstdCompressor().compress(data)
    path.write_bytes(data)


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    flat_rows = []
    for t in rows:
        flat: dict[str, Any] = {}
        for key, value in _record(t).items():
            if isinstance(value, dict):
                for k, v in value.items():
                    flat[f"{key}.{k}"] = v
            else:
                flat[key] = value
        flat_rows.append(flat)
    columns = sorted({c for r in flat_rows for c in r})

    def cell(v: Any) -> str:
        if v is None:
            return ""
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, list):
            return json.dumps(v)
        return repr(v) if isinstance(v, float) else str(v)

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in flat_rows:
        w.writerow([cell(r.get(c)) for c in columns])
    path.write_text(buf.getvalue(), encoding="utf-8")


def write_events(rows: list[dict[str, Any]], paths: list[Path], seed: int) -> None:
    """One event per present stage, shuffled over ``paths``; turn-level unknown fields
    ride on the wake event."""
    events = []
    for t in rows:
        rec = _record(t)
        top = {k: v for k, v in rec.items() if k not in TURN_SCHEMA}
        for stage in BLOCKS:
            if rec.get(stage) is not None:
                events.append({"session_id": t["session_id"], "turn_index": t["turn_index"],
                               "stage": stage, "timestamp": rec["timestamp"],
                               "data": rec[stage], **(top if stage == "wake" else {})})
    rng = random.Random(seed)
    rng.shuffle(events)
    for i, path in enumerate(paths):
        path.write_text("".join(json.dumps(e) + "\n" for e in events[i :: len(paths)]))


def _norm_extra(frame: pl.DataFrame) -> pl.DataFrame:
    """Compare extras as JSON objects, not as text (key order may differ)."""
    return frame.with_columns(
        pl.col("extra").map_elements(lambda s: json.dumps(json.loads(s), sort_keys=True),
                                     return_dtype=pl.String))


def check(path_or_paths: Any, expected: pl.DataFrame, **kw: Any) -> None:
    got, report = read_traces(path_or_paths, **kw)
    assert report.rejected == 0, report.rejects
    assert report.records_read == report.turns_kept == expected.height
    assert got.schema == TURN_SCHEMA
    assert_frame_equal(_norm_extra(got), _norm_extra(expected))


SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(rows=turns())
def test_jsonl_plain_gz_zst(tmp_path: Path, rows: list[dict[str, Any]]) -> None:
    expected = canonical(rows)
    for compress in (None, "gz", "zst"):
        path = tmp_path / f"t.jsonl{'.' + compress if compress else ''}"
        write_jsonl(rows, path, compress)
        check(path, expected)


@SETTINGS
@given(rows=turns())
def test_jsonl_small_blocks(tmp_path: Path, rows: list[dict[str, Any]]) -> None:
    # Tiny blocks: records are split over many blocks, line numbers must still add up.
    path = tmp_path / "t.jsonl"
    write_jsonl(rows, path)
    check(path, canonical(rows), block_bytes=64)


@SETTINGS
@given(rows=turns())
def test_parquet_canonical_and_generic(tmp_path: Path, rows: list[dict[str, Any]]) -> None:
    expected = canonical(rows)
    path = tmp_path / "t.parquet"
    expected.write_parquet(path)
    check(path, expected)
    # Not canonical: timestamps as text, columns in another order, a block missing.
    generic = tmp_path / "g.parquet"
    (expected.with_columns(pl.col("timestamp").dt.strftime("%Y-%m-%dT%H:%M:%S%.6fZ"))
     .select(reversed(expected.columns)).write_parquet(generic))
    check(generic, expected)


@SETTINGS
@given(rows=turns())
def test_csv_dotted_columns(tmp_path: Path, rows: list[dict[str, Any]]) -> None:
    path = tmp_path / "t.csv"
    write_csv(rows, path)
    check(path, canonical(rows))


@SETTINGS
@given(rows=turns(), seed=st.integers(0, 1000))
def test_stage_events_shuffled_across_files(tmp_path: Path, rows: list[dict[str, Any]],
                                            seed: int) -> None:
    paths = [tmp_path / f"events-{i}.jsonl" for i in range(3)]
    write_events(rows, paths, seed)
    check(paths, canonical(rows))


@SETTINGS
@given(rows=turns())
def test_directory_of_mixed_forms(tmp_path: Path, rows: list[dict[str, Any]]) -> None:
    # Half the turns as JSON Lines, half as CSV, in one directory.
    half = len(rows) // 2
    (tmp_path / "logs").mkdir(exist_ok=True)
    write_jsonl(rows[:half], tmp_path / "logs" / "a.jsonl.gz", "gz")
    write_csv(rows[half:], tmp_path / "logs" / "b.csv")
    check(tmp_path / "logs", canonical(rows))


def test_the_spec_example_reads_as_documented(tmp_path: Path) -> None:
    record = {
        "schema_version": 1, "session_id": "s-7f3a", "turn_index": 0,
        "timestamp": "2026-11-20T18:03:12.481Z",
        "device": {"type": "speaker", "has_screen": False, "locale": "en-US",
                   "app_version": "4.2.1"},
        "wake": {"detected": True, "score": 0.93, "device_directed_score": 0.88},
        "asr": {"text": "open the garbage store", "confidence": 0.58,
                "nbest": [{"text": "open the garbage store", "confidence": 0.58},
                          {"text": "open the garage door", "confidence": 0.31}],
                "audio_ms": 1800, "latency_ms": 310},
        "feedback": {"barge_in": False, "explicit": None},
        "label": {"failure_point": "Entity-Resolution", "annotator": "a17"},
    }
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(record) + "\n")
    frame, report = read_traces(path)
    row = frame.row(0, named=True)
    assert row["label"] == {"failure_point": "er", "annotator": "a17", "failure_point_2": None}
    assert row["timestamp"] == dt.datetime(2026, 11, 20, 18, 3, 12, 481000, tzinfo=dt.UTC)
    assert row["asr"]["audio_ms"] == 1800.0
    assert row["nlu"] is None and row["er"] is None
    assert report.stage_presence["asr"] == 1.0 and report.stage_presence["nlu"] == 0.0
    assert report.label_counts["er"] == 1
