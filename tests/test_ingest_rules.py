"""Every rule of the trace format, one bad record each: right file, line, rule; counts add up."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fpi.errors import InputError, StrictRejects, TruncatedInput
from fpi.ingest import ingest, read_traces, rejects_path_for
from fpi.ingest.problems import RULES
from fpi.schema import LABEL_ALIASES


def good(i: int, session: str = "s-1", **extra: Any) -> dict[str, Any]:
    return {"session_id": session, "turn_index": i, "timestamp": "2026-11-20T18:03:12.481Z",
            "wake": {"detected": True, "score": 0.9}, **extra}


def lines_with(bad: str | bytes, at: int = 3, n: int = 5) -> bytes:
    """``n`` good JSON lines with ``bad`` as line ``at`` (1-based)."""
    out = [json.dumps(good(i)).encode() for i in range(n)]
    out.insert(at - 1, bad if isinstance(bad, bytes) else bad.encode())
    return b"\n".join(out) + b"\n"


def rec(**fields: Any) -> str:
    base = good(99)
    for key, value in fields.items():
        if value is _DROP:
            base.pop(key, None)
        else:
            base[key] = value
    return json.dumps(base)


_DROP = object()

#: rule -> the bad line (turn JSON Lines)
TURN_CASES: dict[str, str | bytes] = {
    "invalid_utf8": b'{"session_id": "s-\xff", "turn_index": 99, "wake": {}}',
    "invalid_json": '{"session_id": "s-1", "turn_index": 99, "wake": {',
    "not_an_object": '["s-1", 99]',
    "missing_session_id": rec(session_id=_DROP),
    "bad_turn_index": rec(turn_index=-1),
    "missing_wake": rec(wake=_DROP),
    "bad_type": rec(asr={"text": "hi", "confidence": "high"}),
    "out_of_range": rec(nlu={"confidence": 1.2}),
    "negative_duration": rec(asr={"latency_ms": -5}),
    "bad_enum": rec(result={"status": "exploded"}),
    "bad_timestamp": rec(timestamp="20/11/2026 18:03"),
    "bad_label": rec(label={"failure_point": "tts"}),
    "bad_schema_version": rec(schema_version=2),
    "duplicate_turn": json.dumps(good(0)),  # line 3 repeats line 1
    "too_deep": rec(extra_field=json.loads("[" * 200 + "]" * 200)),
    "too_large": rec(asr={"text": "x" * (1 << 20)}),
}


def run(tmp_path: Path, files: dict[str, bytes], allow_truncated: bool = False
        ) -> tuple[pl.DataFrame, Any, list[dict]]:
    paths = []
    for name, data in files.items():
        p = tmp_path / name
        p.write_bytes(data)
        paths.append(p)
    rejects = tmp_path / "rejects.jsonl"
    frame, report = read_traces(paths, rejects_path=rejects, allow_truncated=allow_truncated)
    rows = [json.loads(x) for x in rejects.read_text().splitlines()]
    assert report.records_read == report.turns_kept + report.rejected
    assert report.rejected == len(rows) == sum(report.rejects_by_rule.values())
    assert frame.height == report.turns_kept
    return frame, report, rows


@pytest.mark.parametrize("rule", sorted(TURN_CASES))
def test_turn_rule(tmp_path: Path, rule: str) -> None:
    _frame, report, rows = run(tmp_path, {"turns.jsonl": lines_with(TURN_CASES[rule])})
    assert report.records_read == 6
    assert report.turns_kept == 5
    [row] = rows
    assert row["rule"] == rule
    assert row["file"] == str(tmp_path / "turns.jsonl")
    assert row["line"] == 3
    assert row["message"]
    if rule != "invalid_utf8":
        expected_raw = TURN_CASES[rule]
        expected_raw = (expected_raw if isinstance(expected_raw, str)
                        else expected_raw.decode())
        if rule in ("too_deep", "too_large"):  # kept in part: the first 2000 characters
            assert row["raw"][:2000] == expected_raw[:2000]
        else:
            assert row["raw"] == expected_raw
    if rule == "duplicate_turn":
        assert "turns.jsonl:1" in row["message"] and "first is kept" in row["message"]


def test_unreadable_truncated_gzip_keeps_lines_before_the_break(tmp_path: Path) -> None:
    body = b"".join(json.dumps(good(i, pad="x" * 200)).encode() + b"\n" for i in range(300))
    data = gzip.compress(body)
    with pytest.raises(TruncatedInput, match=r"truncated gzip.*records read before the break"):
        run(tmp_path, {"t.jsonl.gz": data[: len(data) * 2 // 3]})
    assert not (tmp_path / "rejects.jsonl").exists()  # nothing half-written
    frame, report, rows = run(tmp_path, {"t.jsonl.gz": data[: len(data) * 2 // 3]},
                              allow_truncated=True)
    assert len(report.warnings) == 1 and "lost" in report.warnings[0]
    assert 0 < frame.height < 300
    assert frame.get_column("turn_index").to_list() == list(range(frame.height))
    [row] = rows
    assert row["rule"] == "unreadable"
    assert row["line"] == frame.height + 1
    assert "truncated gzip" in row["message"]


def _event(sid: str, ti: int, stage: str, **data: Any) -> str:
    return json.dumps({"session_id": sid, "turn_index": ti, "stage": stage,
                       "timestamp": "2026-11-20T18:03:12Z", "data": data})


def test_event_rules_name_every_line_involved(tmp_path: Path) -> None:
    a = "\n".join([
        _event("s", 0, "wake", detected=True),      # a:1
        _event("s", 1, "asr", text="hi"),           # a:2  turn 1 has no wake
        _event("s", 2, "wake", detected=True),      # a:3
        json.dumps({"session_id": "s", "turn_index": 9, "stage": "tts", "data": {}}),  # a:4
        _event("s", 0, "asr", text="ok"),           # a:5
    ]) + "\n"
    b = "\n".join([
        _event("s", 1, "nlu", intent="X"),          # b:1
        _event("s", 2, "wake", detected=False),     # b:2  turn 2 has two wake events
    ]) + "\n"
    frame, report, rows = run(tmp_path, {"a.events.jsonl": a.encode(),
                                         "b.events.jsonl": b.encode()})
    fa, fb = str(tmp_path / "a.events.jsonl"), str(tmp_path / "b.events.jsonl")
    assert frame.select("session_id", "turn_index").rows() == [("s", 0)]
    assert frame.row(0, named=True)["asr"]["text"] == "ok"
    by_rule = {r["rule"]: r for r in rows}
    assert set(by_rule) == {"bad_event", "duplicate_event", "event_without_wake"}
    assert (by_rule["bad_event"]["file"], by_rule["bad_event"]["line"]) == (fa, 4)
    assert by_rule["event_without_wake"]["involved"] == [f"{fa}:2", f"{fb}:1"]
    assert by_rule["duplicate_event"]["involved"] == [f"{fa}:3", f"{fb}:2"]
    assert f"{fb}:2" in by_rule["duplicate_event"]["message"]
    assert by_rule["duplicate_event"]["raw"].splitlines() == [a.splitlines()[2],
                                                             b.splitlines()[1]]
    assert by_rule["bad_event"]["raw"] == a.splitlines()[3]
    assert report.records_read == 4  # 3 assembled turns + 1 unusable event line


def test_broken_event_turns_are_set_aside_in_line_order(tmp_path: Path) -> None:
    # Turns are assembled by a group-by, which keeps no order: the rejects must.
    events = [_event("s", i, "asr", text="no wake") for i in range(60)]
    events += [_event("t", 0, "wake", detected=True), _event("t", 0, "asr", confidence="high"),
               _event("u", 0, "wake", detected=True)]
    frame, _, rows = run(tmp_path, {"e.events.jsonl": ("\n".join(events) + "\n").encode()})
    assert frame.height == 1
    assert [r["line"] for r in rows] == list(range(1, 62))
    assert rows[-1]["rule"] == "bad_type" and rows[0]["rule"] == "event_without_wake"


def test_every_rule_has_a_test() -> None:
    covered = set(TURN_CASES) | {"unreadable", "bad_event", "duplicate_event",
                                 "event_without_wake"}
    assert covered == set(RULES)


def test_csv_rows_are_numbered_as_a_spreadsheet_shows_them(tmp_path: Path) -> None:
    csv = ("session_id,turn_index,wake.detected,asr.confidence,asr.nbest\n"
           "s,0,true,0.5,\n"
           's,1,true,0.5,"[{""text"": ""a"", ""confidence"": 0.2}]"\n'
           "s,2,true,abc,\n"
           's,3,true,0.5,"[{""text"": ""a"", ""confidence"": 7}]"\n')
    frame, _, rows = run(tmp_path, {"t.csv": csv.encode()})
    assert frame.get_column("turn_index").to_list() == [0, 1]
    assert frame.row(1, named=True)["asr"]["nbest"] == [{"text": "a", "confidence": 0.2}]
    assert [(r["line"], r["rule"]) for r in rows] == [(4, "bad_type"), (5, "out_of_range")]
    assert "asr.confidence" in rows[0]["message"]
    assert "asr.nbest[].confidence" in rows[1]["message"]


def test_generic_parquet_rows_are_numbered(tmp_path: Path) -> None:
    path = tmp_path / "flat.parquet"
    pl.DataFrame({"session_id": ["s", "s", None], "turn_index": [0, 1, 2],
                  "wake.detected": [True, True, True], "asr.confidence": [0.1, 3.0, 0.2]}
                 ).write_parquet(path)
    rejects = tmp_path / "r.jsonl"
    frame, _report = read_traces(path, rejects_path=rejects)
    rows = [json.loads(x) for x in rejects.read_text().splitlines()]
    assert frame.height == 1 and frame.row(0, named=True)["asr"]["confidence"] == 0.1
    assert [(r["line"], r["rule"]) for r in rows] == [(2, "out_of_range"),
                                                      (3, "missing_session_id")]


def test_label_aliases_are_normalized(tmp_path: Path) -> None:
    # one turn per alias, in one file (one read)
    spellings = sorted(LABEL_ALIASES)
    path = tmp_path / "t.jsonl"
    with path.open("w") as fh:
        for i, spelling in enumerate(spellings):
            odd = (spelling.upper().replace("_", "-") if len(spelling) > 2
                   else f" {spelling.title()} ")
            fh.write(json.dumps(good(i, label={"failure_point": odd,
                                               "failure_point_2": spelling})) + "\n")
    frame, report = read_traces(path)
    assert report.rejected == 0 and frame.height == len(spellings)
    for i, spelling in enumerate(spellings):
        label = frame.row(i, named=True)["label"]
        assert label["failure_point"] == label["failure_point_2"] == LABEL_ALIASES[spelling], \
            spelling


def test_unknown_fields_are_kept_in_extra(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    rec = good(0, user_tier="gold", asr={"text": "x", "model": "7b", "meta": {"gpu": True}},
               ctx={"n": [1, 2], "app": {"build": 7}})
    expected = {"asr.model": "7b", "asr.meta.gpu": True, "user_tier": "gold", "ctx.n": [1, 2],
                "ctx.app.build": 7}
    path.write_text(json.dumps(rec) + "\n")
    frame, report = read_traces(path)
    assert report.rejected == 0
    assert json.loads(frame.item(0, "extra")) == expected
    # the careful (line by line) path keeps them the same way
    path.write_text(json.dumps(rec) + "\n" + "{oops\n")
    frame, report = read_traces(path)
    assert report.rejected == 1
    assert json.loads(frame.item(0, "extra")) == expected


def test_mixed_types_of_an_unknown_field_are_not_an_error(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(good(0, tag="a")) + "\n" + json.dumps(good(1, tag=5)) + "\n")
    frame, report = read_traces(path)
    assert report.rejected == 0
    assert [json.loads(x)["tag"] for x in frame.get_column("extra")] == ["a", 5]


def test_ingest_sorts_and_deduplicates_out_of_order_input(tmp_path: Path) -> None:
    src = tmp_path / "t.jsonl"
    order = [(2, "b"), (0, "b"), (1, "a"), (0, "b"), (0, "a")]
    src.write_text("".join(json.dumps(good(i, s)) + "\n" for i, s in order))
    out = tmp_path / "out" / "turns.parquet"
    report = ingest(src, out, block_bytes=100)
    frame = pl.read_parquet(out)
    assert frame.select("session_id", "turn_index").rows() == [("a", 0), ("a", 1), ("b", 0),
                                                               ("b", 2)]
    assert report.rejects_by_rule == {"duplicate_turn": 1}
    [row] = [json.loads(x) for x in rejects_path_for(out).read_text().splitlines()]
    assert row["line"] == 4 and json.loads(row["raw"])["session_id"] == "b"


def test_strict_raises_after_writing_everything(tmp_path: Path) -> None:
    src = tmp_path / "t.jsonl"
    src.write_bytes(lines_with("{oops"))
    out = tmp_path / "turns.parquet"
    with pytest.raises(StrictRejects) as info:
        ingest(src, out, strict=True)
    assert info.value.exit_code == 3
    assert pl.read_parquet(out).height == 5
    assert rejects_path_for(out).exists()


def test_nothing_good_left_is_an_input_error_and_replaces_nothing(tmp_path: Path) -> None:
    src = tmp_path / "t.jsonl"
    src.write_text("{oops\n[1]\n")
    out = tmp_path / "turns.parquet"
    out.write_text("PAR1 old")
    rejects_path_for(out).write_text('{"old": 1}\n')
    with pytest.raises(InputError, match=r"no valid turns.*invalid_json 1, not_an_object 1"):
        ingest(src, out)
    # a failed run leaves the previous set (output and rejects) as it was
    assert out.read_text() == "PAR1 old"
    assert rejects_path_for(out).read_text() == '{"old": 1}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "t.jsonl", "turns.parquet", "turns.rejects.jsonl"]


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(keys=st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 3)), min_size=1,
                     max_size=30),
       block_bytes=st.sampled_from([1, 150, 400, 1 << 20]), in_order=st.integers(0, 30))
def test_duplicates_first_wins_across_and_within_blocks(tmp_path: Path, keys: list[tuple[str, int]],
                                                        block_bytes: int, in_order: int) -> None:
    # The first keys sorted: ingest hashes no key while they come in order, then
    # must find repeats of them (at the boundary, or later) all the same.
    keys = sorted(keys[:in_order]) + keys[in_order:]
    src = tmp_path / "t.jsonl"
    src.write_text("".join(json.dumps(good(i, s)) + "\n" for s, i in keys))
    rejects = tmp_path / "r.jsonl"
    frame, report = read_traces(src, rejects_path=rejects, block_bytes=block_bytes)
    first: dict[tuple[str, int], int] = {}
    repeats = []
    for line, key in enumerate(keys, start=1):
        if key in first:
            repeats.append((line, first[key]))
        else:
            first[key] = line
    assert frame.select("session_id", "turn_index").rows() == sorted(first)
    rows = [json.loads(x) for x in rejects.read_text().splitlines()]
    assert sorted((r["line"], int(r["message"].split("t.jsonl:")[1].split(";")[0]))
                  for r in rows) == repeats
    assert report.records_read == len(keys)


@pytest.mark.parametrize("bare", [b"null", b"  null ", b"null\nnull"])
def test_bare_null_lines_are_not_objects(tmp_path: Path, bare: bytes) -> None:
    # pyarrow reads such a line as an empty record, and crashes on a block of only those.
    turns = tmp_path / "t.jsonl"
    turns.write_bytes(bare + b"\n" + json.dumps(good(0)).encode() + b"\n")
    events = tmp_path / "e.jsonl"
    events.write_bytes(bare + b"\n" + json.dumps({"session_id": "s", "turn_index": 0,
                                                   "stage": "wake", "data": {}}).encode() + b"\n")
    for path, fmt in ((turns, None), (events, "events")):
        frame, report = read_traces(path, format=fmt)
        assert frame.height == 1
        assert report.rejects_by_rule == {"not_an_object": bare.count(b"null")}
    only = tmp_path / "only.jsonl"
    only.write_bytes(bare + b"\n")
    with pytest.raises(InputError, match="not_an_object"):
        read_traces(only)


@pytest.mark.parametrize("bare", [b"null", b" null\r", b"null\n{}"])
def test_bare_null_line_inside_a_block_is_not_an_object(tmp_path: Path, bare: bytes) -> None:
    # Inside a block pyarrow reads it as a record with every field null, like ``{}``.
    path = tmp_path / "t.jsonl"
    path.write_bytes(json.dumps(good(0)).encode() + b"\n" + bare + b"\n"
                     + json.dumps(good(1)).encode())
    rejects = tmp_path / "r.jsonl"
    frame, report = read_traces(path, rejects_path=rejects)
    assert frame.height == 2
    rows = [json.loads(x) for x in rejects.read_text().splitlines()]
    assert (rows[0]["line"], rows[0]["rule"]) == (2, "not_an_object")
    assert report.records_read == 2 + len(rows)
    # The same in a stage-events file.
    events = tmp_path / "e.jsonl"
    event = {"session_id": "s", "turn_index": 0, "stage": "wake", "data": {"detected": True}}
    events.write_bytes(json.dumps(event).encode() + b"\n" + bare + b"\n"
                       + json.dumps({**event, "turn_index": 1}).encode())
    frame, report = read_traces(events, format="events", rejects_path=rejects)
    assert frame.height == 2
    rows = [json.loads(x) for x in rejects.read_text().splitlines()]
    assert (rows[0]["line"], rows[0]["rule"]) == (2, "not_an_object")


def test_unknown_field_polars_cannot_take_from_arrow_is_still_kept(tmp_path: Path) -> None:
    # pyarrow infers list<null> for [null, null]; Polars refuses that Arrow array.
    turns = tmp_path / "t.jsonl"
    turns.write_text(json.dumps(good(0, tags=[None, None])) + "\n")
    events = tmp_path / "e.jsonl"
    events.write_text(json.dumps({"session_id": "s", "turn_index": 0, "stage": "wake",
                                  "data": {"x": [None]}, "tags": [None, None]}) + "\n")
    frame, report = read_traces(turns)
    assert report.rejected == 0 and json.loads(frame.item(0, "extra")) == {"tags": [None, None]}
    frame, report = read_traces(events, format="events")
    assert report.rejected == 0
    assert json.loads(frame.item(0, "extra")) == {"wake.x": [None], "tags": [None, None]}


def test_tab_separated_csv(tmp_path: Path) -> None:
    path = tmp_path / "export.tsv"
    path.write_text("session_id\tturn_index\twake.detected\tasr.text\ns\t0\ttrue\thello, world\n")
    frame, report = read_traces(path)
    assert report.formats[str(path)] == "csv"
    assert frame.row(0, named=True)["asr"]["text"] == "hello, world"


@pytest.mark.parametrize("with_bad_line", [False, True])
def test_unknown_keys_inside_list_items_are_dropped_not_rejected(tmp_path: Path,
                                                                 with_bad_line: bool) -> None:
    # The careful (line by line) path must treat them as the fast path does.
    nbest = [{"text": "x", "confidence": 0.5, "rank": 1}]
    turns = tmp_path / "t.jsonl"
    turns.write_text(json.dumps(good(0, asr={"nbest": nbest})) + "\n"
                     + ("{oops\n" if with_bad_line else ""))
    events = tmp_path / "e.jsonl"
    events.write_text(json.dumps({"session_id": "s", "turn_index": 0, "stage": "wake",
                                  "data": {}}) + "\n"
                      + json.dumps({"session_id": "s", "turn_index": 0, "stage": "asr",
                                    "data": {"nbest": nbest}}) + "\n"
                      + ("{oops\n" if with_bad_line else ""))
    for path, fmt in ((turns, None), (events, "events")):
        frame, report = read_traces(path, format=fmt)
        assert report.rejects_by_rule == ({"invalid_json": 1} if with_bad_line else {})
        assert frame.row(0, named=True)["asr"]["nbest"] == [{"text": "x", "confidence": 0.5}]
