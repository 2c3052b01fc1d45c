"""Module-level functions the Dask engine tests map on workers (imported there by name:
workers spawned by a LocalCluster get the test process's sys.path, separate ``dask
worker`` processes get PYTHONPATH)."""

from __future__ import annotations

import os
from collections.abc import Callable


def scaled(x: int, factor: int) -> int:
    return x * factor


def plus_one(x: int) -> int:
    return x + 1


def environment(_: object) -> tuple[str | None, str | None, int, bool]:
    import dask
    import polars as pl

    return (os.environ.get("POLARS_MAX_THREADS"), os.environ.get("OMP_NUM_THREADS"),
            pl.thread_pool_size(), bool(dask.config.get("distributed.worker.profile.enabled")))


def loaded_once(_: object, key: str) -> tuple[int, int]:
    """(this process's id, the id the per-process value was made in)."""
    from fpi.engine import per_process

    return os.getpid(), per_process(("test", key), os.getpid)


def die_first(item: object, *args: object, fn: Callable[..., object], marker: str) -> object:
    """``fn(item, *args)``, but the first call on the whole cluster (the one that creates
    ``marker``) kills its worker process first, losing every value that worker held."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return fn(item, *args)
    os._exit(1)


def lightgbm_is_lean() -> bool:
    """Imports LightGBM (a no-op where a task did) and tells whether scikit-learn and
    pandas stayed out of this process."""
    import sys

    import lightgbm  # noqa: F401

    return not ({"sklearn", "pandas"} & set(sys.modules))
