"""Shared fixtures. Keep them small and deterministic."""

from __future__ import annotations

import os

# One thread everywhere: reproducible models and fair on a 2-core CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("POLARS_MAX_THREADS", "2")


import pytest


@pytest.fixture(scope="session", autouse=True)
def _compiled_model_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Compiled predictors (fpi.compiled) go to a per-run directory, not ~/.cache; child
    `fpi` processes inherit it, so each test model compiles once per run."""
    if "FPI_CACHE_DIR" not in os.environ:
        os.environ["FPI_CACHE_DIR"] = str(tmp_path_factory.mktemp("fpi-cache"))
