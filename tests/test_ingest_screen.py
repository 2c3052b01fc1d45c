"""The fast Arrow screen never disagrees with the full Polars validation.

Ingest validates a clean block of JSON Lines in Arrow compute
(:func:`fpi.ingest.validate.screen`) and sends everything else through
:func:`fpi.ingest.validate.validate`. The screen may send a clean block the
slow way, but what it passes must be exactly what ``validate`` would keep, and
a block breaking any rule (or needing a rewrite) must never pass it.
"""

from __future__ import annotations

import copy
import gzip
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from any_text import any_text
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal
from turn_strategies import record, turns

from fpi.ingest.parse import arrow_int, arrow_ints, arrow_mask, arrow_strings, parse_block
from fpi.ingest.validate import ROW_COL, extra_column, screen, to_arrow, validate

SAMPLES = Path(__file__).resolve().parent.parent / "sample_logs"


def _set(rec: dict[str, Any], path: str, value: Any) -> bool:
    """Set a dotted path in a record; False when a block on the way is absent."""
    *parents, leaf = path.split(".")
    node = rec
    for p in parents:
        node = node.get(p)
        if not isinstance(node, dict):
            return False
    node[leaf] = value
    return True


def _first_item(rec: dict[str, Any], path: str, field: str, value: Any) -> bool:
    items = rec
    for p in path.split("."):
        items = items.get(p) if isinstance(items, dict) else None
    if not items:
        return False
    items[0][field] = value
    return True


#: Changes that break a rule: the block must never pass the screen.
BREAKING: dict[str, Any] = {
    "schema_version": lambda r: _set(r, "schema_version", 2),
    "blank_session": lambda r: _set(r, "session_id", "  "),
    "unicode_blank_session": lambda r: _set(r, "session_id", "\u2028\u3000"),
    "nel_blank_session": lambda r: _set(r, "session_id", "\x85\u00a0 "),
    "no_session": lambda r: r.pop("session_id") is not None,
    "negative_turn": lambda r: _set(r, "turn_index", -1),
    "no_wake": lambda r: _set(r, "wake", None),
    "wake_score": lambda r: _set(r, "wake.score", 1.5),
    "asr_confidence": lambda r: _set(r, "asr.confidence", -0.1),
    "nbest_confidence": lambda r: _first_item(r, "asr.nbest", "confidence", 2.0),
    "slot_confidence": lambda r: _first_item(r, "nlu.slots", "confidence", -1.0),
    "entity_score": lambda r: _first_item(r, "er.entities", "score", 1.01),
    "entity_status": lambda r: _first_item(r, "er.entities", "status", "maybe"),
    "latency": lambda r: _set(r, "result.latency_ms", -5.0),
    "audio": lambda r: _set(r, "asr.audio_ms", -1.0),
    "result_status": lambda r: _set(r, "result.status", "crashed"),
    "feedback": lambda r: _set(r, "feedback.explicit", "meh"),
    "bad_label": lambda r: _set(r, "label.failure_point", "the asr"),
    "bad_timestamp": lambda r: _set(r, "timestamp", "yesterday"),
}

#: Changes that keep the record valid but must be rewritten (aliases, other
#: timestamp forms) or folded into ``extra``: either way gives the same rows.
REWRITES: dict[str, Any] = {
    "label_alias": lambda r: _set(r, "label.failure_point", "ASR"),
    "label_2_alias": lambda r: _set(r, "label.failure_point_2", "entity"),
    "naive_timestamp": lambda r: _set(r, "timestamp", "2026-11-20 18:03:12"),
    "offset_timestamp": lambda r: _set(r, "timestamp", "2026-11-20T18:03:12+02:00"),
    "block_unknown": lambda r: _set(r, "wake", {**r["wake"], "engine": {"v": 2, "x": None}}),
    "item_unknown": lambda r: _first_item(r, "asr.nbest", "rank", 1),
    "top_unknown": lambda r: _set(r, "region", {"name": "eu", "zones": [1, 2]}),
    "mixed_unknown": lambda r: _set(r, "region", ["eu", 1]),
    "extra_text": lambda r: _set(r, "extra", '{"a.b": 1}'),
    "unicode_session": lambda r: _set(r, "session_id", "sitzung-ü-1"),
}

MUTATIONS = {**BREAKING, **REWRITES}


