"""Stratified attribution sample and per-component summaries, on synthetic contributions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import pytest

from fpi.diagnose.attribution import (
    GROUP_COLUMNS,
    Timing,
    bottom_k,
    for_class,
    group_matrix,
    grouped,
    per_class_quota,
    sample_size,
    summarize,
    top_features,
)
from fpi.schema import CLASSES, COMPONENTS


@dataclass(frozen=True)
class F:
    name: str
    group: str


FEATS = (F("a1", "asr"), F("a2", "asr"), F("w", "wake"), F("e", "er"), F("c", "context"))


def test_grouping_sums_features_by_component_and_keeps_bias() -> None:
    rng = np.random.default_rng(0)
    contrib = rng.normal(size=(4, len(CLASSES), len(FEATS) + 1))
    g = grouped(contrib, FEATS)
    assert g.shape == (4, len(CLASSES), len(GROUP_COLUMNS))
    np.testing.assert_allclose(g[..., COMPONENTS.index("asr")], contrib[..., 0] + contrib[..., 1])
    np.testing.assert_allclose(g[..., -1], contrib[..., -1])
    np.testing.assert_allclose(g.sum(axis=2), contrib.sum(axis=2))  # margin preserved
    assert group_matrix(FEATS).sum() == len(FEATS) + 1
    pred = np.array([0, 2, 5, 1])
    np.testing.assert_array_equal(for_class(g, pred)[2], g[2, 5])


def test_bottom_k_is_stratified_and_keeps_rare_classes_whole() -> None:
    rng = np.random.default_rng(1)
    pred = np.concatenate([np.zeros(1000, int), np.full(3, 4), np.full(50, 2)])
    keys = rng.random(len(pred))
    idx = bottom_k(keys, pred, 20)
    counts = np.bincount(pred[idx], minlength=6)
    assert counts[0] == 20 and counts[4] == 3 and counts[2] == 20
    # the smallest keys of each class, so streaming merges give the same sample
    sel0 = idx[pred[idx] == 0]
    assert set(sel0) == set(np.flatnonzero(pred == 0)[np.argsort(keys[pred == 0])[:20]])
    half = len(pred) // 2
    a = bottom_k(keys[:half], pred[:half], 20)
    b = bottom_k(keys[half:], pred[half:], 20) + half
    merged = np.concatenate([a, b])
    again = merged[bottom_k(keys[merged], pred[merged], 20)]
    assert set(again) == set(idx)


def test_budget_sizes_the_sample() -> None:
    assert sample_size(Timing(400, 0.1), 10.0) == 40_000
    assert sample_size(Timing(400, 100.0), 1.0) == 120  # floor: every class represented
    assert per_class_quota(60) == 10


def test_summarize_estimates_and_intervals() -> None:
    rng = np.random.default_rng(2)
    m = 600
    pred = np.repeat(np.arange(6), 100)
    values = rng.normal(0, 0.1, size=(m, len(GROUP_COLUMNS)))
    values[pred == 2, COMPONENTS.index("asr")] += 3.0  # asr calls driven by asr
    slices = pl.DataFrame({"locale": np.where(np.arange(m) % 2 == 0, "en-US", "de-DE")})
    counts = np.array([9000, 100, 500, 300, 200, 100])
    doc = summarize(values, pred, counts, mode="sample", slices=slices,
                    slice_targets=[{"dimension": "locale", "value": "de-DE", "class": "asr"}])
    asr = doc["by_class"]["asr"]
    assert asr["turns_predicted"] == 500 and asr["turns_attributed"] == 100
    c = asr["components"]["asr"]
    assert c["low"] < 3.0 < c["high"] and c["mean"] == pytest.approx(3.0, abs=0.05)
    shares = doc["by_component"]
    assert max(shares, key=lambda g: shares[g]["share"]) == "asr"
    assert all(0 <= v["low"] <= v["share"] <= v["high"] <= 1 for v in shares.values())
    [sl] = doc["by_slice"]
    assert sl["turns_attributed"] == 50
    empty = summarize(np.zeros((0, len(GROUP_COLUMNS))), np.zeros(0, int), counts, mode="none")
    assert empty["turns_attributed"] == 0
    assert empty["by_class"]["asr"]["components"]["asr"]["mean"] is None


def test_top_features_by_absolute_contribution() -> None:
    row = np.array([0.1, -2.0, 0.5, 0.0, 1.0, 9.0])  # last is the bias: never listed
    out = top_features(row, FEATS, {"a2": 0.123456, "c": "x"}, n=2)
    assert [f["name"] for f in out] == ["a2", "c"]
    assert out[0] == {"name": "a2", "component": "asr", "value": 0.1235, "contribution": -2.0}
