"""Shared fixtures. Keep them small and deterministic."""

from __future__ import annotations

import os

import pytest

# One thread everywhere: reproducible models and fair on a 2-core CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("POLARS_MAX_THREADS", "2")


@pytest.fixture(autouse=True)
def _outside_github_actions(monkeypatch: pytest.MonkeyPatch) -> None:
    """`fpi diagnose` annotates and writes the job summary under GitHub Actions: a test run
    in CI must not append to the real $GITHUB_STEP_SUMMARY (tests that want it set it)."""
    for var in ("GITHUB_ACTIONS", "GITHUB_STEP_SUMMARY"):
        monkeypatch.delenv(var, raising=False)
