"""summary.json has a published JSON Schema (docs/summary.schema.json) that every summary
follows: the committed example reports, and (through the conftest fixture) every summary a
test's diagnose run writes."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import jsonschema
import pytest
from tiny_turns import make_turns

from fpi.diagnose import DiagnoseOptions, diagnose
from fpi.diagnose.summary import Summary, _plain

ROOT = Path(__file__).parent.parent
SUMMARY_SCHEMA = ROOT / "docs" / "summary.schema.json"
COMMITTED = sorted((ROOT / "reports").glob("*/summary.json"))


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SUMMARY_SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("path", COMMITTED, ids=[p.parent.name for p in COMMITTED])
def test_committed_reports_follow_the_schema(path: Path, validator) -> None:
    validator.validate(json.loads(path.read_text()))


def test_there_are_committed_reports_to_check() -> None:
    assert {p.parent.name for p in COMMITTED} >= {"baseline", "nightly"}


def test_the_schema_refuses_a_broken_summary(validator) -> None:
    doc = json.loads(COMMITTED[0].read_text())
    for mutate in (lambda d: d.pop("rates"), lambda d: d["rates"].pop("asr"),
                   lambda d: d.update(gate_status="maybe"), lambda d: d.update(extra=1),
                   lambda d: d["failure"].update(estimate="high")):
        broken = copy.deepcopy(doc)
        mutate(broken)
        assert not validator.is_valid(broken)


def test_a_run_with_baseline_labels_and_redaction_follows_the_schema(
        small_bundle, tmp_path: Path, validator, monkeypatch: pytest.MonkeyPatch) -> None:
    """... and each document the runs build from a Summary is ``dataclasses.asdict``'s,
    made without its deep copies, and as independent of the Summary."""
    built = []
    real = Summary.to_dict

    def to_dict(summary: Summary) -> dict:
        doc, expected = _plain(summary), dataclasses.asdict(summary)
        assert doc == expected
        doc["rates"]["asr"]["changed"] = doc["slices"]["changed"] = doc["inputs"][:] = []
        assert dataclasses.asdict(summary) == expected
        built.append(summary)
        return real(summary)

    monkeypatch.setattr(Summary, "to_dict", to_dict)
    night = tmp_path / "night.parquet"
    make_turns(120, seed=3).write_parquet(night)
    opts = DiagnoseOptions(attribution="all", n_boot=20, min_support=10)
    first = diagnose([night], model=small_bundle.path, out_dir=tmp_path / "a", options=opts)
    second = diagnose([night], model=small_bundle.path, out_dir=tmp_path / "b", options=opts,
                      baseline=first.summary, gates=["failure.estimate < 0.99"],
                      redact=True, redact_salt="s")
    for result in (first, second):
        written = json.loads((result.out_dir / "summary.json").read_text())
        validator.validate(written)
        assert written == json.loads(json.dumps(result.summary))
    assert second.summary["baseline"]["same_model"] is True
    assert "drift" in second.summary and "drift" not in first.summary
    assert first.summary["labels"] is not None  # the simulated turns carry labels
    assert len(built) >= 10


def test_summary_fields_are_the_document_keys() -> None:
    fields = list(Summary.__dataclass_fields__)
    assert set(fields) == set(json.loads(SUMMARY_SCHEMA.read_text())["properties"])
