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
from turn_strategies import canonical, record, turns

from fpi.ingest import read_traces
from fpi.schema import BLOCKS, TURN_SCHEMA

# ---------------------------------------------------------------------------
# Writers (one per input form)
# ---------------------------------------------------------------------------


def write_jsonl(rows: list[dict[str, Any]], path: Path, compress: str | None = None) -> None:
    data = "".join(json.dumps(record(t)) + "\n" for t in rows).encode()
    if compress == "gz":
        data = gzip.compress(data)
    elif compress == "zst":
        data = zstandard.ZstdCompressor().compress(data)
    path.write_bytes(data)


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    flat_rows = []
    for t in rows:
        flat: dict[str, Any] = {}
        for key, value in record(t).items():
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
        rec = record(t)
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


# Reading costs about the same for 1 turn as for 16 (a fixed 0.02-0.2 CPU-s per
# read_traces call), so the property draws 12 examples of up to 16 turns: about as many
# turns per form as 25 examples of up to 8. Each example goes through every form (one
# draw of turns, seven reads: drawing the turns cost as much as two reads). The
# compressed forms are read in the directory of mixed forms (a third of the turns each:
# decompression does not look at what it carries), and the cut into blocks makes about
# four of them (each block costs a fixed 5 ms to parse and check, so blocks of one line
# cost more than the rest of the example).
@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=turns(max_size=16), seed=st.integers(0, 1000))
def test_every_form_round_trips(tmp_path: Path, rows: list[dict[str, Any]], seed: int) -> None:
    expected = canonical(rows)
    forms: dict[str, Any] = {}
    # JSON Lines
    write_jsonl(rows, tmp_path / "t.jsonl")
    forms["t.jsonl"] = (tmp_path / "t.jsonl", {})
    # small blocks: records are split over several blocks (of one line where a line is
    # longer than a block), which must join up into the same frame
    size = (tmp_path / "t.jsonl").stat().st_size
    forms["t.jsonl, 4 blocks"] = (tmp_path / "t.jsonl", {"block_bytes": size // 4 + 1})
    # canonical Parquet, and not canonical: timestamps as text, columns in another order
    expected.write_parquet(tmp_path / "t.parquet")
    forms["t.parquet"] = (tmp_path / "t.parquet", {})
    (expected.with_columns(pl.col("timestamp").dt.strftime("%Y-%m-%dT%H:%M:%S%.6fZ"))
     .select(reversed(expected.columns)).write_parquet(tmp_path / "g.parquet"))
    forms["g.parquet"] = (tmp_path / "g.parquet", {})
    # CSV with dotted columns
    write_csv(rows, tmp_path / "t.csv")
    forms["t.csv"] = (tmp_path / "t.csv", {})
    # stage events shuffled across three files
    events = [tmp_path / f"events-{i}.jsonl" for i in range(3)]
    write_events(rows, events, seed)
    forms["events"] = (events, {})
    # a directory of mixed forms: a third of the turns each as gzipped JSON Lines, zstd
    # JSON Lines and CSV (the compressed forms first: each holds a turn from 2 turns on)
    gz = (len(rows) + 2) // 3
    zst = gz + (len(rows) - gz + 1) // 2
    (tmp_path / "logs").mkdir(exist_ok=True)
    write_jsonl(rows[:gz], tmp_path / "logs" / "a.jsonl.gz", "gz")
    write_jsonl(rows[gz:zst], tmp_path / "logs" / "c.jsonl.zst", "zst")
    write_csv(rows[zst:], tmp_path / "logs" / "b.csv")
    forms["logs/"] = (tmp_path / "logs", {})
    for form, (path, kw) in forms.items():
        try:
            check(path, expected, **kw)
        except AssertionError as exc:
            raise AssertionError(f"{form}: {exc}") from exc


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


def test_stage_events_carrying_other_stages_fields_keep_them_in_extra(tmp_path: Path) -> None:
    # An event's data is read as every stage's fields at once: a field of another stage
    # (a wake event with ASR's "text", an ASR event with NLU's "intent") is an unknown
    # field of its own stage, kept in ``extra`` as the same turn record would keep it.
    rows = [{"session_id": "s1", "turn_index": i, "timestamp": "2026-11-20T18:03:12Z",
             "wake": {"detected": True, "score": 0.9},
             "asr": {"text": "play jazz", "confidence": 0.8}} for i in range(3)]
    rows[1]["wake"]["text"] = "stray words"
    rows[2]["asr"]["intent"] = "play_music"
    rows[2]["asr"]["nbest_note"] = [1, 2]
    turns_path = tmp_path / "turns.jsonl"
    turns_path.write_text("".join(json.dumps({"schema_version": 1, **r}) + "\n" for r in rows))
    events_path = tmp_path / "t.events.jsonl"
    events_path.write_text("".join(
        json.dumps({"session_id": r["session_id"], "turn_index": r["turn_index"],
                    "stage": stage, "timestamp": r["timestamp"], "data": r[stage]}) + "\n"
        for r in rows for stage in ("asr", "wake")))
    from_turns, _ = read_traces(turns_path)
    from_events, report = read_traces(events_path)
    assert report.rejected == 0 and report.turns_kept == 3
    assert_frame_equal(_norm_extra(from_events), _norm_extra(from_turns))
    extras = [json.loads(e) if e else None for e in from_events["extra"]]
    assert extras == [None, {"wake.text": "stray words"},
                      {"asr.intent": "play_music", "asr.nbest_note": [1, 2]}]
