"""Metrics, ``fpi evaluate`` / ``fpi train`` through the CLI, and their error messages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from tiny_turns import make_turns
from typer.testing import CliRunner

from fpi.cli import app
from fpi.errors import InputError
from fpi.evaluate import evaluate
from fpi.metrics import (
    classification_metrics,
    confusion_matrix,
    expected_calibration_error,
    human_agreement,
    macro_f1_score,
)
from fpi.model import load_bundle
from fpi.model.manifest import bundle_hash
from fpi.schema import CLASSES

runner = CliRunner()


@pytest.fixture(scope="module")
def data(small_bundle, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A model to evaluate: the session's (conftest.py; few rounds, so its compiled
    predictor builds quickly), and labelled turns to evaluate it on. (What `fpi train
    --json` prints is checked, in process, by
    tests/test_crossfit.py::test_cli_test_size_zero_and_a_refused_init_model.)"""
    root = tmp_path_factory.mktemp("cli")
    make_turns(40, seed=9).write_parquet(root / "test.parquet")
    return {"root": root, "model": small_bundle.path, "test": root / "test.parquet"}


# ---------------------------------------------------------------------------
# Metric primitives
# ---------------------------------------------------------------------------


def test_confusion_and_macro_f1_by_hand() -> None:
    y = np.array([0, 0, 1, 1, 2])
    p = np.array([0, 1, 1, 1, 0])
    conf = confusion_matrix(y, p, 3)
    assert conf.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    # F1: class0 2*1/(2+2)=0.5, class1 2*2/(2+3)=0.8, class2 0
    assert macro_f1_score(y, p, 3) == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_per_class_has_all_six_even_when_absent() -> None:
    m = classification_metrics(np.array([0, 0, 2]), np.array([0, 2, 2]))
    assert list(m["per_class"]) == list(CLASSES)
    assert m["per_class"]["result"] == {"precision": None, "recall": None, "f1": None,
                                        "support": 0}
    assert m["macro_f1"] == pytest.approx((2 / 3 + 2 / 3) / 2)


def test_ece_zero_when_confident_and_right() -> None:
    y = np.array([0, 1, 2])
    assert expected_calibration_error(np.eye(6)[y], y) == 0.0
    assert expected_calibration_error(np.eye(6)[[1, 2, 0]], y) == pytest.approx(1.0)


def test_human_agreement_percentages() -> None:
    gold = np.array([0, 0, 1, 1])
    second = np.array([0, 1, 1, 1])
    h = human_agreement(gold, second, {c: {"f1": 0.5} for c in CLASSES})
    assert h is not None and h["n_turns"] == 4
    assert h["per_class"]["correct"]["f1"] == pytest.approx(2 / 3, abs=1e-6)
    assert h["per_class"]["correct"]["model_pct_of_human"] == pytest.approx(75.0)
    assert human_agreement(gold, np.full(4, -1)) is None


# ---------------------------------------------------------------------------
# Library evaluate
# ---------------------------------------------------------------------------


def test_evaluate_keys_and_baselines(data: dict[str, Path]) -> None:
    turns = pl.read_parquet(data["test"])
    doc = evaluate(turns, load_bundle(data["model"])).to_dict()
    for key in ("macro_f1", "accuracy", "per_class", "confusion", "calibration_error",
                "baselines", "human"):
        assert key in doc, key
    assert set(doc["per_class"]) == set(CLASSES)
    for c in CLASSES:
        assert set(doc["per_class"][c]) == {"precision", "recall", "f1", "support"}
    assert set(doc["baselines"]) == {"rules", "no_context"}
    assert set(doc["human"]["per_class"]["asr"]) >= {"f1", "model_f1", "model_pct_of_human"}
    assert sum(doc["per_class"][c]["support"] for c in CLASSES) == turns.height


def test_evaluate_without_labels_is_an_input_error(data: dict[str, Path]) -> None:
    with pytest.raises(InputError, match="label"):
        evaluate(make_turns(5, labels=False), load_bundle(data["model"]))


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------


def test_evaluate_cli_json(data: dict[str, Path]) -> None:
    result = runner.invoke(app, ["evaluate", str(data["test"]), "--model", str(data["model"]),
                                 "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["macro_f1"] > 0.9 and doc["accuracy"] > 0.9
    assert doc["human"]["per_class"]["nlu"]["f1"] is not None


def test_evaluate_cli_tables(data: dict[str, Path]) -> None:
    result = runner.invoke(app, ["evaluate", str(data["test"]), "--model", str(data["model"])])
    assert result.exit_code == 0, result.output
    for word in ("false_wake", "macro", "rules", "no-context", "% of human", "confusion"):
        assert word in result.stdout, word


def _one_error_line(result: object) -> str:
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]  # type: ignore[attr-defined]
    assert lines and lines[-1].startswith("error:"), lines
    assert "Traceback" not in result.output  # type: ignore[attr-defined]
    return lines[-1]


def test_cli_no_labels(tmp_path: Path, data: dict[str, Path]) -> None:
    make_turns(10, labels=False).write_ndjson(tmp_path / "u.jsonl")
    for args in (["train", str(tmp_path / "u.jsonl"), "--out", str(tmp_path / "m")],
                 ["evaluate", str(tmp_path / "u.jsonl"), "--model", str(data["model"])]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2
        assert "has a label.failure_point" in _one_error_line(result)


def test_cli_too_few_of_a_class(tmp_path: Path) -> None:
    turns = make_turns(60)
    keep = (pl.col("label").struct.field("failure_point") != "false_wake") | (
        pl.int_range(pl.len()) < 0)
    turns.filter(keep).write_ndjson(tmp_path / "t.jsonl")
    result = runner.invoke(app, ["train", str(tmp_path / "t.jsonl"), "--out", str(tmp_path / "m")])
    assert result.exit_code == 2
    assert "'false_wake' has 0" in _one_error_line(result)
    assert not (tmp_path / "m").exists()


def test_cli_labels_outside_the_classes_are_rejected(tmp_path: Path) -> None:
    lines = (make_turns(4).write_ndjson() or "").splitlines()
    bad = [json.loads(ln) for ln in lines]
    for rec in bad:
        rec["label"]["failure_point"] = "banana"
    (tmp_path / "bad.jsonl").write_text("\n".join(json.dumps(r) for r in bad) + "\n")
    result = runner.invoke(app, ["train", str(tmp_path / "bad.jsonl"), "--out",
                                 str(tmp_path / "m")])
    assert result.exit_code == 2
    _one_error_line(result)
    assert not (tmp_path / "m").exists()


def test_cli_bad_split_and_missing_model(tmp_path: Path, data: dict[str, Path]) -> None:
    result = runner.invoke(app, ["train", str(data["test"]), "--out", str(tmp_path / "m"),
                                 "--split", "random"])
    assert result.exit_code == 2
    assert "--split" in _one_error_line(result)
    result = runner.invoke(app, ["evaluate", str(data["test"]), "--model", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "no model bundle" in _one_error_line(result)


def test_cli_bundle_not_matching(tmp_path: Path, data: dict[str, Path]) -> None:
    import shutil

    target = tmp_path / "m"
    shutil.copytree(data["model"], target)
    m = json.loads((target / "manifest.json").read_text())
    m["features"][3]["name"] = "feature_from_the_future"
    m["bundle_hash"] = bundle_hash(m)  # a consistent bundle from a future fpi
    (target / "manifest.json").write_text(json.dumps(m))
    result = runner.invoke(app, ["evaluate", str(data["test"]), "--model", str(target)])
    assert result.exit_code == 2
    assert "feature_from_the_future" in _one_error_line(result)
