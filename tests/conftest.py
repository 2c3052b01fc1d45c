"""Shared fixtures. Keep them small and deterministic."""

from __future__ import annotations

import os

# One thread everywhere: reproducible models and fair on a 2-core CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("POLARS_MAX_THREADS", "2")
