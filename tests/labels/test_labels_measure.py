"""Production measurement: ratio estimators on the random stratum, design weights, intervals."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from fpi.errors import InputError
from fpi.labels.measure import measure
from fpi.metrics import classification_metrics
from fpi.schema import CLASSES


def _night(n: int, seed: int) -> pl.DataFrame:
    """A synthetic night: true class and a prediction right 80% of the time."""
    rng = np.random.default_rng(seed)
    true = rng.choice(len(CLASSES), n, p=[0.6, 0.05, 0.15, 0.1, 0.05, 0.05])
    pred = np.where(rng.random(n) < 0.8, true, rng.integers(0, len(CLASSES), n))
    names = np.asarray(CLASSES)
    return pl.DataFrame({"session_id": [f"s{i}" for i in range(n)], "turn_index": 0,
                         "true": names[true], "predicted": names[pred]})


def _srs_queue(night: pl.DataFrame, n: int, seed: int) -> pl.DataFrame:
    pick = night.sample(n, seed=seed)
    return pick.select("session_id", "turn_index", "predicted").with_columns(
        pl.lit("random").alias("stratum"), pl.lit(n / night.height).alias("inclusion_prob"),
        pl.lit("all").alias("design_stratum"), pl.lit(night.height).alias("stratum_population"),
        pl.lit(n).alias("stratum_sample"))


def _labels(night: pl.DataFrame) -> pl.DataFrame:
    return night.select("session_id", "turn_index", pl.col("true").alias("failure_point"))


def _true_metrics(night: pl.DataFrame) -> dict:
    idx = {c: i for i, c in enumerate(CLASSES)}
    return classification_metrics(night["true"].replace_strict(idx).to_numpy(),
                                  night["predicted"].replace_strict(idx).to_numpy())


def test_a_census_gives_the_true_figures() -> None:
    night = _night(600, 1)
    result = measure(_srs_queue(night, 600, 0), _labels(night), replicates=200)
    truth = _true_metrics(night)
    assert result.per_class["correct"]["f1"]["high"] - result.per_class["correct"]["f1"][
        "low"] < 0.1
    for c in CLASSES:
        for m in ("precision", "recall", "f1"):
            assert result.per_class[c][m]["estimate"] == pytest.approx(
                truth["per_class"][c][m], abs=1e-6)
    assert result.population == 600 and result.labelled == 600


def test_design_weights_by_hand() -> None:
    # stratum A: 2 of 100 turns sampled, stratum B: 2 of 10
    queue = pl.DataFrame({
        "session_id": ["a1", "a2", "b1", "b2"], "turn_index": [0, 0, 0, 0],
        "predicted": ["asr", "asr", "asr", "correct"], "stratum": "stratified",
        "inclusion_prob": [0.02, 0.02, 0.2, 0.2], "design_stratum": ["A", "A", "B", "B"],
        "stratum_population": [100, 100, 10, 10], "stratum_sample": [2, 2, 2, 2]})
    labels = pl.DataFrame({"session_id": ["a1", "a2", "b1", "b2"], "turn_index": 0,
                           "failure_point": ["asr", "nlu", "asr", "asr"]})
    r = measure(queue, labels, replicates=200)
    # weights 50, 50, 5, 5: TP(asr) = 50 + 5, predicted asr = 105, true asr = 60
    assert r.per_class["asr"]["precision"]["estimate"] == pytest.approx(55 / 105)
    assert r.per_class["asr"]["recall"]["estimate"] == pytest.approx(55 / 60)
    assert r.per_class["asr"]["f1"]["estimate"] == pytest.approx(110 / 165)
    assert r.per_class["asr"]["rate"]["estimate"] == pytest.approx(60 / 110)
    # an unlabelled sampled turn: the stratum's labelled turns carry its weight
    r2 = measure(queue, labels.filter(pl.col("session_id") != "a2"), replicates=200)
    # a1 now weighs 100: TP(asr) = 100 + 5, true asr = 100 + 5 + 5
    assert r2.per_class["asr"]["recall"]["estimate"] == pytest.approx(105 / 110)


def test_targeted_picks_are_left_out() -> None:
    night = _night(500, 2)
    queue = _srs_queue(night, 100, 0)
    targeted = night.filter(pl.col("true") != pl.col("predicted")).head(50).select(
        "session_id", "turn_index", "predicted").with_columns(
        pl.lit("uncertainty").alias("stratum"))
    both = pl.concat([queue, targeted], how="diagonal_relaxed").unique(
        ["session_id", "turn_index"], keep="first", maintain_order=True)
    a = measure(queue, _labels(night), replicates=200)
    b = measure(both, _labels(night), replicates=200)
    assert a.per_class == b.per_class


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dirichlet", "bootstrap"])
def test_intervals_cover_the_truth_over_many_nights(method: str) -> None:
    hits, total = 0, 0
    for seed in range(30):
        night = _night(3000, 100 + seed)
        truth = _true_metrics(night)
        r = measure(_srs_queue(night, 400, seed), _labels(night), replicates=300, seed=seed,
                    method=method)
        for c in ("correct", "asr", "nlu"):
            m = r.per_class[c]["f1"]
            hits += m["low"] <= truth["per_class"][c]["f1"] <= m["high"]
            total += 1
    assert hits / total >= 0.85


def test_errors() -> None:
    night = _night(100, 3)
    queue = _srs_queue(night, 20, 0)
    with pytest.raises(InputError, match="no random stratum"):
        measure(queue.with_columns(pl.lit("uncertainty").alias("stratum")), _labels(night))
    with pytest.raises(InputError, match="none of the 20"):
        measure(queue, _labels(night).head(0))
    with pytest.raises(InputError, match="--method"):
        measure(queue, _labels(night), method="exact")
    with pytest.raises(InputError, match="no model predictions"):
        measure(queue.with_columns(pl.lit(None, pl.String).alias("predicted")), _labels(night))
