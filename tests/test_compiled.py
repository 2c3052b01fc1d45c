"""The compiled predictor: identical margins to LightGBM, its cache and its fallbacks."""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest

from fpi import files
from fpi.errors import ModelError
from fpi.model import compiled


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.column_stack([
        rng.normal(size=n),                       # numeric with NaN (missing type NaN)
        np.where(rng.random(n) < 0.3, 0.0, rng.normal(size=n)),  # many exact zeros
        rng.integers(0, 40, n).astype(float),     # categorical, many levels (bitsets)
        rng.integers(0, 4, n).astype(float),      # categorical, few levels (one-vs-rest)
        rng.uniform(-1, 1, n),                    # numeric, never missing (type None)
    ])
    x[rng.random(n) < 0.15, 0] = np.nan
    x[rng.random(n) < 0.05, 2] = np.nan
    y = ((x[:, 2] % 3 == 0) + (np.nan_to_num(x[:, 0]) > 0.3) + (x[:, 1] == 0)
         + (x[:, 4] > 0.5)).astype(int) % 3
    return x, y


@functools.cache  # one booster of each kind per run: the fixtures and the kinds test share it
def _booster(zero_as_missing: bool, rounds: int = 6) -> lgb.Booster:
    """Six rounds (18 trees): every split kind (test_the_fixture_reaches_every_split_kind)
    and 14 categorical splits, 12 of them two-word bitsets (12 rounds: 26 and 24), at about
    half the compile time of 12 rounds."""
    x, y = _data(3000, 1)
    params = {"objective": "multiclass", "num_class": 3, "num_leaves": 15, "verbosity": -1,
              "min_data_in_leaf": 5, "max_cat_to_onehot": 4, "zero_as_missing": zero_as_missing,
              "num_threads": 1, "deterministic": True, "seed": 0}
    ds = lgb.Dataset(x, label=y, categorical_feature=[2, 3])
    return lgb.Booster(model_str=lgb.train(params, ds, num_boost_round=rounds).model_to_string())


@pytest.fixture(scope="module")
def _shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fpi-cache")  # compile each test model once


