"""Rate estimation under prior and conditional shift, slices and baseline comparison,
on synthetic posteriors."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from fpi.diagnose.rates import (
    METHODS,
    SessionSums,
    acc_prior,
    adjust_posteriors,
    compare_rates,
    em_prior,
    estimate_rates,
    slice_columns,
    slice_rates,
)
from fpi.schema import CLASSES

K = len(CLASSES)
TRAIN_PRIOR = np.array([0.70, 0.04, 0.08, 0.07, 0.06, 0.05])


def _night(prior: np.ndarray, n: int, seed: int, sep: float = 1.6,
           shift: np.ndarray | None = None):
    """Label-shift world: x | y ~ N(mu_y, I); posteriors exact under TRAIN_PRIOR.

    ``shift`` (k, k) moves each class's mean on the night only (the model still
    scores with the training means): a conditional shift, ``P(x | y)`` changes.
    """
    rng = np.random.default_rng(seed)
    mu = np.eye(K) * sep
    y = rng.choice(K, size=n, p=prior)
    x = (mu if shift is None else mu + shift)[y] + rng.normal(size=(n, K))
    loglik = -0.5 * ((x[:, None, :] - mu[None, :, :]) ** 2).sum(axis=2)
    post = np.exp(loglik - loglik.max(axis=1, keepdims=True)) * TRAIN_PRIOR
    post /= post.sum(axis=1, keepdims=True)
    return y, post


def _confusion(seed: int = 99, n: int = 20_000, sep: float = 1.6) -> np.ndarray:
    y, post = _night(TRAIN_PRIOR, n, seed, sep=sep)
    conf = np.zeros((K, K))
    np.add.at(conf, (y, post.argmax(axis=1)), 1)
    return conf


def _soft_confusion(seed: int = 99, n: int = 20_000, sep: float = 1.6) -> np.ndarray:
    y, post = _night(TRAIN_PRIOR, n, seed, sep=sep)
    soft = np.zeros((K, K))
    np.add.at(soft, y, post)
    return soft


SHIFTED = np.array([0.55, 0.04, 0.20, 0.07, 0.09, 0.05])  # asr doubled and more


def test_em_recovers_shifted_prior_where_plain_average_does_not() -> None:
    _, post = _night(SHIFTED, 30_000, seed=1)
    em = em_prior(post, TRAIN_PRIOR)
    naive = post.mean(axis=0)
    assert abs(em[2] - SHIFTED[2]) < 0.01
    # the plain average is pulled back toward the training rate
    assert abs(naive[2] - SHIFTED[2]) > 2 * abs(em[2] - SHIFTED[2])
    assert em.sum() == pytest.approx(1.0)


def test_em_without_shift_is_a_fixed_point() -> None:
    _, post = _night(TRAIN_PRIOR, 20_000, seed=2)
    em = em_prior(post, TRAIN_PRIOR)
    np.testing.assert_allclose(em, TRAIN_PRIOR, atol=0.01)


def test_acc_inverts_the_confusion_matrix() -> None:
    conf = _confusion()
    m = conf / conf.sum(axis=1, keepdims=True)
    pred_dist = m.T @ SHIFTED
    np.testing.assert_allclose(acc_prior(pred_dist, conf), SHIFTED, atol=1e-6)


def test_adjusted_posteriors_average_to_em_estimate() -> None:
    _, post = _night(SHIFTED, 5_000, seed=3)
    em = em_prior(post, TRAIN_PRIOR, tol=1e-10)
    adj = adjust_posteriors(post, TRAIN_PRIOR, em)
    np.testing.assert_allclose(adj.mean(axis=0), em, atol=1e-6)


@pytest.mark.parametrize(("seed", "method"), [(11, "acc"), (12, "blend"), (13, "pacc")])
def test_intervals_cover_true_rates_under_shift(seed: int, method: str) -> None:
    y, post = _night(SHIFTED, 8_000, seed=seed)
    sessions = np.arange(len(y)) // 4
    table = estimate_rates(post, train_prior=TRAIN_PRIOR, confusion=_confusion(),
                           soft_confusion=_soft_confusion(), groups=sessions, n_boot=100,
                           seed=0, method=method)
    assert table.estimator == method
    if method != "blend":
        np.testing.assert_array_equal(table.estimate, getattr(table, method))
    true = np.bincount(y, minlength=K) / len(y)
    covered = (table.low <= true) & (true <= table.high)
    assert covered.sum() >= K - 1, (table.low, true, table.high)
    assert np.all(table.low <= table.estimate) and np.all(table.estimate <= table.high)
    assert table.count.sum() == len(y)
    d = table.to_dict()
    assert set(d) == set(CLASSES)
    assert set(d["asr"]) >= {"estimate", "low", "high", "count", "pacc", "acc", "em"}


def test_pacc_recovers_a_prior_shift_the_plain_mean_misses() -> None:
    y, post = _night(SHIFTED, 30_000, seed=21)
    true = np.bincount(y, minlength=K) / len(y)
    pacc = acc_prior(post.mean(axis=0), _soft_confusion())
    np.testing.assert_allclose(pacc, true, atol=0.01)
    assert abs(post.mean(axis=0)[2] - true[2]) > 0.02


def test_blend_lies_between_pcc_and_pacc_and_weights_the_precise_one() -> None:
    sep, sessions = 3.0, np.arange(6_000) // 3
    _, post = _night(SHIFTED, 6_000, seed=22, sep=sep)
    t = estimate_rates(post, train_prior=TRAIN_PRIOR, n_boot=80, groups=sessions,
                       soft_confusion=_soft_confusion(n=20_000, sep=sep))
    assert t.estimator == "blend" and t.weight is not None and t.pacc is not None
    assert np.ptp(t.weight) == 0 and 0.25 < t.weight[0] < 0.75
    assert t.estimate.sum() == pytest.approx(1.0)
    lo = np.minimum(t.mean_probability, t.pacc) - 1e-12
    hi = np.maximum(t.mean_probability, t.pacc) + 1e-12
    assert np.all((lo <= t.estimate) & (t.estimate <= hi))
    # a soft confusion measured on 300 turns is imprecise: the correction weighs less
    t_small = estimate_rates(post, train_prior=TRAIN_PRIOR, n_boot=80, groups=sessions,
                             soft_confusion=_soft_confusion(n=300, sep=sep))
    assert t_small.weight is not None and t_small.weight[0] > t.weight[0]


@pytest.mark.parametrize("direction", ["asr_looks_correct", "correct_looks_asr"])
def test_blend_stays_close_and_covers_under_a_conditional_shift(direction: str) -> None:
    # Tonight ASR rises 8% -> 13% and P(x | y) moves: ASR failures look less like
    # training's (PCC undercounts), or correct turns look more like ASR (the
    # adjusted estimators overshoot, as on far-field or new-voice nights).
    sep = 2.5
    shift = np.zeros((K, K))
    if direction == "asr_looks_correct":
        shift[2, 2] = -0.4
    else:
        shift[0, 2] = 0.4
    prior = np.array([0.64, 0.04, 0.13, 0.07, 0.07, 0.05])
    y, post = _night(prior, 3_000, seed=23, sep=sep, shift=shift)
    true = np.bincount(y, minlength=K) / len(y)
    t = estimate_rates(post, train_prior=TRAIN_PRIOR, confusion=_confusion(n=5_000, sep=sep),
                       soft_confusion=_soft_confusion(n=5_000, sep=sep),
                       groups=np.arange(len(y)) // 3, n_boot=100)
    assert t.low[2] <= true[2] <= t.high[2], (t.low[2], true[2], t.high[2])
    assert abs(t.estimate[2] - true[2]) < 0.025
    assert ((t.low <= true) & (true <= t.high)).sum() >= K - 1
    assert np.all((t.high - t.low)[1:] / 2 < 0.04)


def test_interval_coverage_in_a_small_monte_carlo() -> None:
    soft, conf = _soft_confusion(), _confusion()
    covered = []
    for rep in range(6):
        y, post = _night(SHIFTED, 3_000, seed=300 + rep)
        t = estimate_rates(post, train_prior=TRAIN_PRIOR, confusion=conf, soft_confusion=soft,
                           groups=np.arange(len(y)) // 3, n_boot=60, seed=rep)
        true = np.bincount(y, minlength=K) / len(y)
        covered.append((t.low <= true) & (true <= t.high))
    cov = np.array(covered)
    assert cov.mean() >= 0.9, cov
    assert (cov.sum(axis=1) >= K - 1).all(), cov


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", ["one_turn", "all_one_class", "class_absent"])
def test_edge_cases_give_finite_ordered_rates(method: str, case: str) -> None:
    soft, conf = _soft_confusion(), _confusion()
    if case == "one_turn":
        post = np.array([[0.1, 0.1, 0.5, 0.1, 0.1, 0.1]])
    elif case == "all_one_class":
        post = np.tile(np.array([[0.96, 0.01, 0.01, 0.01, 0.005, 0.005]]), (200, 1))
    else:  # no turn of `result` tonight, and none in the held-out matrices either
        _, post = _night(np.array([0.7, 0.05, 0.1, 0.1, 0.05, 0.0]), 500, seed=4)
        soft, conf = soft.copy(), conf.copy()
        soft[5], conf[5] = 0.0, 0.0
    t = estimate_rates(post, train_prior=TRAIN_PRIOR, confusion=conf, soft_confusion=soft,
                       n_boot=20 if method == "em" else 50, method=method)
    for arr in (t.estimate, t.low, t.high):
        assert np.all(np.isfinite(arr)) and np.all((arr >= 0) & (arr <= 1))
    assert np.all(t.low <= t.estimate + 1e-12) and np.all(t.estimate <= t.high + 1e-12)
    assert t.estimate.sum() == pytest.approx(1.0, abs=1e-6)


def test_unknown_method_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown rate estimator"):
        estimate_rates(np.full((3, K), 1 / K), train_prior=TRAIN_PRIOR, method="magic")


def test_session_sums_of_partitions_merge_to_the_whole() -> None:
    _, post = _night(SHIFTED, 900, seed=6)
    codes = np.arange(900) // 3
    whole = SessionSums.of(post, codes)
    first = codes < 150  # partitions hold whole sessions
    a = SessionSums.of(post[first], codes[first])
    b = SessionSums.of(post[~first], codes[~first] - 150)
    np.testing.assert_allclose(np.vstack([a.probs, b.probs]), whole.probs)
    np.testing.assert_array_equal(np.vstack([a.counts, b.counts]), whole.counts)
    np.testing.assert_array_equal(np.concatenate([a.turns, b.turns]), whole.turns)


@pytest.mark.slow
def test_intervals_are_deterministic_and_shrink_with_n() -> None:
    _, small = _night(SHIFTED, 2_000, seed=5)
    # the big night 4x the bootstrap's row cap (its EM per replicate on the cap's rows
    # is the cost): about a third of the small night's width on seeds 5-8
    _, big = _night(SHIFTED, 16_000, seed=5)
    a = estimate_rates(small, train_prior=TRAIN_PRIOR, n_boot=60, seed=1)
    b = estimate_rates(small, train_prior=TRAIN_PRIOR, n_boot=60, seed=1)
    np.testing.assert_array_equal(a.low, b.low)
    c = estimate_rates(big, train_prior=TRAIN_PRIOR, n_boot=60, seed=1, max_boot_rows=4_000)
    assert (c.high - c.low)[2] < (a.high - a.low)[2]


def test_empty_night() -> None:
    t = estimate_rates(np.zeros((0, K)), train_prior=TRAIN_PRIOR)
    assert t.turns == 0 and t.count.sum() == 0


def _slice_frame(n: int, seed: int):
    rng = np.random.default_rng(seed)
    locale = rng.choice(["en-US", "en-GB", "de-DE"], size=n, p=[0.6, 0.3, 0.1])
    prior = np.where(locale[:, None] == "en-GB", [0.5, 0.04, 0.3, 0.06, 0.05, 0.05], TRAIN_PRIOR)
    post = np.empty((n, K))
    ys = np.empty(n, dtype=int)
    for loc in ("en-US", "en-GB", "de-DE"):
        idx = np.flatnonzero(locale == loc)
        p = prior[idx[0]]
        y_l, post_l = _night(p, len(idx), seed=seed + len(loc) + idx[0])
        post[idx] = post_l
        ys[idx] = y_l
    turns = pl.DataFrame({
        "device": pl.DataFrame({"type": ["speaker"] * n, "locale": locale,
                                "app_version": ["1.0"] * n}).to_struct(),
        "nlu": pl.DataFrame({"domain": rng.choice(["music", "weather"], size=n),
                             "intent": [None] * n}, schema={"domain": pl.String,
                                                            "intent": pl.String}).to_struct(),
    })
    return turns, post, ys


@pytest.mark.parametrize("matrices", ["none", "confusion", "both"])
def test_slices_flag_the_regressed_slice_and_ignore_tiny_ones(matrices: str) -> None:
    turns, post, _ = _slice_frame(6_000, seed=7)
    cols = slice_columns(turns)
    assert cols.columns == ["domain", "intent", "device_type", "locale", "app_version"]
    assert cols["intent"].unique().to_list() == ["(missing)"]
    conf = None if matrices == "none" else _confusion()
    soft = _soft_confusion() if matrices == "both" else None
    # EM's bootstrap refits EM on every replicate (0.6 CPU-s at 50): 20 for EM, whose
    # interval is only checked to hold its estimate; the blends' upper bounds need 50
    table = estimate_rates(post, train_prior=TRAIN_PRIOR, confusion=conf, soft_confusion=soft,
                           n_boot=20 if matrices == "none" else 50)
    assert table.estimator == {"none": "em", "confusion": "blend_counts", "both": "blend"}[matrices]
    res = slice_rates(cols, post, table, train_prior=TRAIN_PRIOR, confusion=conf,
                      soft_confusion=soft, min_support=700)
    top = res["top"]
    assert top, res
    assert (top[0]["dimension"], top[0]["value"], top[0]["class"]) == ("locale", "en-GB", "asr")
    # de-DE (~600 turns) is below min_support: neither reported nor tested
    locs = [s["value"] for s in res["dimensions"]["locale"]["slices"]]
    assert "de-DE" not in locs
    assert res["dimensions"]["locale"]["omitted"]["small"]["slices"] == 1
    # domain is unrelated to the regression: nothing flagged there after BH
    assert not [t for t in top if t["dimension"] == "domain"]
    gb = next(s for s in res["dimensions"]["locale"]["slices"] if s["value"] == "en-GB")
    r = gb["rates"]["asr"]
    assert r["low"] <= r["estimate"] <= r["high"]
    if matrices == "none":  # EM: unbiased under this pure label shift
        assert 0.24 < r["estimate"] < 0.36
    else:  # the blend hedges toward the unadjusted rate, well above the night's
        assert r["estimate"] > table.estimate[2] + 0.05
        assert r["high"] > 0.24


def test_compare_rates_flags_only_real_changes() -> None:
    base = {c: {"estimate": 0.1, "low": 0.09, "high": 0.11} for c in CLASSES}
    cur = {c: dict(v) for c, v in base.items()}
    cur["asr"] = {"estimate": 0.2, "low": 0.18, "high": 0.22}
    out = compare_rates(cur, base)
    assert out["asr"]["significant"] and out["asr"]["change"] == pytest.approx(0.1)
    assert out["asr"]["low"] > 0
    assert not out["nlu"]["significant"] and out["nlu"]["change"] == 0