def _both_ways(lines: list[bytes]) -> tuple[pl.DataFrame | None, pl.DataFrame, int]:
    """(screened frame or None, validated good rows, number of problems) of one block."""
    parsed = parse_block(b"".join(lines), len(lines))
    assert parsed.frame is not None
    # (a block Arrow cannot read goes line by line, with unknown fields as text: no screen)
    fast = None if parsed.careful else screen(parsed.frame)
    raw = pl.from_arrow(parsed.frame)
    assert isinstance(raw, pl.DataFrame)
    good, problems = validate(raw)
    slow = pl.from_arrow(to_arrow(good.drop(ROW_COL)))
    assert isinstance(slow, pl.DataFrame)
    fast_frame = None if fast is None else pl.from_arrow(fast)
    assert not isinstance(fast_frame, pl.Series)
    return fast_frame, slow, len(problems)


# Each example changes up to three different records, each with its own mutation (or
# none), so 60 blocks try about as many mutations as 120 blocks of one did, with
# mixtures of breaks and rewrites besides (a block costs the same to check for 1 record as
# for 8: the screen and validation are a fixed number of Arrow/Polars passes).
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=turns(),
       changes=st.lists(st.tuples(st.sampled_from(sorted(MUTATIONS)), st.integers(0, 7)),
                        max_size=3, unique_by=lambda c: c[0]))
def test_screen_agrees_with_validate(rows: list[dict[str, Any]],
                                     changes: list[tuple[str, int]]) -> None:
    records = [record(t) for t in rows]
    broken, changed = set(), set()
    for mutation, where in changes:
        i = where % len(records)
        if i in changed:
            continue  # one mutation per record: each broken record is one problem
        target = copy.deepcopy(records[i])
        if MUTATIONS[mutation](target) is not False:
            records[i] = target
            changed.add(i)
            if mutation in BREAKING:
                broken.add(mutation)
    lines = [(json.dumps(r) + "\n").encode() for r in records]
    fast, slow, n_problems = _both_ways(lines)
    if broken:
        assert fast is None, f"the screen passed a block with {sorted(broken)}"
        assert n_problems == len(broken)
    if fast is not None:
        assert n_problems == 0
        assert_frame_equal(fast, slow)


def test_screen_passes_clean_simulated_logs() -> None:
    """The fast path is really taken on ordinary logs (else ingest silently slows down)."""
    with gzip.open(SAMPLES / "train.jsonl.gz", "rb") as fh:
        lines = [next(fh) for _ in range(3000)]
    fast, slow, n_problems = _both_ways(lines)
    assert n_problems == 0
    assert fast is not None
    assert_frame_equal(fast, slow)
    assert fast.get_column("extra").null_count() < fast.height  # unknown fields were kept


@pytest.fixture(scope="module")
def simulated_records() -> list[dict[str, Any]]:
    """The first 100 records of the shipped training sample (tests mutate copies; each
    mutation applies to the first record already; a block costs about the same to screen
    and validate for 100 records as for 400)."""
    with gzip.open(SAMPLES / "train.jsonl.gz", "rb") as fh:
        return [json.loads(next(fh)) for _ in range(100)]


@pytest.fixture(scope="module")
def simulated_lines(simulated_records: list[dict[str, Any]]) -> list[bytes]:
    """Those records as JSON Lines, written once (tests replace the line they change)."""
    return [(json.dumps(r) + "\n").encode() for r in simulated_records]


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_each_mutation_on_simulated_logs(mutation: str,
                                         simulated_records: list[dict[str, Any]],
                                         simulated_lines: list[bytes]) -> None:
    """Each mutation applies to a clean simulated block; a broken rule sends it the slow
    way, a rewrite gives the same rows either way."""
    records = simulated_records
    # (applied to a copy of each record in turn until one has the field it changes)
    hit, changed = None, None
    for i, rec in enumerate(records):
        target = copy.deepcopy(rec)
        if MUTATIONS[mutation](target) is not False:
            hit, changed = i, target
            break
    if hit is None:
        pytest.fail(f"{mutation} applies to no record")
    lines = [*simulated_lines[:hit], (json.dumps(changed) + "\n").encode(),
             *simulated_lines[hit + 1:]]
    fast, slow, n_problems = _both_ways(lines)
    assert slow.height + n_problems == len(records)
    if mutation in BREAKING:
        assert fast is None
        assert n_problems == 1
    elif fast is not None:
        assert_frame_equal(fast, slow)
    if mutation in ("block_unknown", "unicode_session"):
        assert fast is not None  # common in real logs: no slow path
    if mutation == "block_unknown":
        assert '"wake.engine.v":2' in slow.get_column("extra")[hit]


