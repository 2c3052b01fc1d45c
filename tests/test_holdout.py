"""The holdout protocol for large data (issue 12), tried on small data via low thresholds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from fpi.errors import InputError
from fpi.model import TrainResult, train
from fpi.model.crossfit import HOLDOUT_MIN, assign_folds, default_protocol
from fpi.model.learned import hashed_ngrams, hashed_texts
from fpi.simulate import simulate_frame, write_simulation

#: Twenty rounds (the tests read the rows, counts and protocol, and that the model learns:
#: validation macro-F1 about 0.79 on the 600-turn night).
FAST = {"num_boost_round": 20, "early_stopping_rounds": 5, "search": False}


@pytest.fixture(scope="module")
def night() -> pl.DataFrame:
    # one batch of sessions (a default batch simulates 20,000 turns' worth); about 480 fit
    # rows, more than the caps below
    return simulate_frame(600, seed=11, batch_size=660)


@pytest.fixture(scope="module")
def holdout_model(night: pl.DataFrame, tmp_path_factory: pytest.TempPathFactory
                  ) -> TrainResult:
    # 600 labelled turns >= holdout_min: "auto" picks the holdout protocol
    return train(night, tmp_path_factory.mktemp("ho") / "m", seed=0, threads=1,
                 holdout_min=500, no_context_max_turns=300, holdout_refit=True, **FAST)


def test_default_protocol_by_size() -> None:
    assert default_protocol(HOLDOUT_MIN - 1) == "crossfit"
    assert default_protocol(HOLDOUT_MIN) == "holdout"
    assert default_protocol(50, holdout_min=50) == "holdout"
    assert default_protocol(49, holdout_min=50) == "crossfit"


def test_holdout_scores_the_validation_part_and_ships_all(night: pl.DataFrame,
                                                          holdout_model: TrainResult) -> None:
    t = holdout_model.manifest["training"]
    assert t["protocol"] == "holdout" and t["folds"] == 5
    assert t["heldout_is"] == "validation part" and len(t["fold_rounds"]) == 1
    fold = assign_folds(night["session_id"], 5, seed=0)
    n_valid = int((fold == fold.min()).sum())
    assert 0 < n_valid < night.height
    counts = t["counts"]
    assert counts["train"]["turns"] == night.height  # the shipped model: every label
    assert counts["valid"]["turns"] == counts["test"]["turns"] == n_valid
    assert counts["calibration"]["turns"] == n_valid
    m = holdout_model.heldout
    assert sum(c["support"] for c in m["per_class"].values()) == n_valid
    assert 0.5 < m["macro_f1"] <= 1.0
    base = holdout_model.manifest["baselines"]["heldout"]
    for name in ("rules", "no_context"):  # the same rows as the model's metrics
        assert sum(c["support"] for c in base[name]["per_class"].values()) == n_valid
    nc = holdout_model.manifest["no_context"]
    assert nc["train_turns"] == 300  # capped: a class-stratified sample


def test_holdout_metrics_are_out_of_sample(tmp_path: Path) -> None:
    turns = simulate_frame(600, seed=3, batch_size=660)
    fp = turns["label"].struct.field("failure_point").to_numpy()
    shuffled = pl.Series(fp[np.random.default_rng(0).permutation(turns.height)])
    turns = turns.with_columns(pl.col("label").struct.with_fields(
        failure_point=pl.lit(shuffled)))
    res = train(turns, tmp_path / "m", seed=0, threads=1, min_class_count=2,
                protocol="holdout", no_context=False, **FAST)
    assert res.manifest["training"]["protocol"] == "holdout"
    assert res.heldout["macro_f1"] < 0.3  # in-sample a booster would fit the noise


def test_explicit_protocol_and_test_part(night: pl.DataFrame, tmp_path: Path) -> None:
    small = night.head(400)  # 400 labelled turns >= holdout_min: "auto" would pick holdout
    cf = train(small, tmp_path / "cf", seed=0, threads=1, holdout_min=300,
               protocol="crossfit", folds=3, no_context=False, **FAST)
    assert cf.manifest["training"]["protocol"] == "crossfit"
    assert cf.manifest["training"]["heldout_is"] == "out-of-fold"
    part = train(small, tmp_path / "p", seed=0, threads=1, protocol="holdout",
                 test_size=0.25, no_context=False, holdout_refit=True, **FAST)
    t = part.manifest["training"]
    assert t["heldout_is"] == "test part"
    assert t["counts"]["train"]["turns"] + t["counts"]["test"]["turns"] == small.height
    with pytest.raises(InputError, match="protocol"):
        train(night, tmp_path / "x", protocol="bogus")  # type: ignore[arg-type]


def test_holdout_is_deterministic(night: pl.DataFrame, holdout_model: TrainResult,
                                  tmp_path: Path) -> None:
    again = train(night, tmp_path / "m", seed=0, threads=1, holdout_min=500,
                  no_context_max_turns=300, holdout_refit=True, **FAST)
    for name in ("model.txt", "model_no_context.txt", "learned.json", "manifest.json"):
        assert (again.path / name).read_bytes() == (holdout_model.path / name).read_bytes()


def test_hashed_once_rows_equal_hashing_the_rows() -> None:
    texts = ["turn on the lights", None, "", "réveille-moi à sept heures", "明天天气",
             "play jazz", "play jazz please"]
    mask = np.array([True, False, True, True, False, True, True])
    whole = hashed_texts(pl.DataFrame({"_raw_asr_text": texts}), ("text_asr",))["text_asr"].rows()
    part = hashed_ngrams([t for t, keep in zip(texts, mask, strict=True) if keep])
    sliced = whole[mask]
    assert sliced.shape == part.shape
    np.testing.assert_array_equal(sliced.indptr, part.indptr)
    np.testing.assert_array_equal(sliced.indices, part.indices)
    np.testing.assert_array_equal(sliced.data, part.data)


def test_cli_protocol_holdout(tmp_path: Path) -> None:
    """In process (`fpi train` runs in a child process in tests/test_readme.py's
    quickstart, and as the `fpi` script in tests/test_train_engine.py)."""
    from cli_run import in_process

    data = tmp_path / "night.parquet"
    write_simulation(data, turns=600, seed=4, format="parquet", batch_size=660)
    out = tmp_path / "m"
    run = in_process("train", data, "-o", out, "--protocol", "holdout", "--max-fit-turns",
                     300, "--no-search", "--json")
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert doc["training"]["protocol"] == "holdout"
    assert doc["training"]["heldout_is"] == "validation part"
    assert doc["training"]["max_fit_turns"] == 300  # the trees' sample, recorded
    # shipped by default: the validated model, trained on the sample outside the part
    assert doc["training"]["shipped"] == "the validated model"
    assert 0 < doc["training"]["counts"]["train"]["turns"] < 300
    assert "metrics validation part" in " ".join(run.stderr.split())


def test_holdout_without_refit_ships_the_validated_model(night: pl.DataFrame,
                                                         holdout_model: TrainResult,
                                                         tmp_path: Path) -> None:
    res = train(night, tmp_path / "m", seed=0, threads=1, holdout_min=500,
                holdout_refit=False, no_context=False, **FAST)
    t = res.manifest["training"]
    assert t["shipped"] == "the validated model"
    assert holdout_model.manifest["training"]["shipped"] == "refit on all fit rows"
    assert t["counts"]["train"]["turns"] == night.height - t["counts"]["valid"]["turns"]
    assert res.bundle.booster.current_iteration() == t["rounds"] == t["fold_rounds"][0]
    # the same validation margins (same fold model): the same held-out metrics
    assert res.heldout["macro_f1"] == pytest.approx(holdout_model.heldout["macro_f1"],
                                                    abs=1e-12)


def test_holdout_tree_settings_and_patience_by_protocol(holdout_model: TrainResult) -> None:
    from fpi.model.training import FitOptions

    p = holdout_model.manifest["params"]
    assert p["learning_rate"] == 0.25 and p["feature_fraction"] == 0.5
    assert p["early_stopping_rounds"] == 5  # given: kept under either protocol
    assert FitOptions().patience("holdout") == 10
    assert FitOptions().patience("crossfit") == 20
    assert FitOptions(early_stopping_rounds=7).patience("holdout") == 7


def test_rule_baseline_on_a_second_thread_is_the_same(night: pl.DataFrame) -> None:
    from fpi.model.training import FitOptions, _labelled_data, _Laps, _start_rules

    opts = FitOptions(threads=2, protocol="holdout")
    data = _labelled_data(night, None, opts, None, _Laps(None))
    rules2, pred2 = _start_rules(data, opts)()  # begun on a thread
    rules1, pred1 = _start_rules(data, FitOptions(threads=1, protocol="holdout"))()
    assert rules2.to_dict() == rules1.to_dict()
    np.testing.assert_array_equal(pred2, pred1)
    assert (pred1[data.valid] >= 0).all() and (pred1[~data.valid] == -1).all()
