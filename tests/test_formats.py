"""Writers of every input form: round trips through fpi.ingest, and the written text itself."""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import json

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from fpi.errors import InputError
from fpi.ingest import read_traces
from fpi.schema import TURN_SCHEMA
from fpi.simulate import simulate, simulate_frame
from fpi.writers import WRITE_FORMATS, TurnWriter, infer_format, write_turns

SUFFIX = {
    "jsonl": "t.jsonl",
    "jsonl.gz": "t.jsonl.gz",
    "jsonl.zst": "t.jsonl.zst",
    "parquet": "t.parquet",
    "csv": "t.csv",
    "events": "t.events.jsonl",
}


@pytest.fixture(scope="module")
def frame() -> pl.DataFrame:
    # one batch of sessions for 600 turns (a default batch simulates 20,000 turns' worth,
    # however few it keeps)
    return simulate_frame(600, seed=12, batch_size=660)


@pytest.mark.parametrize("fmt", WRITE_FORMATS)
def test_round_trip_through_ingest(frame: pl.DataFrame, fmt: str, tmp_path) -> None:
    path = write_turns(frame, tmp_path / SUFFIX[fmt], format=fmt)
    back, report = read_traces(path)
    assert report.rejected == 0, report.rejects[:3]
    assert report.formats[str(path)] == fmt.split(".")[0]
    assert_frame_equal(back, frame)


def test_gzipped_events_round_trip(frame: pl.DataFrame, tmp_path) -> None:
    path = write_turns(frame, tmp_path / "e.events.jsonl.gz")
    assert infer_format(path) == "events"
    with gzip.open(path, "rt") as fh:
        assert json.loads(fh.readline())["stage"] == "device"
    back, _ = read_traces(path)
    assert_frame_equal(back, frame)


def test_jsonl_text(frame: pl.DataFrame, tmp_path) -> None:
    path = write_turns(frame, tmp_path / "t.jsonl")
    lines = path.read_text().splitlines()
    assert len(lines) == frame.height
    first = json.loads(lines[0])
    assert first["timestamp"].endswith("Z")
    assert dt.datetime.fromisoformat(first["timestamp"]) == frame["timestamp"][0]
    # extra fields go back where they came from, not into an "extra" key
    extra = json.loads(frame["extra"].drop_nulls()[0])
    row = json.loads(lines[frame["extra"].is_not_null().arg_max()])
    assert "extra" not in row
    for key, value in extra.items():
        node = row
        for part in key.split("."):
            node = node[part]
        assert node == value


def test_events_text(frame: pl.DataFrame, tmp_path) -> None:
    path = write_turns(frame, tmp_path / "t.events.jsonl")
    events = [json.loads(line) for line in path.read_text().splitlines()]
    present = sum(frame[c].is_not_null().sum() for c in
                  ("device", "wake", "asr", "nlu", "er", "result", "feedback", "label"))
    assert len(events) == present
    assert {e["stage"] for e in events} == {"device", "wake", "asr", "nlu", "er", "result",
                                            "feedback", "label"}
    assert set(events[0]) == {"session_id", "turn_index", "stage", "timestamp", "data"}
    # within a turn, stage times follow the pipeline
    turn = [e for e in events if (e["session_id"], e["turn_index"]) ==
            (events[0]["session_id"], events[0]["turn_index"])]
    times = {e["stage"]: e["timestamp"] for e in turn}
    assert times["wake"] <= times["asr"] <= times["nlu"] <= times["result"]


def test_csv_text(frame: pl.DataFrame, tmp_path) -> None:
    path = write_turns(frame, tmp_path / "t.csv")
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == frame.height
    assert {"asr.confidence", "asr.nbest", "nlu.alternatives", "er.entities",
            "label.failure_point", "asr.model_version", "client.network"} <= set(rows[0])
    nbest = json.loads(rows[0]["asr.nbest"])
    assert nbest[0]["text"] == rows[0]["asr.text"]
    assert "extra" not in rows[0]


def test_streaming_equals_whole(tmp_path) -> None:
    batches = list(simulate(800, seed=3, batch_size=200))
    assert len(batches) > 2
    for fmt in ("jsonl", "csv", "events", "jsonl.gz"):
        streamed = tmp_path / f"s.{SUFFIX[fmt]}"
        whole = tmp_path / f"w.{SUFFIX[fmt]}"
        with TurnWriter(streamed) as w:
            for b in batches:
                w.write(b)
        write_turns(pl.concat(batches), whole)
        assert streamed.read_bytes() == whole.read_bytes(), fmt


def test_parquet_streaming_round_trip(tmp_path) -> None:
    batches = list(simulate(800, seed=4, batch_size=200))
    with TurnWriter(tmp_path / "p.parquet") as w:
        for b in batches:
            w.write(b)
    assert_frame_equal(pl.read_parquet(tmp_path / "p.parquet"), pl.concat(batches))


def test_writes_are_atomic(frame: pl.DataFrame, tmp_path) -> None:
    target = tmp_path / "a.jsonl"
    target.write_text("old\n")
    with pytest.raises(RuntimeError), TurnWriter(target) as w:
        w.write(frame.head(10))
        raise RuntimeError("boom")
    assert target.read_text() == "old\n"
    assert list(tmp_path.iterdir()) == [target]


