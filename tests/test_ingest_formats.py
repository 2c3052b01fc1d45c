"""Ingest reads back exactly what the simulator's writers (fpi.writers) write, in every form."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from fpi.ingest import ingest, read_traces
from fpi.simulate import simulate_frame
from fpi.writers import write_turns


@pytest.fixture(scope="module")
def frame() -> pl.DataFrame:
    return simulate_frame(400, seed=3).sort("session_id", "turn_index")


@pytest.mark.parametrize("fmt", ["jsonl", "jsonl.gz", "jsonl.zst", "parquet", "csv", "events"])
def test_every_writer_form_round_trips(tmp_path: Path, frame: pl.DataFrame, fmt: str) -> None:
    suffix = {"events": "events.jsonl"}.get(fmt, fmt)
    path = tmp_path / f"turns.{suffix}"
    write_turns(frame, path, format=fmt)
    got, report = read_traces(path)
    assert report.rejected == 0, report.rejects[:3]
    assert report.formats[str(path)] == fmt.split(".")[0]
    assert_frame_equal(got, frame)


def test_shuffled_input_is_sorted_on_output(tmp_path: Path, frame: pl.DataFrame) -> None:
    src = tmp_path / "shuffled.jsonl"
    write_turns(frame.sample(fraction=1.0, shuffle=True, seed=1), src, format="jsonl")
    out = tmp_path / "turns.parquet"
    report = ingest(src, out, block_bytes=1 << 16)
    assert report.turns_kept == frame.height
    assert_frame_equal(pl.read_parquet(out), frame)
