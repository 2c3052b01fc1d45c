"""Shared fixtures. Keep them small and deterministic."""

from __future__ import annotations

import os

import pytest

# One thread everywhere: reproducible models and fair on a 2-core CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("POLARS_MAX_THREADS", "2")


@pytest.fixture(scope="session")
def small_bundle(tmp_path_factory: pytest.TempPathFactory):
    """One tiny model bundle for the whole session (few rounds, one thread, seed 0).

    Tests must not change it: copy it (``shutil.copytree``) before editing.
    """
    from test_features import make_turns

    from fpi.model import train

    out = tmp_path_factory.mktemp("small-bundle") / "model"
    return train(make_turns(300, seed=0), out, seed=0, threads=1, num_boost_round=25,
                 early_stopping_rounds=5)