@pytest.mark.parametrize(
    ("name", "fmt"),
    [("a.jsonl", "jsonl"), ("a.ndjson", "jsonl"), ("a.jsonl.gz", "jsonl.gz"),
     ("a.jsonl.zst", "jsonl.zst"), ("a.parquet", "parquet"), ("a.csv", "csv"),
     ("night.events.jsonl", "events"), ("night.events.jsonl.gz", "events")],
)
def test_infer_format(name: str, fmt: str) -> None:
    assert infer_format(name) == fmt


def test_unknown_suffix_is_an_input_error(tmp_path) -> None:
    with pytest.raises(InputError, match="cannot tell the format"):
        write_turns(pl.DataFrame(schema=TURN_SCHEMA), tmp_path / "a.xml")
    with pytest.raises(InputError, match="unknown format"):
        write_turns(pl.DataFrame(schema=TURN_SCHEMA), tmp_path / "a.jsonl", format="xml")


# ---------------------------------------------------------------------------
# Property: any canonical frame survives every writer and ingest
# ---------------------------------------------------------------------------

_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=12
)
_unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
_ms = st.floats(min_value=0.0, max_value=1e6, allow_nan=False)
_ts = st.datetimes(
    min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2100, 1, 1),
    timezones=st.just(dt.UTC),
)


def _opt(strategy: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(st.none(), strategy)


# Each block's strategy is built once: a strategy built inside a draw (a fresh one for
# every turn) cost about five times the drawing itself.
_BLOCKS: dict[str, st.SearchStrategy] = {
    "device": _opt(st.fixed_dictionaries(
        {"type": _text, "has_screen": st.booleans(), "locale": _text,
         "app_version": _opt(_text)})),
    "wake": st.fixed_dictionaries({"detected": st.booleans(), "score": _opt(_unit),
                                   "device_directed_score": _unit}),
    "asr": _opt(st.fixed_dictionaries(
        {"text": _text, "confidence": _unit,
         "nbest": st.lists(st.fixed_dictionaries({"text": _text, "confidence": _unit}),
                           max_size=3),
         "audio_ms": _ms, "latency_ms": _opt(_ms)})),
    "nlu": st.none(),
    "er": _opt(st.fixed_dictionaries({
        "entities": st.lists(st.fixed_dictionaries(
            {"slot": _text, "mention": _text, "resolved_id": _opt(_text),
             "resolved_name": _opt(_text), "score": _unit,
             "status": st.sampled_from(["resolved", "unresolved", "ambiguous"])}),
            min_size=1, max_size=2),
        "latency_ms": _ms})),
    "result": _opt(st.fixed_dictionaries(
        {"status": st.sampled_from(["success", "error", "no_action", "clarification"]),
         "action": _opt(_text), "response_text": _text, "latency_ms": _ms})),
    "feedback": _opt(st.fixed_dictionaries(
        {"barge_in": st.booleans(),
         "explicit": _opt(st.sampled_from(["positive", "negative"]))})),
    "label": _opt(st.fixed_dictionaries(
        {"failure_point": st.sampled_from(["correct", "asr", "er"]), "annotator": _text,
         "failure_point_2": _opt(st.sampled_from(["nlu", "result"]))})),
}
_SESSIONS = st.sampled_from(["s-1", "s-2", "s é,\"3"])
_TIMESTAMPS = _opt(_ts)
_EXTRA = _opt(st.dictionaries(
    st.sampled_from(["asr.model_version", "client.network", "user_tier"]),
    st.one_of(_text, st.integers(-5, 5), st.booleans()), min_size=1))


def _turn(draw: st.DrawFn, i: int) -> dict:
    turn = {"schema_version": 1, "session_id": draw(_SESSIONS), "turn_index": i,
            "timestamp": draw(_TIMESTAMPS)}
    turn.update({name: draw(strategy) for name, strategy in _BLOCKS.items()})
    extra = draw(_EXTRA)
    return {**turn, "extra": None if extra is None else json.dumps(extra, sort_keys=True)}


@st.composite
def _frames(draw: st.DrawFn) -> pl.DataFrame:
    n = draw(st.integers(1, 8))
    rows = [_turn(draw, i) for i in range(n)]
    return pl.DataFrame(rows, schema=TURN_SCHEMA).sort("session_id", "turn_index")


def _normalised_extra(frame: pl.DataFrame, *, as_text: bool = False) -> pl.DataFrame:
    """Extra as parsed JSON objects (key order is not part of the contract).

    CSV cells are text, so unknown CSV columns come back as strings (``as_text``).
    """

    def norm(s: str) -> str:
        obj = json.loads(s)
        if as_text:
            obj = {k: v if isinstance(v, str) else json.dumps(v) for k, v in obj.items()}
        return json.dumps(obj, sort_keys=True)

    return frame.with_columns(pl.col("extra").map_elements(norm, return_dtype=pl.String))


# Each example goes through every writer (one frame drawn, four round trips), and holds up
# to 8 turns: reading a file costs about the same for 1 turn as for 8 (0.02-0.2 CPU-s per
# read_traces call), so 15 examples of 1-8 turns try as many turns per form as 25 of 1-5.
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(frame=_frames())
def test_any_frame_round_trips(frame: pl.DataFrame, tmp_path) -> None:
    for fmt in ("jsonl", "csv", "events", "parquet"):
        path = write_turns(frame, tmp_path / SUFFIX[fmt])
        back, report = read_traces(path)
        assert report.rejected == 0, (fmt, report.rejects_by_rule)
        text = fmt == "csv"
        try:
            assert_frame_equal(_normalised_extra(back, as_text=text),
                               _normalised_extra(frame, as_text=text))
        except AssertionError as exc:
            raise AssertionError(f"{fmt}: {exc}") from exc
