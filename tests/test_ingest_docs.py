"""docs/traces.md stays true: its examples ingest cleanly, its tables match fpi.schema."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fpi.ingest import read_traces
from fpi.ingest.problems import RULES
from fpi.schema import LABEL_ALIASES

DOC = Path(__file__).resolve().parents[1] / "docs" / "traces.md"
TEXT = DOC.read_text(encoding="utf-8")
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", TEXT, flags=re.S)


def blocks(lang: str) -> list[str]:
    return [body for kind, body in BLOCKS if kind == lang]


@pytest.mark.parametrize("index", range(len(blocks("jsonl"))))
def test_jsonl_examples_ingest_cleanly(tmp_path: Path, index: int) -> None:
    path = tmp_path / "example.jsonl"
    path.write_text(blocks("jsonl")[index])
    frame, report = read_traces(path)
    assert report.rejected == 0, report.rejects
    assert frame.height >= 2


def test_csv_example_ingests_cleanly(tmp_path: Path) -> None:
    [body] = blocks("csv")
    path = tmp_path / "example.csv"
    path.write_text(body)
    frame, report = read_traces(path)
    assert report.rejected == 0, report.rejects
    assert frame.get_column("label").struct.field("failure_point").to_list() == ["asr",
                                                                                 "false_wake"]


def test_pretty_turn_equals_the_first_jsonl_line(tmp_path: Path) -> None:
    pretty = json.loads(blocks("json")[0])
    first = json.loads(blocks("jsonl")[0].splitlines()[0])
    assert pretty == first


def test_events_example_assembles_the_same_turns_as_the_turn_records(tmp_path: Path) -> None:
    turns_file, events_file = tmp_path / "t.jsonl", tmp_path / "e.jsonl"
    turns_file.write_text("\n".join(blocks("jsonl")[0].splitlines()[:2]) + "\n")
    events_file.write_text(blocks("jsonl")[1])
    from_turns, _ = read_traces(turns_file)
    from_events, _ = read_traces(events_file)
    assert from_events.select("session_id", "turn_index", "timestamp", "wake", "asr",
                              "result").equals(
        from_turns.select("session_id", "turn_index", "timestamp", "wake", "asr", "result"))


def test_python_parquet_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code = next(b for b in blocks("python") if "write_parquet" in b)
    exec(compile(code, str(DOC), "exec"), {})
    frame, report = read_traces(tmp_path / "turns.parquet")
    assert report.rejected == 0 and frame.height == 2


def test_rule_and_alias_tables_match_the_schema() -> None:
    documented = set(re.findall(r"^\| `(\w+)` \|", TEXT, flags=re.M))
    assert set(RULES) <= documented
    for alias in LABEL_ALIASES:
        assert f"`{alias}`" in TEXT, alias
