"""Fixtures of the labels-loop tests: one small simulated night per session, and the
session's night model (tests/conftest.py) to score it with."""

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
def model_dir(night_model: Path) -> Path:
    """The model the labels tests score ``night`` with: the session's ``night_model``
    (tests/conftest.py: 4,000 simulated baseline turns of another seed, two folds, no
    parameter search; trained once per session for the story and regression tests too,
    where this module's own 2,000-turn model cost 2.2 CPU-s more). Tests must not change
    it."""
    return night_model
