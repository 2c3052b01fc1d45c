"""Reading labels back: generic CSV/JSONL and Label Studio exports, keys, rejects, policies."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fpi.errors import InputError
from fpi.labels.importer import LABELS_SCHEMA, import_labels, read_labels
from fpi.labels.resolve import LabelPolicy, apply_labels, resolve_labels
from fpi.schema import CLASSES

ALIASES = {"correct": ["correct", "OK", " none "], "false_wake": ["false-wake", "False Wake"],
           "asr": ["asr", "ASR"], "nlu": ["nlu"], "er": ["er", "entity"], "result": ["result"]}

keys = st.tuples(st.sampled_from(["s1", "s2", "sess 3", "é4"]), st.integers(0, 3),
                 st.sampled_from(["ann", "bob", "c@x.org"]))
rows = st.lists(st.tuples(keys, st.sampled_from(CLASSES), st.integers(0, 5)), max_size=30)


def _spelling(cls: str, k: int) -> str:
    return ALIASES[cls][k % len(ALIASES[cls])]


def _write(path: Path, records: list[dict[str, object]]) -> Path:
    if path.suffix == ".csv":
        with path.open("w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=["session_id", "turn_index", "annotator",
                                               "failure_point", "failure_point_2"])
            w.writeheader()
            w.writerows(records)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _expected(data: list) -> tuple[dict, set]:
    seen: dict[tuple, set[str]] = {}
    for key, cls, _ in data:
        seen.setdefault(key, set()).add(cls)
    good = {k: next(iter(v)) for k, v in seen.items() if len(v) == 1}
    return good, {k for k, v in seen.items() if len(v) > 1}


@settings(max_examples=40, deadline=None)
@given(data=rows, suffix=st.sampled_from([".csv", ".jsonl"]))
def test_generic_files_keep_one_label_per_key_and_reject_conflicts(tmp_path_factory, data,
                                                                   suffix) -> None:
    path = tmp_path_factory.mktemp("g") / f"labels{suffix}"
    _write(path, [{"session_id": s, "turn_index": t, "annotator": a,
                   "failure_point": _spelling(c, k), "failure_point_2": c}
                  for (s, t, a), c, k in data])
    result = read_labels([path])
    good, conflicting = _expected(data)
    got = {(r["session_id"], r["turn_index"], r["annotator"]): r["failure_point"]
           for r in result.labels.iter_rows(named=True)}
    assert got == good
    assert result.labels.schema == LABELS_SCHEMA
    n_conflict_rows = sum(1 for key, _, _ in data if key in conflicting)
    assert result.rejects_by_rule.get("conflicting_duplicate", 0) == n_conflict_rows
    assert result.rows_read == len(data)
    assert result.labels.height + len(result.rejects) + result.duplicates_merged == len(data)
    # failure_point_2-style extras are kept aside, not lost
    assert all(json.loads(e)["failure_point_2"] in CLASSES for e in result.labels["extra"])


def _ls_task(i: int, session: str, turn: int, anns: list[tuple[object, str | None]]) -> dict:
    return {"id": i, "data": {"session_id": session, "turn_index": turn, "context": "x"},
            "annotations": [
                {"id": 100 * i + j, "completed_by": who, "was_cancelled": False,
                 "result": [] if label is None else [
                     {"id": "r", "from_name": "failure_point", "to_name": "turn",
                      "type": "choices", "value": {"choices": [label]}}]}
                for j, (who, label) in enumerate(anns)],
            "predictions": []}


def test_label_studio_export(tmp_path: Path) -> None:
    tasks = [_ls_task(1, "s1", 0, [(7, "asr"), ({"id": 8, "email": "b@x.org"}, "nlu")]),
             _ls_task(2, "s1", 1, [(7, None)]),
             _ls_task(3, "s2", 0, [(7, "bogus")])]
    tasks[0]["annotations"].append({"id": 9, "completed_by": 9, "was_cancelled": True,
                                    "result": []})
    path = tmp_path / "export.json"
    path.write_text(json.dumps(tasks), encoding="utf-8")
    result = read_labels([path])
    assert result.labels.select("annotator", "failure_point").rows() == [("7", "asr"),
                                                                         ("b@x.org", "nlu")]
    assert result.rejects_by_rule == {"missing_label": 1, "unknown_class": 1}
    assert {r.line for r in result.rejects} == {2, 3}  # the task's position in the export
    assert json.loads(result.labels["extra"][0])["ls_task_id"] == 1


def test_rejects_missing_keys_and_bad_turn_index(tmp_path: Path) -> None:
    path = _write(tmp_path / "l.jsonl", [
        {"session_id": "", "turn_index": 0, "annotator": "a", "failure_point": "asr"},
        {"session_id": "s", "turn_index": -1, "annotator": "a", "failure_point": "asr"},
        {"session_id": "s", "turn_index": "2x", "annotator": "a", "failure_point": "asr"},
        {"session_id": "s", "turn_index": 1, "failure_point": "asr"},
        {"session_id": "s", "turn_index": 1, "annotator": "a", "failure_point": "er"}])
    path.write_text(path.read_text() + "{oops\n[1]\n", encoding="utf-8")
    result = read_labels([path])
    assert result.labels.height == 1
    assert result.rejects_by_rule == {"missing_key": 2, "bad_turn_index": 2,
                                      "invalid_json": 1, "not_an_object": 1}
    assert sorted(r.line for r in result.rejects) == [1, 2, 3, 4, 6, 7]


def test_unknown_turns_are_rejected_and_output_is_atomic(tmp_path: Path, night) -> None:
    sid = night["session_id"][0]
    path = _write(tmp_path / "l.csv", [
        {"session_id": sid, "turn_index": 0, "annotator": "a", "failure_point": "asr"},
        {"session_id": "nope", "turn_index": 0, "annotator": "a", "failure_point": "asr"}])
    out = tmp_path / "labels.parquet"
    result = import_labels([path], out, turns=night)
    assert result.rejects_by_rule == {"unknown_turn": 1}
    assert pl.read_parquet(out).height == 1
    rejects = [json.loads(x) for x in (tmp_path / "labels.rejects.jsonl").read_text().splitlines()]
    assert rejects[0]["rule"] == "unknown_turn" and rejects[0]["line"] == 3
    # nothing usable: an error, and the previous output is untouched
    bad = _write(tmp_path / "bad.csv", [{"session_id": "x", "turn_index": 0, "annotator": "a",
                                         "failure_point": "??"}])
    with pytest.raises(InputError, match="no usable label"):
        import_labels([bad], out)
    assert pl.read_parquet(out).height == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_csv_without_a_required_column_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "l.csv"
    path.write_text("session_id,turn_index,label\ns,0,asr\n", encoding="utf-8")
    with pytest.raises(InputError, match="annotator, failure_point"):
        read_labels([path])


def _labels(rows: list[tuple[str, int, str, str]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=["session_id", "turn_index", "annotator", "failure_point"],
                        orient="row")


def test_policies() -> None:
    labels = _labels([("s", 0, "a", "asr"), ("s", 0, "b", "asr"), ("s", 0, "c", "nlu"),
                      ("s", 1, "a", "er"), ("s", 1, "b", "nlu"),
                      ("s", 2, "b", "result")])
    maj = resolve_labels(labels, "majority")
    assert maj.select("turn_index", "failure_point").rows() == [(0, "asr"), (2, "result")]
    assert maj["failure_point_2"].null_count() == maj.height  # voters are not a second opinion
    una = resolve_labels(labels, "unanimous")
    assert una.select("turn_index", "failure_point").rows() == [(2, "result")]
    gold = resolve_labels(labels, LabelPolicy.parse("gold:a"))
    assert gold.select("turn_index", "failure_point", "failure_point_2").rows() == [
        (0, "asr", "asr"), (1, "er", "nlu")]
    with pytest.raises(InputError, match="gold annotator 'z'"):
        resolve_labels(labels, "gold:z")
    with pytest.raises(InputError, match="--label-policy"):
        LabelPolicy.parse("mode")


@settings(max_examples=30, deadline=None)
@given(votes=st.lists(st.sampled_from(CLASSES[:3]), min_size=1, max_size=5))
def test_majority_is_the_unique_mode(votes: list[str]) -> None:
    labels = _labels([("s", 0, f"a{i}", v) for i, v in enumerate(votes)])
    counts = {c: votes.count(c) for c in set(votes)}
    top = max(counts.values())
    modes = [c for c, n in counts.items() if n == top]
    got = resolve_labels(labels, "majority")["failure_point"].to_list()
    assert got == (modes if len(modes) == 1 else [])


def test_apply_labels_replaces_the_logged_labels(night) -> None:
    first = night.head(3).select("session_id", "turn_index")
    labels = first.with_columns(pl.lit("x").alias("annotator"),
                                pl.lit("result").alias("failure_point"))
    out = apply_labels(night, labels, "majority")
    assert out.schema == night.schema and out.height == night.height
    fp = out["label"].struct.field("failure_point")
    assert fp.head(3).to_list() == ["result"] * 3
    assert fp.null_count() == night.height - 3
    with pytest.raises(InputError, match="matches a turn"):
        apply_labels(night, labels.with_columns(pl.lit("zz").alias("session_id")))
