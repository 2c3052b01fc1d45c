"""Shared fixtures. Keep them small and deterministic."""

from __future__ import annotations

import os

import pytest

# One thread everywhere: reproducible models and fair on a 2-core CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("POLARS_MAX_THREADS", "2")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="rewrite tests/golden/* from this run instead of comparing "
                          "(also FPI_UPDATE_GOLDEN=1); review the diff before committing")


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    """True when golden files are to be rewritten (never when one is merely missing)."""
    return bool(request.config.getoption("--update-golden")) or (
        os.environ.get("FPI_UPDATE_GOLDEN") == "1")