@pytest.fixture(autouse=True)
def _env(_shared: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(files.CACHE_ENV, str(_shared))
    monkeypatch.delenv(compiled.ENV_PREDICTOR, raising=False)
    monkeypatch.setattr(compiled, "COMPILE_AFTER_ROWS", 0)  # compile at once (own test below)
    compiled.forget()


@pytest.fixture
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(files.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module", params=[False, True], ids=["nan-none", "zero-as-missing"])
def booster(request: pytest.FixtureRequest) -> lgb.Booster:
    return _booster(request.param)


@pytest.fixture(scope="module", params=[False, True], ids=["nan-none", "zero-as-missing"])
def few_trees(request: pytest.FixtureRequest) -> lgb.Booster:
    """Two rounds (6 trees): for the tests that build a library in an empty cache, which
    test the cache and the fallbacks, not the code of each split kind (0.15 CPU-s a build
    instead of 0.6)."""
    return _booster(request.param, rounds=2)


def _splits(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every split node under ``node`` of LightGBM's own dump (``Booster.dump_model``)."""
    if "split_index" in node:
        yield node
        yield from _splits(node["left_child"])
        yield from _splits(node["right_child"])


def _kinds(b: lgb.Booster) -> set[str]:
    kinds = {split["decision_type"] for tree in b.dump_model()["tree_info"]
             for split in _splits(tree["tree_structure"])}
    text = b.model_to_string()
    kinds |= {f"missing{(int(d) >> 2) & 3}" for line in text.splitlines()
              if line.startswith("decision_type=") for d in line.split("=")[1].split()}
    return kinds


def _bitset_words(b: lgb.Booster) -> list[int]:
    """The 32-bit words of each categorical split's bitset (the model text's
    ``cat_boundaries`` of each tree)."""
    words: list[int] = []
    for line in b.model_to_string().splitlines():
        if line.startswith("cat_boundaries="):
            bounds = [int(v) for v in line.split("=")[1].split()]
            words += [hi - lo for lo, hi in itertools.pairwise(bounds)]
    return words


def test_the_fixture_reaches_every_split_kind() -> None:
    kinds = _kinds(_booster(False)) | _kinds(_booster(True))
    assert {"<=", "==", "missing0", "missing1", "missing2"} <= kinds, kinds
    words = _bitset_words(_booster(False)) + _bitset_words(_booster(True))
    assert 1 in words and max(words) >= 2, words  # one-word and multi-word bitsets


def test_margins_identical_to_lightgbm(booster: lgb.Booster) -> None:
    x, _ = _data(5000, 7)
    x[::97] = np.nan  # whole rows missing
    x[5::89, 1] = -0.0
    x[7::83, 1] = 1e-40  # LightGBM reads |v| <= 1e-35 as zero
    x[9::71, 2] = 77.0  # a category never seen in training
    x[11::61, 2] = -3.0
    pred = compiled.compile_booster(booster)
    want = booster.predict(x, raw_score=True)
    assert np.array_equal(pred.predict_raw(x), want)
    assert np.array_equal(pred.predict_raw(np.asfortranarray(x), threads=2), want)
    assert np.array_equal(pred.predict_raw(x[::3]), want[::3])  # strided rows


def test_probe_rows_hit_the_edges(booster: lgb.Booster) -> None:
    x = compiled.probe_rows(booster.model_to_string())
    assert np.isnan(x).any() and (x == 0).any()
    pred = compiled.compile_booster(booster)
    assert np.array_equal(pred.predict_raw(x), booster.predict(x, raw_score=True))


@pytest.mark.slow
def test_fpi_model_margins(small_bundle, small_turns) -> None:
    from fpi.features import build_features
    from fpi.model import load_bundle

    bundle = load_bundle(small_bundle.path)  # its own booster: nothing compiled for it yet
    assert compiled._CACHE.get(bundle.booster) is None
    x = bundle.matrix(build_features(small_turns.head(300)))
    want = bundle.booster.predict(x, raw_score=True)
    assert np.array_equal(compiled.raw_margins(bundle.booster, x), want)
    assert compiled._CACHE.get(bundle.booster) is not None  # the compiled path ran


def test_cache_miss_then_hit(few_trees: lgb.Booster, _cache: Path,
                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="fpi.model.compiled")
    first = compiled.build_library(few_trees.model_to_string())
    assert first.parent == _cache and "built" in caplog.text
    caplog.clear()
    mtime = first.stat().st_mtime_ns
    again = compiled.build_library(few_trees.model_to_string())
    assert again == first and again.stat().st_mtime_ns == mtime and "cache hit" in caplog.text
    assert [p.name for p in _cache.iterdir()] == [first.name]  # no temporary files left


def test_no_compiler_falls_back(booster: lgb.Booster, monkeypatch: pytest.MonkeyPatch,
                                caplog: pytest.LogCaptureFixture, _cache: Path) -> None:
    caplog.set_level(logging.DEBUG, logger="fpi.model.compiled")
    monkeypatch.setenv("CC", "no-such-compiler-fpi")
    x, _ = _data(200, 3)
    out = compiled.raw_margins(booster, x)
    assert np.array_equal(out, booster.predict(x, raw_score=True))
    assert "using LightGBM" in caplog.text and "no C compiler" in caplog.text
    assert not _cache.exists() or not any(_cache.iterdir())


def test_empty_path_falls_back(booster: lgb.Booster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", "")
    x, _ = _data(50, 4)
    assert np.array_equal(compiled.raw_margins(booster, x), booster.predict(x, raw_score=True))
    assert compiled._CACHE[booster] is None


def test_failing_compiler_falls_back(booster: lgb.Booster, monkeypatch: pytest.MonkeyPatch,
                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="fpi.model.compiled")
    monkeypatch.setenv("CC", "false")
    x, _ = _data(50, 5)
    assert np.array_equal(compiled.raw_margins(booster, x), booster.predict(x, raw_score=True))
    assert "false failed" in caplog.text


def test_wrong_margins_fall_back(few_trees: lgb.Booster, monkeypatch: pytest.MonkeyPatch,
                                 caplog: pytest.LogCaptureFixture, _cache: Path) -> None:
    caplog.set_level(logging.DEBUG, logger="fpi.model.compiled")
    real = compiled.generate_c
    monkeypatch.setattr(compiled, "generate_c",
                        lambda text: real(text).replace("+ c] = 0.0;", "+ c] = 1e-9;"))
    x, _ = _data(50, 6)
    assert np.array_equal(compiled.raw_margins(few_trees, x), few_trees.predict(x, raw_score=True))
    assert "differ from LightGBM" in caplog.text


def test_modes(booster: lgb.Booster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(compiled.ENV_PREDICTOR, "lightgbm")
    x, _ = _data(20, 8)
    compiled.raw_margins(booster, x)
    assert booster not in compiled._CACHE  # never compiled
    monkeypatch.setenv(compiled.ENV_PREDICTOR, "compiled")
    monkeypatch.setenv("CC", "false")
    with pytest.raises(ModelError, match="compiled predictor unavailable"):
        compiled.raw_margins(booster, x)
    monkeypatch.setenv(compiled.ENV_PREDICTOR, "fast")
    with pytest.raises(ModelError, match="FPI_PREDICTOR"):
        compiled.raw_margins(booster, x)


def test_cache_dir_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(files.CACHE_ENV, str(tmp_path / "mine"))
    assert files.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv(files.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert files.cache_dir() == tmp_path / "xdg" / "fpi"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert files.cache_dir() == tmp_path / "home" / ".cache" / "fpi"


def test_small_batches_use_lightgbm_until_compiling_pays(few_trees: lgb.Booster, _cache: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compiled, "COMPILE_AFTER_ROWS", 250)
    x, _ = _data(100, 9)
    want = few_trees.predict(x, raw_score=True)
    for _ in range(2):  # 100, then 200 rows scored: not worth a build yet
        assert np.array_equal(compiled.raw_margins(few_trees, x), want)
        assert few_trees not in compiled._CACHE and not _cache.exists()
    assert np.array_equal(compiled.raw_margins(few_trees, x), want)  # 300 >= 250: built
    assert compiled._CACHE[few_trees] is not None and len(list(_cache.iterdir())) == 1
    # another process (forget) with the library cached uses it on its first, small batch
    compiled.forget()
    assert compiled.is_cached(few_trees.model_to_string())
    assert np.array_equal(compiled.raw_margins(few_trees, x[:3]), want[:3])
    assert compiled._CACHE[few_trees] is not None


def test_branch_hints_follow_training_counts(booster: lgb.Booster) -> None:
    text = booster.model_to_string()
    tree = compiled._parse(text).trees[0]
    root = booster.dump_model()["tree_info"][0]["tree_structure"]
    left, right = (root[side].get("internal_count", root[side].get("leaf_count"))
                   for side in ("left_child", "right_child"))
    assert tree.left_likely(0) == (left >= right)
    assert "__builtin_expect" in compiled.generate_c(text)
    # a model text without the counts: the same code, without hints
    bare = "\n".join(line for line in text.splitlines()
                     if not line.startswith(("internal_count=", "leaf_count=")))
    assert compiled._parse(bare).trees[0].left_likely(0) is None
    assert "__builtin_expect" not in compiled.generate_c(bare)


def test_prepare_checks_a_cached_library_only(few_trees: lgb.Booster, _cache: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compiled, "COMPILE_AFTER_ROWS", 10**9)
    compiled.prepare(few_trees)  # nothing cached: LightGBM scores first (rent or buy)
    assert few_trees not in compiled._CACHE and not _cache.exists()
    compiled.build_library(few_trees.model_to_string())
    compiled.forget()
    monkeypatch.setenv(compiled.ENV_PREDICTOR, "lightgbm")
    compiled.prepare(few_trees)
    assert few_trees not in compiled._CACHE
    monkeypatch.delenv(compiled.ENV_PREDICTOR)
    compiled.prepare(few_trees)  # cached: fetched and verified now
    assert compiled._CACHE[few_trees] is not None
