"""Fixtures of the labels-loop tests: one small simulated night and one model, per session."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from fpi.simulate import simulate_frame


@pytest.fixture(scope="session")
def night() -> pl.DataFrame:
    """2,000 simulated turns with gold and second-annotator labels (seed 5)."""
    return simulate_frame(2_000, seed=5)


@pytest.fixture(scope="session")
def night_file(night: pl.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("night") / "night.parquet"
    night.write_parquet(path)
    return path


@pytest.fixture(scope="session")
def model_dir(night: pl.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model bundle trained on the night (seed 0, one thread, two folds, no parameter
    search, no baseline model)."""
    from fpi.model import train

    out = tmp_path_factory.mktemp("model") / "bundle"
    train(night, out, seed=0, threads=1, no_context=False, num_boost_round=60, folds=2,
          search=False)
    return out
