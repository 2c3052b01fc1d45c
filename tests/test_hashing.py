"""Stable hashes: pinned values (they decide users' buckets and bootstrap draws)."""

from __future__ import annotations

import numpy as np
import polars as pl
from any_text import any_text
from hypothesis import given, settings
from hypothesis import strategies as st

from fpi.engine import Engine, LocalEngine
from fpi.hashing import bucket_of, combine, hash_series, hash_strings, mix64, unit_interval

_MASK = (1 << 64) - 1


def _reference(text: str) -> int:
    h = 0xCBF29CE484222325
    for byte in text.encode("utf-8"):
        h = ((h ^ byte) * 0x100000001B3) & _MASK
    return h


def test_pinned_values() -> None:
    got = hash_strings(["", "a", "session-1", "session-2"]).tolist()
    assert got == [17665956581633026203, 198367012849983736,
                   10348509449063778181, 1385326806186573299]
    assert bucket_of(hash_strings(["session-1", "session-2"]), 7).tolist() == [0, 0]
    assert combine(hash_strings(["a"]), 3, 4).tolist() == [5573648426404319068]


@settings(max_examples=60, deadline=None)
@given(st.lists(any_text(max_size=80), max_size=60))
def test_matches_scalar_reference(values: list[str]) -> None:
    expected = mix64(np.array([_reference(v) for v in values], dtype=np.uint64))
    assert hash_strings(values).tolist() == expected.tolist()


def test_nulls_hash_as_empty_and_chunks_do_not_matter() -> None:
    s = pl.concat([pl.Series(["x", None]), pl.Series(["y" * 500])], rechunk=False)
    assert hash_series(s).tolist() == hash_strings(["x", "", "y" * 500]).tolist()


def test_unit_interval_and_buckets_in_range() -> None:
    h = hash_strings([f"s{i}" for i in range(5000)])
    u = unit_interval(combine(h, 1))
    assert (u >= 0).all() and (u < 1).all() and abs(u.mean() - 0.5) < 0.02
    counts = np.bincount(bucket_of(h, 4), minlength=4)
    assert counts.min() > 1100


def test_local_engine_maps_in_order() -> None:
    with LocalEngine() as engine:
        assert isinstance(engine, Engine)
        handles = engine.map(pow, [1, 2, 3], 2)
        assert engine.gather(engine.map(abs, [-h for h in handles])) == [1, 4, 9]
