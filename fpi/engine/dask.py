"""Run per-partition work on a Dask cluster (``dask.distributed``; extra ``fpi[dask]``).

``DaskEngine(workers=N)`` starts a ``LocalCluster`` of N single-threaded worker
*processes* (``POLARS_MAX_THREADS=1`` and ``OMP_NUM_THREADS=1`` on each, the workers'
statistical profiler off), so a laptop and CI run the very code path a real cluster
runs.
``DaskEngine(scheduler="tcp://host:8786")`` or ``DaskEngine(scheduler_file=F)``
connects to a cluster that already runs (Kubernetes, dask-gateway, a job queue,
plain ``dask scheduler`` / ``dask worker`` processes).

On connecting, every worker reports its fpi, Python and library versions
(:func:`worker_versions`); a worker that differs from the driver is refused, so
that every partition is scored by the same code. A handle is a Dask future: its
value stays on the worker until gathered, and it can be passed to a later
``map``. A task whose worker dies is run again on another worker (Dask's own
rescheduling), and a task that raises is retried ``retries`` times; the functions
fpi maps are pure, so a retried task gives the same result.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import dask
import distributed
from distributed import Client, LocalCluster

import fpi
from fpi.engine import available_cores
from fpi.errors import EngineError

__all__ = ["DEFAULT_TIMEOUT", "WORKER_ENV", "DaskEngine", "worker_versions"]

log = logging.getLogger(__name__)

#: Seconds to wait for a scheduler to answer (and for its first worker).
DEFAULT_TIMEOUT = 30.0
#: Set on every worker of a cluster fpi starts: one thread per worker process, so
#: N workers use N cores and results do not depend on thread scheduling.
WORKER_ENV: dict[str, str] = {"POLARS_MAX_THREADS": "1", "OMP_NUM_THREADS": "1",
                              "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
#: How often a Dask server (scheduler, nanny, worker) of a cluster fpi starts checks its
#: event loop and samples its CPU and memory for the dashboard: every 1 and 2 s instead
#: of 20 and 500 ms (an idle two-worker cluster used 2.1 CPU-s per 20 s, now 0.6).
MONITOR_CONFIG: dict[str, object] = {"distributed.admin.tick.interval": "1s",
                                     "distributed.admin.system-monitor.interval": "2s"}
#: Dask configuration of every worker of a cluster fpi starts.
WORKER_CONFIG: dict[str, object] = {"distributed.worker.profile.enabled": False,
                                    **MONITOR_CONFIG}
#: Libraries whose major version must match between the driver and the workers.
_MAJOR_CHECKED = ("polars", "pyarrow", "numpy", "lightgbm")


def worker_versions() -> dict[str, str]:
    """The versions this process runs: fpi, Python (major.minor) and the major
    versions of the libraries that decide results. Runs on every worker at connect."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"fpi": fpi.__version__,
           "python": ".".join(platform.python_version_tuple()[:2])}
    for name in _MAJOR_CHECKED:
        try:
            out[name] = version(name).split(".")[0]
        except PackageNotFoundError:
            out[name] = "missing"
    return out


