"""Shared fixtures. Keep them small and deterministic."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

try:  # the session models are built once per run under a file lock (POSIX)
    import fcntl
except ImportError:  # pragma: no cover (Windows)
    fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:
    import polars as pl

# One thread everywhere: reproducible models and fair on a 2-core CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("POLARS_MAX_THREADS", "2")

# The suite imports fpi and its own modules in about a hundred processes (each xdist
# worker, every `fpi` and Dask process a test starts). Where the environment turns
# bytecode caching off (PYTHONDONTWRITEBYTECODE), each of them compiles the same sources
# again (and pytest rewrites every test module's asserts again on every run): about 7% of
# the suite's CPU on a 2-core machine. The suite lets Python cache bytecode as it does by
# default, in the git-ignored __pycache__ beside each source (a read-only checkout just
# skips the write).
sys.dont_write_bytecode = False
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

# In-process tests load LightGBM as the `fpi` executable does (without scikit-learn and
# pandas, which fpi does not use): about 3 CPU-s less per pytest process.
from fpi.lightgbm_import import lean_on_first_import  # noqa: E402 (after the settings above)

lean_on_first_import()

#: The quick and slow tiers (tests/tiers.py: a bare run leaves the slow tier out).
pytest_plugins = ("tiers",)

#: Where the controller keeps each test's seconds of the last run that ran it.
_TEST_SECONDS = "fpi/test-seconds"


def _test_file(nodeid: str) -> str:
    """The file of a test id: the unit `--dist loadfile` hands to one worker."""
    return nodeid.split("::", 1)[0]


def pytest_configure(config: pytest.Config) -> None:
    """Under xdist, the files whose tests took longest in the last runs go to the workers
    first, so that no worker is left running one long file while the other is idle
    (xdist's own order, most tests first, put the README's three long tests last). A
    file's seconds are those of its tests this run selected (the quick tier, the slow
    tier or both). The controller reads the seconds once and hands the same copy to every
    worker, which all order their collection by it; without a record of a previous run
    the order is xdist's."""
    cache = getattr(config, "cache", None)
    worker = getattr(config, "workerinput", None)
    seconds = worker.get(_TEST_SECONDS) if worker is not None else (
        cache.get(_TEST_SECONDS, None) if cache is not None else None) or _shipped_seconds()
    config.stash[_seconds_key] = seconds
    if seconds and worker is None and hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def _shipped_seconds() -> dict[str, float]:
    """Each test's seconds in runs of both tiers on a 2-core machine
    (tests/test_seconds.json, copied from a run's cache), so that a fresh checkout (CI)
    starts the longest files first too; a run's own record replaces it. Only the order of
    the files depends on it."""
    path = Path(__file__).with_name("test_seconds.json")
    return dict(json.loads(path.read_text())) if path.is_file() else {}


_seconds_key = pytest.StashKey[dict[str, float]]()
#: Seconds of each test this run (in the controller: of every worker's tests).
_ran: dict[str, float] = {}


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """The controller's copy of the test seconds, for a worker."""
    node.workerinput[_TEST_SECONDS] = node.config.stash[_seconds_key]


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    seconds = config.stash[_seconds_key]
    if not seconds:
        return
    files: dict[str, float] = {}
    for item in items:  # the selected tests (tests/tiers.py has deselected the others)
        name = _test_file(item.nodeid)
        files[name] = files.get(name, 0.0) + seconds.get(item.nodeid, 0.0)
    # stable: each file's tests stay together, in pytest-randomly's order
    items.sort(key=lambda item: -files[_test_file(item.nodeid)])


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _ran[report.nodeid] = _ran.get(report.nodeid, 0.0) + report.duration


def pytest_sessionfinish(session: pytest.Session) -> None:
    cache = getattr(session.config, "cache", None)
    if cache is not None and _ran and not hasattr(session.config, "workerinput"):
        cache.set(_TEST_SECONDS, {**session.config.stash[_seconds_key],
                                  **{name: round(s, 3) for name, s in _ran.items()}})


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="rewrite tests/golden/* from this run instead of comparing "
                          "(also FPI_UPDATE_GOLDEN=1); review the diff before committing")


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    """True when golden files are to be rewritten (never when one is merely missing)."""
    return bool(request.config.getoption("--update-golden")) or (
        os.environ.get("FPI_UPDATE_GOLDEN") == "1")


