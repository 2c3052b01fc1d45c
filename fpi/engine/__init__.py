"""Execution engines: where per-partition work runs.

fpi's heavy steps are written as a pure function over one partition of whole
sessions plus a merge on the driver. An engine runs the per-partition function:

- ``LocalEngine`` runs it in this process (the default, and what every single-machine
  command uses): in order, or a few tasks at a time on threads (``threads``);
- ``fpi.engine.dask.DaskEngine`` (extra ``fpi[dask]``) runs it on a Dask cluster.

Both give the same results; only where the work happens differs. A *handle* is
what ``map`` returns for one item: the result itself for the local engine, a
future whose value stays on a worker for Dask. Handles can be passed to a later
``map`` (so large per-partition data, such as probabilities, never travels to the
driver) and are turned into values by ``gather``.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from types import TracebackType
from typing import Any, Protocol, TypeVar, runtime_checkable

from fpi.errors import EngineError

__all__ = ["ENGINES", "Engine", "LocalEngine", "available_cores", "default_threads",
           "engine_from_options", "per_process", "signals_to_main_thread", "task_threads"]

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


#: The most threads :func:`default_threads` gives: a task holds a partition's features in
#: memory, and the parts of a task that hold Python's GIL do not run side by side anyway
#: (more cores: ``--engine dask``, whose workers are processes).
MAX_DEFAULT_THREADS = 4


def default_threads() -> int:
    """Tasks a :class:`LocalEngine` runs at a time by default: one per core this process
    may use, at most :data:`MAX_DEFAULT_THREADS`."""
    return max(1, min(available_cores(), MAX_DEFAULT_THREADS))


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


_TASK = threading.local()


def task_threads() -> int | None:
    """Threads a task may start for itself (e.g. the compiled predictor's row split): on a
    :class:`LocalEngine`'s pool thread its share of the cores among the engine's tasks
    running now (all of them for the last task left running), else None (the caller's
    own default)."""
    share: Callable[[], int] | None = getattr(_TASK, "share", None)
    return None if share is None else share()


def _pool_thread(share: Callable[[], int]) -> None:
    """Set up a pool thread: its share of the cores (:func:`task_threads`), and the
    signals left to the main thread (:func:`signals_to_main_thread`)."""
    _TASK.share = share
    signals_to_main_thread()


def signals_to_main_thread() -> None:
    """Block SIGINT and SIGTERM on the calling (worker) thread, and so on the threads it
    starts: the main thread is the one that handles them (staging clean-up), and it may
    hold them back during a swap (``fpi.files``: the renames of an output set), which it
    can only do for itself."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})


class LocalEngine:
    """Runs every task in this process; a handle is the result itself.

    ``threads=1`` (the default) runs the tasks in order on the calling thread. More runs
    up to ``threads`` tasks at a time on a pool of threads (Polars, NumPy and the
    compiled predictor release the GIL while they work). Either way ``map`` returns the
    results in the order of the items, each computed from its item alone, so the results
    do not depend on ``threads``. A failing task's exception is raised by ``map`` (the
    first in item order) once the tasks already running have ended; those not started
    are cancelled. :attr:`workers` stays 1: the engine is one process, so work is
    partitioned as for one worker whatever ``threads`` is.
    """

    name = "local"

    def __init__(self, threads: int = 1) -> None:
        if threads < 1:
            raise EngineError(f"threads must be at least 1, not {threads}")
        self.threads = threads
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._running = 0  # tasks running on the pool now
        self._running_lock = threading.Lock()
        self._cores = available_cores()

    @property
    def workers(self) -> int:
        return 1

    def map(self, fn: Callable[..., Any], items: Sequence[Any], *args: Any) -> list[Any]:
        if self.threads == 1 or len(items) <= 1:
            return [fn(item, *args) for item in items]
        futures = [self._executor().submit(self._task, fn, item, *args) for item in items]
        return _results(futures)

    def _task(self, fn: Callable[..., Any], item: Any, *args: Any) -> Any:
        with self._running_lock:
            self._running += 1
        try:
            return fn(item, *args)
        finally:
            with self._running_lock:
                self._running -= 1

    def _share(self) -> int:
        """A running task's share of the cores: split among the tasks running now, so the
        last one left (its partition the last) gets them all."""
        with self._running_lock:
            running = self._running
        return max(1, self._cores // max(running, 1))

    def gather(self, handles: Sequence[Any]) -> list[Any]:
        return list(handles)

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    self.threads, thread_name_prefix="fpi-local", initializer=_pool_thread,
                    initargs=(self._share,))
            return self._pool

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> LocalEngine:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _results(futures: list[Future[Any]]) -> list[Any]:
    """The futures' results in order. On the first failure (or Ctrl-C while waiting) the
    tasks not started are cancelled and the running ones waited for, so none is still
    working (e.g. writing into a staging directory) when the caller cleans up."""
    try:
        return [f.result() for f in futures]
    except BaseException:
        for f in futures:
            f.cancel()
        wait(futures)
        raise


def engine_from_options(engine: str = "local", workers: int | None = None,
                        scheduler: str | None = None,
                        scheduler_file: str | os.PathLike[str] | None = None,
                        timeout: float | None = None, threads: int | None = 1) -> Engine:
    """The engine the CLI options ``--engine/--workers/--scheduler/--scheduler-file``
    (and ``--threads``) name.

    ``local`` takes none of the Dask options; it runs ``threads`` tasks at a time
    (``None``: :func:`default_threads`). ``dask`` takes no ``threads`` but 1 (its workers
    are processes), imports Dask only now (so ``import fpi`` never does) and raises
    :class:`~fpi.errors.EngineError` when the extra ``fpi[dask]`` is missing or the
    cluster cannot be used.
    """
    if engine == "local":
        given = [flag for flag, value in (("--workers", workers), ("--scheduler", scheduler),
                                          ("--scheduler-file", scheduler_file))
                 if value is not None]
        if given:
            raise EngineError(f"{given[0]} needs --engine dask")
        return LocalEngine(default_threads() if threads is None else threads)
    if engine != "dask":
        raise EngineError(f"unknown engine {engine!r}: use one of {', '.join(ENGINES)}")
    if threads not in (None, 1):
        raise EngineError("--threads needs --engine local (Dask workers are processes: "
                          "use --workers)")
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
