"""Ingest sorts what the simulator's writers (fpi.writers) write out of order (that it
reads back every form they write: test_formats.test_round_trip_through_ingest)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from fpi.ingest import ingest
from fpi.simulate import simulate_frame
from fpi.writers import write_turns


@pytest.fixture(scope="module")
def frame() -> pl.DataFrame:
    return simulate_frame(400, seed=3).sort("session_id", "turn_index")


def test_shuffled_input_is_sorted_on_output(tmp_path: Path, frame: pl.DataFrame) -> None:
    src = tmp_path / "shuffled.jsonl"
    write_turns(frame.sample(fraction=1.0, shuffle=True, seed=1), src, format="jsonl")
    out = tmp_path / "turns.parquet"
    report = ingest(src, out, block_bytes=1 << 16)
    assert report.turns_kept == frame.height
    assert_frame_equal(pl.read_parquet(out), frame)
