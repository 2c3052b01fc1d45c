"""Out-of-order input is sorted in bounded memory (buckets), into the same output."""

from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal
from turn_strategies import canonical, turns

import fpi.ingest.sort
from fpi.ingest import ingest, read_traces
from fpi.ingest.sort import parquet_writer, sort_rewrite
from fpi.ingest.validate import to_arrow
from fpi.progress import bytes_callback
from fpi.schema import KEY_COLUMNS, TURN_SCHEMA


# 20 examples of up to 16 turns (as many turns as 40 of up to 8, more buckets each): a
# rewrite costs about the same for 1 turn as for 16.
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=turns(max_size=16), bucket_rows=st.integers(1, 5), seed=st.integers(0, 1000))
def test_sort_rewrite_matches_an_in_memory_sort(rows: list[dict[str, Any]], bucket_rows: int,
                                                seed: int) -> None:
    expected = canonical(rows)
    shuffled = expected.sample(fraction=1.0, shuffle=True, seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        src, dst, scratch = Path(tmp) / "in.parquet", Path(tmp) / "out.parquet", Path(tmp) / "s"
        scratch.mkdir()
        with parquet_writer(src) as w:
            w.write_table(to_arrow(shuffled), row_group_size=2)
        sort_rewrite(src, dst, shuffled.select(KEY_COLUMNS), scratch, bucket_rows=bucket_rows)
        got = pl.read_parquet(dst)
        assert list(scratch.iterdir()) == []  # bucket files are removed
    assert got.schema == TURN_SCHEMA
    assert_frame_equal(got, expected)


def test_time_ordered_logs_are_sorted_by_session_in_buckets(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sessions interleaved (a live assistant's log) come out grouped, as in memory."""
    turns_ = [{"session_id": f"s{s}", "turn_index": t, "wake": {"detected": True},
               "asr": {"text": f"turn {t} of {s}"}} for t in range(6) for s in range(40)]
    random.Random(3).shuffle(turns_)
    src = tmp_path / "live.jsonl"
    src.write_text("".join(json.dumps(t) + "\n" for t in turns_))
    expected, _ = read_traces(src)
    monkeypatch.setattr(fpi.ingest.sort, "BUCKET_ROWS", 50)  # 5 buckets, sessions split
    out = tmp_path / "turns.parquet"
    report = ingest(src, out, block_bytes=2000)
    got = pl.read_parquet(out)
    assert report.turns_kept == 240 and got.height == 240
    assert got.select(KEY_COLUMNS).rows() == sorted((f"s{s}", t) for s in range(40)
                                                    for t in range(6))
    assert_frame_equal(got, expected)
    # Nothing left behind but the output and its rejects file.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live.jsonl", "turns.parquet",
                                                          "turns.rejects.jsonl"]


def test_the_sort_pass_reports_progress_as_its_own_stage(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    turns_ = [{"session_id": f"s{s}", "turn_index": t, "wake": {"detected": True}}
              for t in range(3) for s in range(20)]
    random.Random(5).shuffle(turns_)
    src = tmp_path / "live.jsonl"
    src.write_text("".join(json.dumps(t) + "\n" for t in turns_))
    monkeypatch.setattr(fpi.ingest.sort, "BUCKET_ROWS", 25)  # 60 rows: 3 buckets
    calls: list[tuple[str, int, int | None]] = []
    ingest(src, tmp_path / "turns.parquet",
           progress=bytes_callback(lambda stage, done, total: calls.append((stage, done, total))))
    assert {stage for stage, _, _ in calls} == {"reading", "sorting"}
    assert [c for c in calls if c[0] == "sorting"] == [("sorting", b, 3) for b in (1, 2, 3)]
    assert calls.index(("sorting", 1, 3)) > max(i for i, c in enumerate(calls)
                                                if c[0] == "reading")
