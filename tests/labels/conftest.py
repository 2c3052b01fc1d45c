"""Fixtures of the labels-loop tests: one small simulated night per session, and the
session's model (tests/conftest.py's ``small_bundle``) to score it with."""

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
def model_dir(small_bundle) -> Path:
    """The model the labels tests score ``night`` with: the session's ``small_bundle``
    (tests/conftest.py; the queue, export and check code is the same whatever the model's
    quality, and with it the quick tier trains no ``night_model``, about 2.5 CPU-s, which
    only the slow tier's story tests need). Tests must not change it."""
    return small_bundle.path