def _small_turns() -> pl.DataFrame:
    """``make_turns(300, seed=0)`` (763 labelled turns)."""
    from tiny_turns import make_turns  # after the thread settings above

    return make_turns(300, seed=0)


@pytest.fixture(scope="session")
def small_turns() -> pl.DataFrame:
    """The session model's training data (:func:`_small_turns`)."""
    return _small_turns()


def _built_once(factory: pytest.TempPathFactory, name: str,
                build: Callable[[Path], object]) -> Path:
    """``build(where)`` once per run, ``where`` being returned: the first xdist worker that
    asks builds it under a lock in the run's base directory (shared by the workers) and
    the others wait for it and use the same files, so a session model is trained once
    per run, not once per worker. Without ``fcntl`` (Windows) each worker builds its own."""
    base = factory.getbasetemp()
    shared = fcntl is not None and os.environ.get("PYTEST_XDIST_WORKER") is not None
    root = (base.parent if shared else base) / "built-once"
    root.mkdir(exist_ok=True)
    where, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(where, ignore_errors=True)  # what a worker that died left
            build(where)
            done.touch()
    return where


@pytest.fixture(scope="session")
def small_bundle(tmp_path_factory: pytest.TempPathFactory):
    """The session's one trained model (few rounds, one thread, one fit at a time, seed
    0), on ``small_turns``' data: a ``TrainResult`` whose bundle is loaded from its
    directory (trained once per run; tests/test_model.py checks a bundle fitted in memory
    against its saved copy).

    Tests that need "a model" use it; only tests of training itself train their own.
    Tests must not change it: copy it (``shutil.copytree``) before editing.
    """
    from fpi.model import TrainResult, load_bundle, train

    def build(where: Path) -> None:
        train(_small_turns(), where / "model", seed=0, threads=1,
              num_boost_round=25, early_stopping_rounds=5, jobs=1)

    bundle = load_bundle(_built_once(tmp_path_factory, "small-bundle", build) / "model")
    assert bundle.path is not None
    return TrainResult(bundle.path, bundle.manifest, bundle)


