"""The holdout protocol's tree sample (``max_fit_turns``, issue 12): which rows it keeps,
and that a capped training records it and stays deterministic. Tiny data only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from fpi.errors import InputError
from fpi.model import train
from fpi.model.crossfit import assign_folds
from fpi.model.frame import sample_quotas
from fpi.model.training import FitOptions, _Data, _sample_rows
from fpi.simulate import simulate_frame

FAST = {"num_boost_round": 30, "early_stopping_rounds": 5, "search": False}


def _data(protocol: str, sessions: int = 300, per: int = 4) -> _Data:
    """``sessions`` sessions of ``per`` turns with seeded classes; a tenth set aside."""
    sid = pl.Series([f"s{i:04d}" for i in range(sessions) for _ in range(per)])
    turns = pl.DataFrame({"session_id": sid, "turn_index": list(range(per)) * sessions})
    y = np.random.default_rng(5).integers(0, 6, turns.height)
    fit = np.arange(turns.height) >= sessions * per // 10  # the first sessions: a test part
    fold = assign_folds(sid, 5, seed=0)
    return _Data(turns, turns, y, fit, fold, 5, protocol)  # type: ignore[arg-type]


def test_the_sample_is_capped_stratified_and_mostly_whole_sessions() -> None:
    data = _data("holdout")
    keep = _sample_rows(data, 500, seed=0)
    assert keep is not None and keep.sum() == 500
    assert not (keep & ~data.fit).any()  # only fit rows: never the test part
    counts = np.bincount(data.y[data.fit], minlength=6)
    np.testing.assert_array_equal(np.bincount(data.y[keep], minlength=6),
                                  sample_quotas(counts, 500))
    kept = pl.DataFrame({"s": data.turns["session_id"], "k": keep}).group_by("s").agg(
        pl.col("k").sum().alias("kept"), pl.len().alias("n")).filter(pl.col("kept") > 0)
    partial = kept.filter(pl.col("kept") < pl.col("n")).height
    assert partial < kept.height / 2  # whole sessions but at each class's cut
    again = _sample_rows(data, 500, seed=0)
    assert again is not None and np.array_equal(again, keep)  # seeded: the same rows
    other = _sample_rows(data, 500, seed=1)
    assert other is not None and not np.array_equal(other, keep)


def test_no_sample_when_cross_fitting_under_the_cap_or_uncapped() -> None:
    assert _sample_rows(_data("crossfit"), 500, seed=0) is None  # cross-fit: unchanged
    holdout = _data("holdout")
    assert _sample_rows(holdout, int(holdout.fit.sum()), seed=0) is None
    assert _sample_rows(holdout, None, seed=0) is None
    with pytest.raises(InputError, match="max fit turns"):
        FitOptions(max_fit_turns=0)
    assert FitOptions().max_fit_turns is None  # no sample unless asked for


def test_a_capped_holdout_records_its_sample_and_is_deterministic(tmp_path: Path) -> None:
    # 800 turns: about 630 fit rows outside the validation part, twice the cap
    night = simulate_frame(800, seed=11, batch_size=880)
    kw = {"seed": 0, "threads": 1, "protocol": "holdout", "max_fit_turns": 300,
          "no_context_max_turns": 500, "holdout_refit": True, **FAST}
    res = train(night, tmp_path / "a", **kw)  # type: ignore[arg-type]
    t = res.manifest["training"]
    assert t["max_fit_turns"] == 300
    assert t["counts"]["train"]["turns"] == 300  # the refit: the sample
    assert t["counts"]["train"]["turns"] < night.height - t["counts"]["valid"]["turns"]
    assert t["shipped"] == "refit on a sample of the fit rows (max_fit_turns)"
    n_valid = t["counts"]["valid"]["turns"]
    assert sum(c["support"] for c in res.heldout["per_class"].values()) == n_valid
    assert res.manifest["no_context"]["train_turns"] == 300  # min of both caps
    again = train(night, tmp_path / "b", **kw)  # type: ignore[arg-type]
    for name in ("model.txt", "model_no_context.txt", "manifest.json"):
        assert (again.path / name).read_bytes() == (res.path / name).read_bytes()
