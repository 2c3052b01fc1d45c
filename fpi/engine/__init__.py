"""Execution engines: where per-partition work runs.

fpi's heavy steps are written as a pure function over one partition of whole
sessions plus a merge on the driver. An engine runs the per-partition function:

- ``LocalEngine`` runs it in this process, in order (the default, and what every
  single-machine command uses);
- ``fpi.engine.dask.DaskEngine`` (extra ``fpi[dask]``) runs it on a Dask cluster.

Both give the same results; only where the work happens differs. A *handle* is
what ``map`` returns for one item: the result itself for the local engine, a
future whose value stays on a worker for Dask. Handles can be passed to a later
``map`` (so large per-partition data, such as probabilities, never travels to the
driver) and are turned into values by ``gather``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Hashable, Sequence
from types import TracebackType
from typing import Any, Protocol, TypeVar, runtime_checkable

from fpi.errors import EngineError

__all__ = ["ENGINES", "Engine", "LocalEngine", "engine_from_options", "per_process"]

_T = TypeVar("_T")

#: The engines ``--engine`` accepts.
ENGINES = ("local", "dask")


@runtime_checkable
class Engine(Protocol):
    """Runs a function over items (or handles from an earlier ``map``)."""

    name: str

    @property
    def workers(self) -> int:
        """How many workers the engine runs tasks on."""
        ...

    def map(self, fn: Callable[..., Any], items: Sequence[Any], *args: Any) -> list[Any]:
        """``fn(item, *args)`` for every item, as handles in the order of ``items``.

        ``fn`` must be a module-level function and ``items``/``args`` picklable, so
        that any engine can ship them to another process.
        """
        ...

    def gather(self, handles: Sequence[Any]) -> list[Any]:
        """The values behind ``handles``, in order."""
        ...

    def close(self) -> None:
        """Release the engine's resources (idempotent)."""
        ...

    def __enter__(self) -> Engine: ...

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None: ...


class LocalEngine:
    """Runs every task here, now, in order: a handle is the result itself."""

    name = "local"

    @property
    def workers(self) -> int:
        return 1

    def map(self, fn: Callable[..., Any], items: Sequence[Any], *args: Any) -> list[Any]:
        return [fn(item, *args) for item in items]

    def gather(self, handles: Sequence[Any]) -> list[Any]:
        return list(handles)

    def close(self) -> None:
        return None

    def __enter__(self) -> LocalEngine:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def engine_from_options(engine: str = "local", workers: int | None = None,
                        scheduler: str | None = None,
                        scheduler_file: str | os.PathLike[str] | None = None,
                        timeout: float | None = None) -> Engine:
    """The engine the CLI options ``--engine/--workers/--scheduler/--scheduler-file`` name.

    ``local`` takes none of the other options. ``dask`` imports Dask only now (so
    ``import fpi`` never does) and raises :class:`~fpi.errors.EngineError` when the
    extra ``fpi[dask]`` is missing or the cluster cannot be used.
    """
    if engine == "local":
        given = [flag for flag, value in (("--workers", workers), ("--scheduler", scheduler),
                                          ("--scheduler-file", scheduler_file))
                 if value is not None]
        if given:
            raise EngineError(f"{given[0]} needs --engine dask")
        return LocalEngine()
    if engine != "dask":
        raise EngineError(f"unknown engine {engine!r}: use one of {', '.join(ENGINES)}")
    try:
        from fpi.engine.dask import DEFAULT_TIMEOUT, DaskEngine
    except ImportError as exc:
        raise EngineError(f"--engine dask needs Dask ({exc.name or exc} is not installed): "
                          "pip install 'fpi[dask]'") from None
    return DaskEngine(workers=workers, scheduler=scheduler, scheduler_file=scheduler_file,
                      timeout=DEFAULT_TIMEOUT if timeout is None else timeout)


_PER_PROCESS: dict[Hashable, Any] = {}
_PER_PROCESS_LOCK = threading.Lock()


def per_process(key: Hashable, make: Callable[[], _T]) -> _T:
    """``make()`` once per process for ``key``, then the same value.

    What a mapped function uses to load something large once per worker instead of
    once per task or shipping it from the driver: e.g. a model bundle, keyed by its
    path and checksum (so another model gets its own entry, and a worker that finds
    another checksum on disk can refuse)::

        def score(part: str, bundle_path: str, checksum: str) -> Stats:
            bundle = per_process(("bundle", bundle_path, checksum),
                                 lambda: load_checked(bundle_path, checksum))
    """
    with _PER_PROCESS_LOCK:
        if key not in _PER_PROCESS:
            _PER_PROCESS[key] = make()
        value: _T = _PER_PROCESS[key]
        return value
