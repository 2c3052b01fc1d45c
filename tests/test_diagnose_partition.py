"""Partitioned scoring: the same night scored as 1, 4 and 7 partitions of whole sessions
(LocalEngine) merges to the same statistics; the hash draws are pinned; a worker refuses a
model that is not the driver's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from tiny_turns import make_turns

from fpi import __version__
from fpi.diagnose.partition import (
    ModelRef,
    PartitionSource,
    PartitionTask,
    ScoreSettings,
    StatsSpec,
    fetch_chosen,
    fit_em,
    fit_slice_em,
    label_metrics,
    merge_stats,
    partition_stats,
    poisson_one,
    rates_from_stats,
    score_night,
    score_partition,
    session_weights,
    split_sessions,
    turn_keys,
    worker_bundle,
)
from fpi.diagnose.rates import (
    Strata,
    em_prior,
    estimate_rates,
    slice_columns,
    slice_rates,
    slice_rates_from_sums,
)
from fpi.diagnose.summary import LabelMetrics
from fpi.engine import LocalEngine
from fpi.errors import InputError, ModelError
from fpi.hashing import bucket_of, hash_strings
from fpi.metrics import strata_values
from fpi.schema import CLASSES

SETTINGS = ScoreSettings(seed=3, examples=2, attribution="sample", attribution_quota=7)
SPEC = StatsSpec(seed=3, n_boot=40)


@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("partition") / "night.parquet"
    make_turns(250, seed=5).write_parquet(path)
    return path


def _score(night: Path, bundle, parts: int,
           heard: list[tuple[str, int, int | None]] | None = None):
    """The night scored as ``parts`` partitions (``heard`` gets score_night's progress)."""
    sources = split_sessions(str(night), parts)
    tasks = [PartitionTask(i, s, ModelRef.of(bundle), SETTINGS) for i, s in enumerate(sources)]
    prior = np.array([bundle.manifest["training"]["class_prior"][c] for c in CLASSES])
    if parts == 1:  # step by step, as the other partitionings' score_night does
        engine = LocalEngine()
        handles = engine.map(score_partition, tasks)
        stats = merge_stats(engine.gather(engine.map(partition_stats, handles, SPEC)),
                            examples=SETTINGS.examples,
                            attribution_quota=SETTINGS.attribution_quota)
        stats = fetch_chosen(engine, handles, stats)
        return sources, handles, stats, fit_em(engine, handles, prior), prior
    progress = None if heard is None else (
        lambda stage, done, of: heard.append((stage, done, of)))
    total = sum(s.length or 0 for s in sources)
    return (sources, *score_night(LocalEngine(), tasks, SPEC, prior, progress, total), prior)


#: What score_night reported while ``scored`` scored the night as 4 partitions.
HEARD: list[tuple[str, int, int | None]] = []


@pytest.fixture(scope="module")
def scored(night: Path, small_bundle):
    HEARD.clear()
    return {n: _score(night, small_bundle, n, HEARD if n == 4 else None) for n in (1, 4, 7)}


def test_partitions_are_whole_sessions(scored, night: Path) -> None:
    whole = pl.read_parquet(night)
    for n, (sources, *_rest) in scored.items():
        assert len(sources) == n
        assert sum(s.length or 0 for s in sources) == whole.height
        firsts = [whole["session_id"][s.offset] for s in sources[1:]]
        lasts = [whole["session_id"][s.offset - 1] for s in sources[1:]]
        assert all(a != b for a, b in zip(firsts, lasts, strict=True))


def test_counts_sums_bootstrap_and_labels_merge_the_same(scored, night: Path) -> None:
    one = scored[1][2]
    for n in (4, 7):
        st = scored[n][2]
        assert (st.turns, st.sessions) == (one.turns, one.sessions)
        np.testing.assert_array_equal(st.counts, one.counts)
        np.testing.assert_array_equal(st.confusion, one.confusion)
        np.testing.assert_allclose(st.prob_sums, one.prob_sums, rtol=1e-12)
        np.testing.assert_allclose(st.boot_turns, one.boot_turns, rtol=1e-12)
        np.testing.assert_allclose(st.boot_counts, one.boot_counts, rtol=1e-12)
        np.testing.assert_allclose(st.boot_probs, one.boot_probs, rtol=1e-12)
        assert label_metrics(st.confusion) == label_metrics(one.confusion)
    # against the whole night in one array
    probs = np.vstack([h.probs for h in scored[7][1]])
    labels = np.concatenate([h.labels for h in scored[7][1]])
    assert one.turns == len(probs) == pl.read_parquet(night).height
    np.testing.assert_array_equal(one.counts, np.bincount(probs.argmax(1), minlength=6))
    assert label_metrics(one.confusion) == LabelMetrics.of(labels, probs.argmax(1))
    assert one.boot_turns.mean() == pytest.approx(one.turns, rel=0.1)


def test_slices_merge_the_same(scored) -> None:
    one = scored[1][2].slices
    for n in (4, 7):
        st = scored[n][2].slices
        assert list(st) == list(one)
        for dim in one:
            assert st[dim].values == one[dim].values
            np.testing.assert_array_equal(st[dim].turns, one[dim].turns)
            np.testing.assert_array_equal(st[dim].counts, one[dim].counts)
            np.testing.assert_allclose(st[dim].probs, one[dim].probs, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(st[dim].outer, one[dim].outer, rtol=1e-12, atol=1e-12)


def test_examples_and_attribution_sample_are_the_same_turns(scored) -> None:
    one = scored[1][2]
    assert one.examples is not None and one.attribution is not None
    assert one.attribution.height > 0 and one.examples.height > 0
    for n in (4, 7):
        st = scored[n][2]
        assert st.examples is not None and st.attribution is not None
        assert st.examples.equals(one.examples)
        assert st.attribution.equals(one.attribution)
    counts = one.attribution.group_by("_pred").len()["len"]
    assert counts.max() <= SETTINGS.attribution_quota


def test_em_is_the_same_within_1e9(scored) -> None:
    ems = {n: s[3] for n, s in scored.items()}
    prior = scored[1][4]
    probs = np.vstack([h.probs for h in scored[1][1]])
    np.testing.assert_allclose(ems[4], ems[1], atol=1e-9)
    np.testing.assert_allclose(ems[7], ems[1], atol=1e-9)
    np.testing.assert_allclose(ems[1], em_prior(probs, prior), atol=1e-9)


def test_em_bootstrap_replicates_do_not_depend_on_partitioning(scored, small_bundle) -> None:
    reps = {n: fit_em(LocalEngine(), scored[n][1], scored[n][4], seed=3, replicates=[0, 5],
                      tol=1e-9) for n in (1, 7)}
    assert reps[1].shape == (2, len(CLASSES))
    np.testing.assert_allclose(reps[7], reps[1], atol=1e-9)
    assert not np.allclose(reps[1][0], reps[1][1])


def test_hash_draws_are_pinned() -> None:
    # the inverse CDF of Poisson(1): P(0) = P(1) = e^-1 = 0.367879..., P(2) = e^-1 / 2
    u = np.array([0.0, 0.3678, 0.3679, 0.7357, 0.7358, 0.9196, 0.9197, 0.9999])
    np.testing.assert_array_equal(poisson_one(u), [0, 0, 1, 1, 2, 2, 3, 6])
    h = hash_strings(["s-1", "s-2", "s-3"])
    w = session_weights(h, seed=0, replicates=np.arange(4))
    np.testing.assert_array_equal(w, GOLDEN_WEIGHTS)
    keys = turn_keys(h, np.array([0, 1, 2]), seed=0)
    assert [int(k) for k in keys] == GOLDEN_KEYS
    big = session_weights(hash_strings([f"s{i}" for i in range(20_000)]), 7, np.arange(3))
    assert big.mean() == pytest.approx(1.0, abs=0.02) and big.var() == pytest.approx(1, abs=0.05)


def test_a_worker_refuses_another_model_or_fpi(small_bundle) -> None:
    ref = ModelRef.of(small_bundle)
    assert worker_bundle(ref) is worker_bundle(ref)  # loaded once per process
    with pytest.raises(ModelError, match=r"a worker read model .* the driver uses 0123456789ab"):
        worker_bundle(ModelRef(ref.path, "sha256:0123456789abcdef", __version__))
    with pytest.raises(ModelError, match=r"the driver runs fpi 0\.0\.0-other"):
        worker_bundle(ModelRef(ref.path, ref.bundle_hash, "0.0.0-other"))


def test_a_part_file_with_a_session_of_another_bucket_is_refused(night: Path,
                                                                   small_bundle) -> None:
    ref = ModelRef.of(small_bundle)
    first = PartitionSource(str(night), 0, 40)
    sid = pl.read_parquet(night)["session_id"][0]
    home = int(bucket_of(hash_strings([sid]), 5)[0])
    with pytest.raises(InputError, match=f"session '{sid}' belongs to part {home} of 5"):
        score_partition(PartitionTask(0, PartitionSource(first.path, 0, 40,
                                                         ((home + 1) % 5, 5)), ref, SETTINGS))


def _matrices(bundle):
    heldout = bundle.manifest.get("heldout") or {}
    return (np.asarray(heldout["confusion"], np.float64),
            np.asarray(heldout["soft_confusion"], np.float64))


def test_rates_from_merged_stats_do_not_depend_on_partitioning(scored, small_bundle) -> None:
    conf, soft = _matrices(small_bundle)
    tables = {n: rates_from_stats(st, em, confusion=conf, soft_confusion=soft, seed=3)
              for n, (_s, _h, st, em, _p) in scored.items()}
    one = tables[1]
    assert one.estimator == "blend" and one.n_boot == SPEC.n_boot
    for n in (4, 7):
        t = tables[n]
        np.testing.assert_array_equal(t.count, one.count)
        for field in ("estimate", "low", "high", "mean_probability", "em", "acc", "pacc",
                      "weight"):
            np.testing.assert_allclose(getattr(t, field), getattr(one, field), atol=1e-9)
    # the point estimates are the single-array estimator's (its interval differs: it draws
    # the bootstrap from a random generator, not from the sessions' hashes)
    probs = np.vstack([h.probs for h in scored[1][1]])
    ref = estimate_rates(probs, train_prior=scored[1][4], confusion=conf, soft_confusion=soft,
                         n_boot=10)
    for field in ("count", "mean_probability", "em", "acc", "pacc"):
        np.testing.assert_allclose(getattr(one, field), getattr(ref, field), atol=1e-9)
    assert (one.low <= one.estimate).all() and (one.estimate <= one.high).all()
    assert (one.high - one.low).max() > 0


def test_stratified_rates_do_not_depend_on_partitioning(scored, small_bundle,
                                                         night: Path) -> None:
    conf, soft = _matrices(small_bundle)
    strata = Strata.of_manifest(small_bundle.manifest)
    assert strata is not None  # a bundle trained now has the per-stratum matrices
    tables = {n: rates_from_stats(st, em, confusion=conf, soft_confusion=soft, seed=3,
                                  strata=strata) for n, (_s, _h, st, em, _p) in scored.items()}
    one = tables[1]
    assert one.estimator == "spacc" and one.spacc is not None
    for n in (4, 7):
        for field in ("estimate", "low", "high", "spacc", "pacc"):
            np.testing.assert_allclose(getattr(tables[n], field), getattr(one, field),
                                       atol=1e-9)
    # the point is the single-array estimator's, from the turns' ASR confidences
    probs = np.vstack([h.probs for h in scored[1][1]])
    ref = estimate_rates(probs, train_prior=scored[1][4], soft_confusion=soft, strata=strata,
                         strata_values=strata_values(pl.read_parquet(night)), n_boot=10)
    np.testing.assert_allclose(one.spacc, ref.spacc, atol=1e-9)
    assert (one.low <= one.estimate).all() and (one.estimate <= one.high).all()


def test_slices_from_merged_sums_are_the_slices_of_the_turns(scored, small_bundle,
                                                              night: Path) -> None:
    conf, soft = _matrices(small_bundle)
    _s, handles, stats, em, prior = scored[7]
    rates = rates_from_stats(stats, em, confusion=conf, soft_confusion=soft, seed=3,
                             strata=Strata.of_manifest(small_bundle.manifest))
    assert rates.estimator == "spacc"
    # spacc's slices: the slice means of the stratum-corrected probabilities
    probs = np.vstack([h.adjusted for h in handles])
    opts = {"confusion": conf, "soft_confusion": soft, "min_support": 30}
    from_turns = slice_rates(slice_columns(pl.read_parquet(night)), probs, rates,
                             train_prior=prior, **opts)
    docs = {n: slice_rates_from_sums(scored[n][2].slices, rates, **opts) for n in (1, 4, 7)}
    assert from_turns["tests"] > 0 and from_turns["dimensions"]
    for doc in docs.values():
        assert _rounded(doc) == _rounded(from_turns)


def _rounded(doc):
    """Floats to 5 digits: sums in another order may move the 6th."""
    if isinstance(doc, dict):
        return {k: _rounded(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_rounded(v) for v in doc]
    if isinstance(doc, float):
        return float(f"{doc:.5g}")
    return doc


#: Poisson(1) weights of sessions s-1, s-2, s-3 in replicates 0..3 (seed 0) and the
#: attribution keys of their turns 0, 1, 2 (seed 0): changing them changes every report.
GOLDEN_WEIGHTS = np.array([[1, 0, 1], [1, 2, 1], [0, 2, 1], [0, 1, 0]], dtype=np.float64)
GOLDEN_KEYS = [7209271773941403343, 8063030710476073006, 17875177396995385056]


def test_em_estimator_slices_fit_em_per_slice_over_partitions(scored) -> None:
    """A bundle without confusion matrices: the rates and slices use EM, fitted over the
    partitions (fit_slice_em), the same for 1 and 7 partitions and as EM on the turns."""
    docs = {}
    engine = LocalEngine()
    for n in (1, 7):
        _s, handles, stats, em, prior = scored[n]
        rates = rates_from_stats(
            stats, em, confusion=None, soft_confusion=None, seed=3,
            em_replicates=lambda init, h=handles, p=prior: fit_em(
                engine, h, p, init=init, seed=3, replicates=range(SPEC.n_boot), tol=1e-6))
        assert rates.estimator == "em"
        docs[n] = slice_rates_from_sums(
            stats.slices, rates, min_support=30,
            em_slices=lambda dim, values, h=handles, p=prior, r=rates: fit_slice_em(
                engine, h, p, dim, values, r.estimate))
        if n == 1:
            with pytest.raises(ValueError, match="em_slices"):
                slice_rates_from_sums(stats.slices, rates)
            probs = np.vstack([h.probs for h in handles])
            from_turns = slice_rates(pl.concat([h.slices for h in handles]), probs, rates,
                                     train_prior=prior, min_support=30)
            assert from_turns["tests"] > 0
            assert _rounded(docs[1]) == _rounded(from_turns)
    assert _rounded(docs[7]) == _rounded(docs[1])


def test_statistics_travel_compressed_and_unchanged(scored) -> None:
    """What a worker returns (pickled, as Dask sends it) is the same statistics, small."""
    import pickle

    _s, handles, _stats, _em, _p = scored[4]
    part = partition_stats(handles[0], SPEC)
    back = pickle.loads(pickle.dumps(part))
    for name in ("examples", "attribution", "pool"):
        assert getattr(back, name).equals(getattr(part, name)), name
    np.testing.assert_array_equal(back.boot_counts, part.boot_counts)
    assert back.slices.keys() == part.slices.keys() and back.turns == part.turns
    assert len(pickle.dumps(part)) < 200_000


def test_predict_progress_counts_turns(scored, night: Path) -> None:
    # scored[4] was scored with a progress callback (the night once more costs 0.7 CPU-s)
    sources = scored[4][0]
    total = sum(s.length or 0 for s in sources)
    assert [h[1] for h in HEARD] == list(np.cumsum([s.length for s in sources]))
    assert HEARD[-1] == ("predict", total, total) and total == pl.read_parquet(night).height
