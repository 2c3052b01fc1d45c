"""Feature values pinned by a golden written by the earlier implementation.

tests/golden/features_2k.parquet was computed by scripts/gen_feature_golden.py with the
feature code as it stood before the speed work of issue 12; a faster fpi.features must
give the same values: exactly for strings and nulls, within 1e-12 for floats.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from fpi.features import FEATURES, RAW_COLUMNS, build_features

_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gen_feature_golden.py"


def _golden_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("gen_feature_golden", _SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def frames() -> tuple[pl.DataFrame, pl.DataFrame]:
    mod = _golden_module()
    return pl.read_parquet(mod.GOLDEN), build_features(mod.golden_input())


def test_same_columns_and_keys(frames: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    old, new = frames
    # the raw inputs of learned features (issue 13) came after the golden file
    new = new.drop(RAW_COLUMNS)
    assert new.columns == old.columns
    assert new.schema == old.schema
    assert new.select("session_id", "turn_index").equals(old.select("session_id", "turn_index"))


@pytest.mark.parametrize("name", [f.name for f in FEATURES])
def test_feature_matches_golden(frames: tuple[pl.DataFrame, pl.DataFrame], name: str) -> None:
    old, new = frames[0][name], frames[1][name]
    assert new.is_null().to_list() == old.is_null().to_list(), f"{name}: nulls differ"
    if old.dtype == pl.String:
        assert new.to_list() == old.to_list(), f"{name}: values differ"
        return
    a, b = old.drop_nulls().to_numpy(), new.drop_nulls().to_numpy()
    assert np.array_equal(np.isnan(a), np.isnan(b)), f"{name}: NaNs differ"
    ok = ~np.isnan(a)
    np.testing.assert_allclose(b[ok], a[ok], rtol=1e-12, atol=1e-12, err_msg=name)


def test_golden_is_not_trivial(frames: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    old = frames[0]
    # every feature takes more than one value on the golden night, so it pins something
    constant = [f.name for f in FEATURES if old[f.name].n_unique() < 2]
    assert len(constant) <= 4, constant  # the always-present flags
