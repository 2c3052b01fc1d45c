"""Per-turn training weights: cleaned label sets from the check, weights read and
checked, and carried into calibration, the text models and training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from fpi.errors import InputError
from fpi.labels.check import CheckOptions, LabelCheck, cleaned_labels
from fpi.labels.resolve import read_weights, training_weights
from fpi.model.calibration import fit_calibration
from fpi.model.learned import TextModel, hashed_ngrams
from fpi.model.training import turn_weights

KEY = ["session_id", "turn_index"]


def _check() -> LabelCheck:
    ranked = pl.DataFrame({
        "rank": [1, 2, 3, 4], "session_id": list("abcd"), "turn_index": [0] * 4,
        "label": ["asr", "nlu", "nlu", "asr"], "suggested": ["nlu", "asr", "er", "nlu"],
        "self_confidence": [0.1, 0.3, 0.2, 0.9], "suggested_probability": [0.8, 0.4, 0.7, 0.05],
        "suspect": [True, True, True, False]})
    return LabelCheck(ranked, {}, CheckOptions(), estimated_errors=3,
                      errors_by_label={"asr": 1, "nlu": 2})


def test_fixed_drop_relabel_weight() -> None:
    check = _check()  # picks by class: a (asr), b and c (nlu)
    drop = check.fixed("drop")
    assert drop["session_id"].to_list() == ["d"] and drop["weight"].to_list() == [1.0]
    # b's suggestion has p 0.4 < 0.5: dropped, not relabelled
    relabel = check.fixed("relabel")
    assert relabel["session_id"].to_list() == ["a", "c", "d"]
    assert relabel["failure_point"].to_list() == ["nlu", "er", "asr"]
    assert relabel["fix"].to_list() == ["relabel (was asr)", "relabel (was nlu)", None]
    assert check.fixed("relabel", relabel_min=0.3)["session_id"].to_list() == list("abcd")
    weight = check.fixed("weight")
    assert weight["failure_point"].to_list() == ["asr", "nlu", "nlu", "asr"]
    assert weight["weight"].to_list() == pytest.approx([0.1 / 0.9, 0.3 / 0.7, 0.2 / 0.9, 1.0])
    assert check.fixed("drop", by="rank")["session_id"].to_list() == ["d"]
    assert check.prune("suspects")["session_id"].to_list() == ["a", "b", "c"]
    assert check.fixed("weight", by="suspects")["weight"].to_list()[-1] == 1.0
    with pytest.raises(InputError, match="--fix"):
        check.fixed("vote")


def test_prune_confident_picks_suspects_the_model_rules_out() -> None:
    check = _check()  # suspects a (p(label) 0.1), b (0.3), c (0.2); d is no suspect
    assert check.prune("confident").height == 0  # default 0.1: strictly below
    assert check.prune("confident", 0.25)["session_id"].to_list() == ["a", "c"]
    assert check.prune("confident", 0.95)["session_id"].to_list() == ["a", "b", "c"]
    drop = check.fixed("drop", "confident", max_confidence=0.25)
    assert drop["session_id"].to_list() == ["b", "d"]
    relabel = check.fixed("relabel", "confident", max_confidence=0.25)
    assert relabel["failure_point"].to_list() == ["nlu", "nlu", "er", "asr"]
    weight = check.fixed("weight", "confident", max_confidence=0.25)
    assert weight["weight"].to_list() == pytest.approx([0.1 / 0.9, 1.0, 0.2 / 0.9, 1.0])
    with pytest.raises(InputError, match="'confident'"):
        check.prune("vote")


def test_cleaned_labels_is_a_labels_file(tmp_path: Path) -> None:
    turns = pl.DataFrame({"session_id": list("abcd"), "turn_index": [0] * 4}).with_columns(
        pl.struct(pl.lit("x").alias("failure_point"), pl.lit("ann").alias("annotator"),
                  pl.lit(None, pl.String).alias("failure_point_2")).alias("label"))
    out = cleaned_labels(_check(), turns, "relabel")
    assert out.columns == ["session_id", "turn_index", "annotator", "failure_point", "source",
                           "extra", "weight"]
    assert out["annotator"].to_list() == ["fpi-check", "fpi-check", "ann"]
    assert out["extra"].to_list()[0] == '{"fix": "relabel (was asr)"}'
    from fpi.labels.importer import read_labels_file

    out.write_parquet(tmp_path / "clean.parquet")
    assert read_labels_file(tmp_path / "clean.parquet").height == 3
    assert training_weights(None, tmp_path / "clean.parquet")["weight"].to_list() == [1.0] * 3


def test_read_weights(tmp_path: Path) -> None:
    pl.DataFrame({"session_id": ["a", "a", "b"], "turn_index": [0, 0, 1],
                  "weight": [0.2, None, 0.5], "x": [1, 2, 3]}).write_csv(tmp_path / "w.csv")
    w = read_weights(tmp_path / "w.csv")  # a turn on two rows: the mean, null counting 1
    assert w.rows() == [("a", 0, pytest.approx(0.6)), ("b", 1, 0.5)]
    pl.DataFrame({"session_id": ["a"], "turn_index": [0]}).write_parquet(tmp_path / "n.parquet")
    with pytest.raises(InputError, match="lacks column"):
        read_weights(tmp_path / "n.parquet")
    with pytest.raises(InputError, match="does not exist"):
        training_weights(tmp_path / "nope.parquet", None)
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(InputError, match="not a weights file"):
        read_weights(tmp_path / "bad.parquet")
    assert training_weights(None, None) is None


def test_turn_weights_checked() -> None:
    turns = pl.DataFrame({"session_id": ["a", "a", "b"], "turn_index": [0, 1, 0]})
    w = pl.DataFrame({"session_id": ["a", "z"], "turn_index": [1, 0], "weight": [0.5, 3.0]})
    assert turn_weights(turns, w).tolist() == [1.0, 0.5, 1.0]  # unlisted: 1; unknown: ignored
    for bad, match in ((w.with_columns(pl.lit(-1.0).alias("weight")), "negative"),
                       (w.with_columns(pl.lit(float("nan")).alias("weight")), "non-finite"),
                       (pl.concat([w, w]), "twice"), (w.drop("weight"), "lack"),
                       (pl.DataFrame({"session_id": ["a"] * 2, "turn_index": [0, 1],
                                      "weight": [0.0, 0.0]}), "weighs 0")):
        with pytest.raises(InputError, match=match):
            turn_weights(turns.filter(pl.col("session_id") == "a"), bad)


def test_calibration_weights_are_row_counts() -> None:
    rng = np.random.default_rng(0)
    raw, y = rng.normal(size=(300, 6)) * 2, rng.integers(0, 6, 300)
    raw[np.arange(300), y] += 1.5
    w = rng.integers(0, 3, 300).astype(float)  # 0, 1 or 2 copies of a row
    rows = np.repeat(np.arange(300), w.astype(int))
    weighted, copied = fit_calibration(raw, y, weight=w), fit_calibration(raw[rows], y[rows])
    assert weighted.temperature == pytest.approx(copied.temperature, rel=1e-4)
    assert weighted.bias == pytest.approx(copied.bias, abs=1e-4)
    assert fit_calibration(raw, y, weight=np.ones(300)).temperature == pytest.approx(
        fit_calibration(raw, y).temperature, rel=1e-6)


def test_text_model_weight_zero_is_no_row() -> None:
    x = hashed_ngrams(["play jazz", "play rock", "call mom", "call dad", "stop"])
    y = np.array([0, 0, 1, 1, 2])
    w = np.array([1.0, 1.0, 1.0, 0.0, 1.0])
    a = TextModel.fit(x, y, weight=w)
    keep = w > 0
    b = TextModel.fit(x[np.flatnonzero(keep)], y[keep])
    # the class weight 1/n_c counts every labelled row; with 0 the row adds no n-gram
    assert set(a.buckets.tolist()) == set(b.buckets.tolist())


def test_weights_of_one_train_the_same_trees(night, tmp_path: Path) -> None:
    from fpi.model import train

    # two trainings of 600 turns and 10 rounds (60 trees each, compared byte for byte)
    # cost less than one of the 2,000 (the Dataset's weights are the same whatever the
    # rounds)
    part = night.head(600)
    ones = part.select(*KEY, pl.lit(1.0).alias("weight"))
    kw: dict = dict(seed=0, threads=1, no_context=False, num_boost_round=10, folds=2,
                    search=False)
    res = train(part, tmp_path / "m", weights=ones, **kw)
    plain = train(part, tmp_path / "plain", **kw)
    # the same Dataset weights as without weights: the same trees
    assert (res.path / "model.txt").read_text() == (plain.path / "model.txt").read_text()
    assert res.manifest["training"]["weights"] == {"turns_not_1": 0, "turns_0": 0,
                                                  "sum": float(part.height)}
    assert "weights" not in plain.manifest["training"]