@pytest.fixture(scope="session")
def night_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model of realistic nights: 4,000 simulated baseline turns (seed 0), 40 rounds,
    two folds and no parameter search or no-context model, so it trains in about two
    CPU-seconds (once per run). The story and regression tests diagnose whole simulated
    nights with it (at this size the true rate of every class still lies inside its
    interval on each of their nights, as with 6,000 turns and 60 rounds); copy it before
    editing."""
    from fpi.model import train
    from fpi.simulate import simulate_frame

    def build(where: Path) -> None:
        train(simulate_frame(4000, seed=0, profile="baseline"), where / "model", seed=0,
              threads=1, num_boost_round=40, early_stopping_rounds=10, folds=2,
              search=False, no_context=False)

    return _built_once(tmp_path_factory, "night-model", build) / "model"


@pytest.fixture(scope="module")
def dask_cluster() -> Iterator[Any]:
    """A DaskEngine on fpi's own LocalCluster of one single-threaded worker process,
    started by the first test of a module that asks for it and stopped after that module
    (an idle cluster still costs CPU). For what needs a real process: per-process values,
    the environment, configuration and preload fpi gives the workers it starts, a worker
    that dies (its nanny starts it again, so every rerun happens in a new process) and a
    worker running another fpi than the driver. One worker: each worker process costs
    about 1 CPU-s to start and 1 more to load LightGBM and a model; the tests that need
    several workers use ``dask_threads``."""
    from fpi.engine.dask import DaskEngine

    with DaskEngine(workers=1, timeout=60) as engine:
        yield engine


@pytest.fixture(scope="module")
def dask_threads() -> Iterator[Any]:
    """A DaskEngine on an in-process cluster: a scheduler and two single-threaded workers
    on threads of this process, talking over TCP, so every task, argument and result is
    pickled and sent as between processes (no process to start: about 0.1 CPU-s for the
    cluster). For tests whose point is the same result on a cluster of several workers,
    not process boundaries. Not for what a real worker process would show otherwise:
    per-process values (shared with the driver here: a diagnose worker finds the
    driver's bundle), the workers' environment and preload, a worker's death, another
    fpi version: those use ``dask_cluster``."""
    import logging

    import dask
    from distributed import LocalCluster

    from fpi.engine.dask import MONITOR_CONFIG, DaskEngine

    with (dask.config.set(MONITOR_CONFIG),
          LocalCluster(n_workers=2, threads_per_worker=1, processes=False, protocol="tcp://",
                       dashboard_address=":0", silence_logs=logging.ERROR) as cluster,
          DaskEngine(scheduler=cluster.scheduler_address, timeout=60) as engine):
        yield engine


def _written(path: Path) -> bool:
    """Whether the scheduler has finished writing its file (it is valid JSON)."""
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


@pytest.fixture(scope="module")
def scheduler_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``dask scheduler`` and ``dask worker`` as separate processes, as on a cluster,
    started by the first test of a module that asks for them and stopped after that
    module (the worker without its statistical profiler, and both checking their event
    loop and sampling CPU and memory as rarely as fpi's own clusters); tests must not stop
    them. The worker runs without a nanny (``--no-nanny``: one process, not a nanny
    process and the worker it spawns); the tests that kill a worker use ``dask_cluster``,
    whose nannies restart it."""
    from fpi.engine.dask import WORKER_CONFIG

    where = tmp_path_factory.mktemp("dask")
    path = where / "scheduler.json"
    # fpi's worker configuration as Dask reads it from the environment
    config = {"DASK_" + key.upper().replace(".", "__").replace("-", "_"): str(value)
              for key, value in WORKER_CONFIG.items()}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get(
        "PYTHONPATH", "")]), **config}
    dask = [sys.executable, "-m", "dask"]
    procs = [subprocess.Popen([*dask, "scheduler", "--scheduler-file", str(path), "--port",
                               "0", "--no-dashboard"], env=env, cwd=where,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        procs.append(subprocess.Popen(
            [*dask, "worker", "--scheduler-file", str(path), "--nthreads", "1", "--no-nanny",
             "--no-dashboard", "--local-directory", str(where)], env=env, cwd=where,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 60
        while not _written(path) and time.monotonic() < deadline:
            time.sleep(0.1)
        yield path
    finally:
        # the worker first, then the scheduler: a worker told to stop while its scheduler
        # closes could hang in its own shutdown (then the wait timed out after 20 s)
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="session", autouse=True)
def _command_tree_built_once() -> Iterator[None]:
    """Typer's test runner (``CliRunner.invoke``, tests/cli_run.py's ``in_process``) builds
    fpi's whole Click command tree anew for each invocation: about 60 ms, half the cost of
    a short command. Here each app's tree is built once per session (Click runs a command
    object any number of times; a test that changes the app itself must build its own)."""
    import typer.testing

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(typer.testing, "_get_command", functools.cache(typer.testing._get_command))
        yield


@pytest.fixture(autouse=True)
def _outside_github_actions(monkeypatch: pytest.MonkeyPatch) -> None:
    """`fpi diagnose` annotates and writes the job summary under GitHub Actions: a test run
    in CI must not append to the real $GITHUB_STEP_SUMMARY (tests that want it set it)."""
    for var in ("GITHUB_ACTIONS", "GITHUB_STEP_SUMMARY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="session", autouse=True)
def _compiled_model_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Compiled predictors (fpi.model.compiled) go to a per-run directory, not ~/.cache; child
    `fpi` processes inherit it, so each test model compiles once per run."""
    if "FPI_CACHE_DIR" not in os.environ:
        os.environ["FPI_CACHE_DIR"] = str(tmp_path_factory.mktemp("fpi-cache"))


#: The published JSON Schema of summary.json.
SUMMARY_SCHEMA = Path(__file__).parent.parent / "docs" / "summary.schema.json"


@pytest.fixture(scope="session", autouse=True)
def _summaries_follow_the_schema() -> Iterator[None]:
    """Every summary an in-process diagnose run of any test writes validates against the
    published schema (a summary that does not fails that test with the schema's error)."""
    import jsonschema

    from fpi.diagnose import run as run_module

    validator = jsonschema.Draft202012Validator(json.loads(SUMMARY_SCHEMA.read_text()))
    real = run_module.write_reports

    def checked(summary: dict[str, Any], stage: Path) -> Any:
        validator.validate(summary)
        return real(summary, stage)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(run_module, "write_reports", checked)
        yield