def _describe(versions: dict[str, str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in versions.items())


class DaskEngine:
    """Runs tasks on a Dask cluster: one fpi starts, or one that already runs.

    Give at most one of ``workers`` (start a ``LocalCluster`` of that many
    single-threaded worker processes; default: one per core), ``scheduler`` (an
    address, ``tcp://host:8786``) or ``scheduler_file`` (the JSON file ``dask
    scheduler --scheduler-file`` writes). Raises :class:`~fpi.errors.EngineError`
    when the scheduler cannot be reached within ``timeout`` seconds, has no worker
    by then, or a worker runs other versions than this process.
    """

    name = "dask"

    def __init__(self, *, workers: int | None = None, scheduler: str | None = None,
                 scheduler_file: str | os.PathLike[str] | None = None,
                 timeout: float = DEFAULT_TIMEOUT, retries: int = 2) -> None:
        if sum(x is not None for x in (workers, scheduler, scheduler_file)) > 1:
            raise EngineError("give at most one of --workers, --scheduler and "
                              "--scheduler-file")
        if workers is not None and workers < 1:
            raise EngineError(f"--workers {workers}: give at least one worker")
        self.retries = retries
        self.timeout = timeout
        self._cluster: LocalCluster | None = None
        self._checked: set[str] = set()
        if scheduler is None and scheduler_file is None:
            self.address = "a local cluster"
            self._client = self._start_local(workers or available_cores())
        else:
            self.address = scheduler or _address_from_file(Path(scheduler_file or ""), timeout)
            self._client = self._connect(self.address)
        try:
            self._wait_for_workers()
            self._check_workers()
        except BaseException:
            self.close()
            raise

    # -- starting and connecting -------------------------------------------
    def _start_local(self, workers: int) -> Client:
        # The environment must be in place before a worker imports Polars (which reads
        # POLARS_MAX_THREADS once): the nanny sets it before the worker process starts.
        # The workers' statistical profiler samples every thread every 10 ms for the
        # dashboard's profile page, about a quarter of an idle cluster's CPU (measured:
        # 3.7 against 2.8 CPU-s per 30 s for two workers): off for the clusters fpi starts.
        # Given to each nanny (``config``), so a worker it restarts has it off too.
        # The scheduler and the nannies run here and read MONITOR_CONFIG when created.
        with dask.config.set(MONITOR_CONFIG):
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                   dashboard_address=":0", env=dict(WORKER_ENV),
                                   silence_logs=logging.ERROR, config=dict(WORKER_CONFIG),
                                   preload=[__name__])
        self._cluster = cluster
        return Client(cluster, set_as_default=False)

    def _connect(self, address: str) -> Client:
        try:
            return Client(address, timeout=self.timeout, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            reason = " ".join(str(exc).split())[:200] or type(exc).__name__
            raise EngineError(f"dask scheduler {address}: cannot be reached within "
                              f"{self.timeout:g} s ({reason})") from None

    def _wait_for_workers(self) -> None:
        try:
            self._client.wait_for_workers(1, timeout=self.timeout)
        except (OSError, TimeoutError):
            raise EngineError(f"dask scheduler {self.address}: no worker joined within "
                              f"{self.timeout:g} s") from None

    def _check_workers(self) -> None:
        """Refuse workers whose versions differ from this process's (each checked once)."""
        names = set(self._client.scheduler_info(n_workers=-1)["workers"])
        new = sorted(names - self._checked)
        if not new:
            return
        try:
            found = self._client.run(worker_versions, workers=new)
        except ImportError as exc:
            raise EngineError(f"dask scheduler {self.address}: a worker cannot import fpi "
                              f"({exc}); install the same fpi on every worker") from None
        mine = worker_versions()
        for worker, theirs in sorted(found.items()):
            if theirs != mine:
                raise EngineError(
                    f"dask worker {worker} runs {_describe(theirs)}, this process "
                    f"{_describe(mine)}; install the same fpi and libraries on every worker")
        self._checked.update(found)

    # -- the Engine protocol -----------------------------------------------
    @property
    def client(self) -> Client:
        """The ``distributed.Client`` (for what the protocol does not cover)."""
        return self._client

    @property
    def workers(self) -> int:
        return len(self._client.scheduler_info(n_workers=-1)["workers"])

    def map(self, fn: Callable[..., Any], items: Sequence[Any], *args: Any) -> list[Any]:
        items = list(items)
        if not items:
            return []
        self._check_workers()  # workers that joined since the last map
        # pure=False: fpi's tasks are pure, but hashing large arguments to name the
        # tasks would cost more than it saves.
        columns = [[a] * len(items) for a in args]
        return list(self._client.map(fn, items, *columns, retries=self.retries, pure=False))

    def gather(self, handles: Sequence[Any]) -> list[Any]:
        try:
            return list(self._client.gather(list(handles)))
        except distributed.KilledWorker as exc:
            raise EngineError(f"dask: a task's workers kept dying ({exc}); see the worker "
                              "logs (out of memory?)") from None

    def close(self) -> None:
        client, cluster = getattr(self, "_client", None), self._cluster
        self._cluster = None
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()

    def __enter__(self) -> DaskEngine:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def dask_setup(worker: object) -> None:
    """The preload of every worker of a cluster fpi starts (restarted ones too): the first
    ``import lightgbm`` of a task is lean, as in the ``fpi`` executable
    (:func:`fpi.lightgbm_import.lean_on_first_import`), and pyarrow's first conversion does
    not import pandas. Without it each worker process imported scikit-learn and pandas
    for LightGBM's wrappers, about 2 CPU-s per worker; distributed training gets them back
    (``with_wrappers``). A worker that never loads a model (``fpi ingest``) never imports
    LightGBM (importing it at start cost each worker about 0.25 CPU-s). Workers fpi does
    not start are left as they are.

    Also: the worker does not log a task's exception ("Compute Failed", with its
    traceback, at every retry). The driver raises it from ``gather`` and reports it (the
    ``fpi`` executable as its one ``error:`` line); the worker's copy broke that contract
    on stderr, which the workers fpi starts share with the executable."""
    from fpi.lightgbm_import import lean_on_first_import

    lean_on_first_import()
    logging.getLogger("distributed.worker").addFilter(_TaskErrorsToTheDriver())


class _TaskErrorsToTheDriver(logging.Filter):
    """Drops the worker's record of a task that raised (the driver reports it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Compute Failed")


def _address_from_file(path: Path, timeout: float) -> str:
    """The scheduler address in a ``dask scheduler --scheduler-file`` file.

    A scheduler writes the file as it starts: an empty or partial file is read
    again until ``timeout`` seconds have passed.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            break
        except FileNotFoundError:
            raise EngineError(f"--scheduler-file {path}: no such file (is the scheduler "
                              "running?)") from None
        except ValueError as exc:
            if time.monotonic() >= deadline:
                raise EngineError(f"--scheduler-file {path}: cannot be read as a Dask "
                                  f"scheduler file: {exc}") from None
            time.sleep(0.1)
        except OSError as exc:
            raise EngineError(f"--scheduler-file {path}: cannot be read as a Dask scheduler "
                              f"file: {exc}") from None
    address = doc.get("address") if isinstance(doc, dict) else None
    if not isinstance(address, str) or not address:
        raise EngineError(f"--scheduler-file {path}: names no scheduler address")
    return address