# Up to 8 rows: 8 rows of three fields (each null or not) already mix complete, partial
# and empty ones (and repeats) in most examples; each kind is encoded again on its own
# (about 2.5 ms a call: one call a kind, not one a distinct row).
@settings(max_examples=80, deadline=None)
@given(rows=st.lists(st.tuples(st.one_of(st.none(), any_text(max_size=6)),
                               st.one_of(st.none(), st.integers(-5, 5)),
                               st.one_of(st.none(), st.booleans())), min_size=1, max_size=8))
def test_extra_column_writes_the_same_text_every_way(
        rows: list[tuple[str | None, int | None, bool | None]]) -> None:
    """Unknown fields become one JSON object per row, null leaves left out, and the text
    is the same whether a row is encoded whole or leaf by leaf."""
    frame = pl.DataFrame(
        {"region": [r[0] for r in rows], "net": [{"n": r[1], "ok": r[2]} for r in rows]},
        schema={"region": pl.String, "net": pl.Struct({"n": pl.Int64, "ok": pl.Boolean})},
    )
    got = extra_column(frame).to_list()
    for (region, n, ok), text in zip(rows, got, strict=True):
        expect = {k: v for k, v in (("region", region), ("net.n", n), ("net.ok", ok))
                  if v is not None}
        assert (json.loads(text) if text is not None else None) == (expect or None)
    # Each kind of row alone: rows with every leaf (the whole way), with some (leaf by
    # leaf), with none (null), each kind in a frame of its own distinct rows, so each
    # takes its one way for all of them (a row's text does not depend on the others').
    kinds: dict[str, dict[tuple[str | None, int | None, bool | None], int]] = {}
    for i, row in enumerate(rows):
        present = sum(v is not None for v in row)
        kind = "every" if present == len(row) else "some" if present else "none"
        kinds.setdefault(kind, {}).setdefault(row, i)
    alone: dict[tuple[str | None, int | None, bool | None], str | None] = {}
    for kind in kinds.values():
        texts = extra_column(frame[list(kind.values())]).to_list()
        alone.update(zip(kind, texts, strict=True))
    assert got == [alone[row] for row in rows]


@settings(max_examples=60, deadline=None)
@given(ints=st.lists(st.integers(-(2**63), 2**63 - 1), max_size=20),
       mask=st.lists(st.booleans(), max_size=70),
       texts=st.lists(any_text(max_size=8), max_size=10))
def test_arrow_values_built_from_buffers_equal_pyarrows_own(
        ints: list[int], mask: list[bool], texts: list[str]) -> None:
    assert arrow_ints(np.array(ints, dtype=np.int64)).equals(pa.array(ints, pa.int64()))
    assert arrow_mask(np.array(mask, dtype=bool)).equals(pa.array(mask, pa.bool_()))
    assert arrow_strings(tuple(texts)).equals(pa.array(texts, pa.string()))
    for value in ints[:3]:
        assert arrow_int(value).equals(pa.scalar(value, pa.int64()))


@pytest.mark.slow
def test_an_ingest_never_imports_pandas(tmp_path: Path) -> None:
    """pyarrow imports pandas (0.3 CPU-s) the first time it converts a Python value;
    an ingest builds its Arrow values from buffers, through the fast screen, the
    careful path, duplicate rejects and the sort (where pandas is installed, as with
    the dask extra, this fails on any Python value handed to pyarrow)."""
    with gzip.open(SAMPLES / "train.jsonl.gz", "rb") as fh:
        lines = [next(fh) for _ in range(300)]
    bad = b'{"session_id": "x", "turn_index": -1, "wake": {}}\n'
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(lines[150:] + lines[:150] + [lines[3], bad, b"not json\n"]))
    code = ("import sys\nfrom fpi.ingest import ingest\n"
            f"r = ingest({str(src)!r}, {str(tmp_path / 'out.parquet')!r})\n"
            "print(r.turns_kept, r.rejected, 'pandas' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["300", "3", "False"]
