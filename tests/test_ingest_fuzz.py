"""Messy input never crashes ingest: every record is either kept or rejected, once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
from any_text import any_text
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fpi.errors import InputError
from fpi.ingest import ingest, read_traces
from fpi.ingest.problems import RULES

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
    | any_text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text(max_size=4), inner,
                                                                 max_size=3),
    max_leaves=6,
)

PATHS = ["session_id", "turn_index", "timestamp", "schema_version", "wake", "wake.score",
         "asr", "asr.confidence", "asr.nbest", "nlu.slots", "er.entities", "result.status",
         "feedback.explicit", "label.failure_point", "label", "extra", "new.field"]


def base(i: int) -> dict[str, Any]:
    return {"session_id": f"s{i % 3}", "turn_index": i, "timestamp": "2026-11-20T18:03:12Z",
            "wake": {"detected": True, "score": 0.5}, "asr": {"text": "x", "confidence": 0.5,
                                                              "nbest": []},
            "label": {"failure_point": "asr"}}


def mutate(record: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    head, _, tail = path.partition(".")
    if tail:
        if not isinstance(record.get(head), dict):
            record[head] = {}
        record[head][tail] = value
    else:
        record[head] = value
    return record


line_kinds = st.one_of(
    st.builds(lambda i: json.dumps(base(i)).encode(), st.integers(0, 40)),
    st.builds(lambda i, p, v: json.dumps(mutate(base(i), p, v)).encode(),
              st.integers(0, 40), st.sampled_from(PATHS), json_values),
    st.binary(max_size=30),
    st.builds(lambda v: json.dumps(v).encode(), json_values),
)


def check_counts(paths: Any, **kw: Any) -> None:
    try:
        frame, report = read_traces(paths, **kw)
    except InputError:
        return  # nothing good left (or nothing at all): a clean one-line error
    assert report.records_read == report.turns_kept + report.rejected
    assert frame.height == report.turns_kept
    assert set(report.rejects_by_rule) <= set(RULES)
    assert len(report.rejects) == report.rejected
    assert frame.select("session_id", "turn_index").is_unique().all()


# Reading costs about the same for 1 line as for 50 (a fixed share of a
# read_traces call dominates), so each property draws 30 files of up to twice the lines
# the 60 examples it used to draw held: about as many messy lines in all, half the reads.
SETTINGS = settings(max_examples=30, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(lines=st.lists(line_kinds, min_size=1, max_size=50), block=st.sampled_from([64, 1 << 20]))
def test_messy_json_lines(tmp_path: Path, lines: list[bytes], block: int) -> None:
    path = tmp_path / "messy.jsonl"
    path.write_bytes(b"\n".join(ln.replace(b"\n", b" ") for ln in lines) + b"\n")
    check_counts(path, block_bytes=block)


@SETTINGS
@given(events=st.lists(st.tuples(st.integers(0, 4), st.sampled_from(
    ["wake", "asr", "nlu", "label", "tts", None]), json_values | st.just({"detected": True})),
    min_size=1, max_size=40), garbage=st.lists(st.binary(max_size=20), max_size=6))
def test_messy_stage_events(tmp_path: Path, events: list[tuple[int, Any, Any]],
                            garbage: list[bytes]) -> None:
    lines = [json.dumps({"session_id": "s", "turn_index": ti, "stage": stage,
                         "timestamp": "2026-11-20T18:03:12Z", "data": data}).encode()
             for ti, stage, data in events]
    lines += [g.replace(b"\n", b" ") for g in garbage]
    path = tmp_path / "messy.events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    check_counts(path, format="events")


@SETTINGS
@given(cells=st.lists(st.tuples(any_text(max_size=6), any_text(max_size=6), any_text(max_size=6)),
                      min_size=1, max_size=30))
def test_messy_csv(tmp_path: Path, cells: list[tuple[str, str, str]]) -> None:
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["session_id", "turn_index", "wake.score"])
    writer.writerows(cells)
    path = tmp_path / "messy.csv"
    path.write_text(buf.getvalue(), encoding="utf-8")
    check_counts(path)


valid_lines = st.one_of(
    st.builds(lambda i: json.dumps(base(i)).encode(), st.integers(0, 40)),
    st.builds(lambda i, p, v: json.dumps(mutate(base(i), p, v)).encode(),
              st.integers(0, 40), st.sampled_from(PATHS), json_values),
    st.builds(lambda i, v: json.dumps({**base(i), "asr": {"text": "x", "nbest": [
        {"text": "y", "confidence": 0.1, "extra_key": v}]}}).encode(),
              st.integers(0, 40), json_values),
)


def _numbers_as_floats(value: Any) -> Any:
    # An unknown field's numbers may come back as 0 or 0.0 (pyarrow infers one
    # numeric type per list); JSON does not tell them apart either.
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, list):
        return [_numbers_as_floats(v) for v in value]
    return {k: _numbers_as_floats(v) for k, v in value.items()}


def _semantic(frame: Any) -> list[tuple[Any, ...]]:
    rows = []
    for row in frame.iter_rows(named=True):
        row["extra"] = _numbers_as_floats(json.loads(row["extra"])) if row["extra"] else None
        rows.append(tuple(sorted((k, json.dumps(v, sort_keys=True, default=str))
                                 for k, v in row.items())))
    return rows


@SETTINGS
@given(lines=st.lists(valid_lines, min_size=1, max_size=24))
def test_fast_and_careful_paths_agree(tmp_path: Path, lines: list[bytes]) -> None:
    # The same records, once through pyarrow's block parser and once through the
    # line-by-line parser (one unreadable line sends the whole block that way).
    fast, careful = tmp_path / "fast.jsonl", tmp_path / "careful.jsonl"
    fast.write_bytes(b"\n".join(lines) + b"\n")
    careful.write_bytes(b"\n".join(lines) + b"\n{oops\n")
    try:
        a, ra = read_traces(fast)
    except InputError:
        a, ra = None, None
    try:
        b, rb = read_traces(careful)
    except InputError:
        b, rb = None, None
    if a is None or b is None:
        assert a is None and b is None
        return
    assert _semantic(a) == _semantic(b)
    rules_a = [(r.line, r.rule) for r in ra.rejects]
    rules_b = [(r.line, r.rule) for r in rb.rejects if r.rule != "invalid_json"
               or r.line != len(lines) + 1]
    assert rules_a == rules_b



def test_a_value_beyond_64_bits_in_a_message_is_a_reject(tmp_path: Path) -> None:
    # (found by test_fast_and_careful_paths_agree: the careful parser, where a broken
    # line sends the block, keeps such an integer when the line also holds a non-finite
    # number, and crashed quoting it in a reject's message)
    big = {"": -(2**63) - 1, "0": float("inf")}
    path = tmp_path / "big.jsonl"
    path.write_bytes(json.dumps(mutate(base(0), "session_id", big)).encode()
                     + b"\n{oops\n" + json.dumps(base(1)).encode() + b"\n")
    frame, report = read_traces(path)
    assert frame.height == 1
    assert report.rejects_by_rule == {"missing_session_id": 1, "invalid_json": 1}
    assert '{"":-9223372036854775809,"0":Infinity}' in report.rejects[0].message


def test_a_lone_surrogate_in_a_message_is_shown_escaped(tmp_path: Path) -> None:
    # (found in review: a "\ud800" escape decodes to a lone surrogate, which orjson
    # refuses; quoting it in a message crashed writing the rejects file, exit 70)
    line = json.dumps(mutate(base(0), "session_id", ["X"])).replace('"X"', '"\\ud800"')
    path = tmp_path / "surrogate.jsonl"
    path.write_text(line + "\n" + json.dumps(base(1)) + "\n", encoding="utf-8")
    report = ingest([path], tmp_path / "turns.parquet", rejects_path=tmp_path / "rejects.jsonl")
    assert report.rejects_by_rule == {"missing_session_id": 1}
    (reject,) = [json.loads(x) for x in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert '["\\ud800"]' in reject["message"]
    assert pl.read_parquet(tmp_path / "turns.parquet").height == 1


def test_a_field_name_with_a_nul_character_keeps_it(tmp_path: Path) -> None:
    # (found by test_fast_and_careful_paths_agree: Arrow's JSON reader keeps the name,
    # Polars' import of it cut it at the NUL, so the fast path wrote "wake." in extra)
    line = json.dumps(mutate(base(0), "wake", {"detected": True, "\x00": False, "a\x00b": 1}))
    for lines in ([line], [line, "{oops"]):  # fast path, careful path
        path = tmp_path / "nul.jsonl"
        path.write_text("\n".join(lines) + "\n")
        frame, _ = read_traces(path)
        assert json.loads(frame["extra"][0]) == {"wake.\x00": False, "wake.a\x00b": 1}
