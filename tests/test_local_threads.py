"""The local engine's threads: partitions scored a few at a time give the very same outputs
as one at a time; a failing task surfaces as itself once no task runs; pool threads leave
signals to the main thread."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cli_run import in_process
from tiny_turns import make_turns

import fpi.engine
from fpi.diagnose import diagnose
from fpi.engine import (
    LocalEngine,
    default_threads,
    engine_from_options,
    signals_to_main_thread,
    task_threads,
)
from fpi.errors import EngineError

#: Three partitions of whole sessions (the night has 294 turns; a diagnose run costs about
#: as much on 900: its cost is per partition and per run, not per turn).
SMALL = {"batch_turns": 100, "n_boot": 30, "min_support": 20, "attribution_sample": 60,
         "seed": 4}


@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("threads") / "night.parquet"
    make_turns(120, seed=11).write_parquet(path)
    return path


def outputs(out: Path) -> dict[str, bytes]:
    """Every prediction file's bytes, and summary.json without its ``run`` block."""
    summary = json.loads((out / "summary.json").read_text())
    summary.pop("run")
    files = {p.name: p.read_bytes() for p in sorted((out / "predictions").iterdir())}
    return {"summary.json": json.dumps(summary, sort_keys=True).encode(), **files}


@pytest.mark.parametrize("attribution", ["sample", "all"])
def test_threads_give_the_same_outputs(small_bundle, night: Path, tmp_path: Path,
                                       attribution: str) -> None:
    got = {}
    for threads in (1, 3):
        with LocalEngine(threads) as engine:
            diagnose([night], model=small_bundle.path, out_dir=tmp_path / str(threads),
                     engine=engine, attribution=attribution, **SMALL)
        got[threads] = outputs(tmp_path / str(threads))
    assert len(got[1]) == 4  # the summary and three partitions' predictions
    assert got[3] == got[1]


def test_the_command_takes_threads(small_bundle, night: Path, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """``--threads 2`` reaches the local engine, and gives the library's outputs."""
    with LocalEngine(1) as engine:
        diagnose([night], model=small_bundle.path, out_dir=tmp_path / "lib", engine=engine,
                 attribution="none", n_boot=20, min_support=20)
    made: list[int] = []

    class Recorded(LocalEngine):
        def __init__(self, threads: int) -> None:
            made.append(threads)
            super().__init__(threads)

    monkeypatch.setattr(fpi.engine, "LocalEngine", Recorded)
    # in process: `fpi diagnose` runs through the executable in many other tests
    proc = in_process("diagnose", night, "--model", small_bundle.path, "--out",
                      tmp_path / "cli", "--attribution", "none", "--threads", "2")
    assert proc.returncode == 0, proc.stderr
    assert made == [2]
    lib, cli = outputs(tmp_path / "lib"), outputs(tmp_path / "cli")
    assert cli.keys() == lib.keys()
    assert [cli[k] for k in cli if k != "summary.json"] == [lib[k] for k in lib
                                                              if k != "summary.json"]


def _square(x: int) -> int:
    time.sleep(0.001 * (5 - x % 5))  # later items often finish first
    return x * x


def test_results_come_in_item_order() -> None:
    with LocalEngine(3) as engine:
        assert engine.map(_square, range(12)) == [x * x for x in range(12)]
        assert engine.gather(engine.map(_square, [4])) == [16]
        assert engine.workers == 1  # work is partitioned as for one process


class _Tasks:
    """Tasks that count how many run at once; ``fail`` raise."""

    def __init__(self, fail: set[int]) -> None:
        self.fail, self.running, self.started = fail, 0, 0
        self.lock = threading.Lock()

    def __call__(self, x: int) -> int:
        with self.lock:
            self.running += 1
            self.started += 1
        try:
            time.sleep(0.02)
            if x in self.fail:
                raise ValueError(f"task {x} failed")
            return x
        finally:
            with self.lock:
                self.running -= 1


def test_a_failing_task_is_raised_once_no_task_runs() -> None:
    tasks = _Tasks(fail={3, 5})
    with LocalEngine(2) as engine:
        with pytest.raises(ValueError, match="task 3 failed"):  # the first in item order
            engine.map(tasks, range(40))
        assert tasks.running == 0
        assert tasks.started < 40  # the rest were cancelled
        assert engine.map(tasks, [1, 2]) == [1, 2]  # the engine still works


def _blocked(_: int) -> set[int]:
    return set(signal.pthread_sigmask(signal.SIG_BLOCK, []))


def _started_thread_blocked() -> set[int]:
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(_blocked, 0).result()


def test_pool_threads_leave_signals_to_the_main_thread() -> None:
    with LocalEngine(2) as engine:
        for mask in engine.map(_blocked, range(4)):
            assert {signal.SIGINT, signal.SIGTERM} <= mask
    assert signal.SIGINT not in _blocked(0)
    # diagnose's side thread (the predictor's check, TreeSHAP) and the threads it starts
    with ThreadPoolExecutor(1, initializer=signals_to_main_thread) as side:
        inner = side.submit(_started_thread_blocked)
        assert {signal.SIGINT, signal.SIGTERM} <= side.submit(_blocked, 0).result()
        assert {signal.SIGINT, signal.SIGTERM} <= inner.result()


def _share_together(barrier: threading.Barrier) -> int | None:
    barrier.wait(timeout=30)  # both tasks are running
    share = task_threads()
    barrier.wait(timeout=30)
    return share


def _share_alone(item: tuple[int, threading.Event]) -> int | None:
    index, first_done = item
    if index == 0:  # ends at once
        first_done.set()
        return None
    first_done.wait(timeout=30)  # then the other: its share once it runs alone
    deadline = time.monotonic() + 30
    while task_threads() != len(os.sched_getaffinity(0)) and time.monotonic() < deadline:
        time.sleep(0.01)
    return task_threads()


def test_a_task_gets_its_share_of_the_cores() -> None:
    cores = len(os.sched_getaffinity(0))
    with LocalEngine(2) as engine:
        barrier = threading.Barrier(2)
        assert engine.map(_share_together, [barrier, barrier]) == [max(1, cores // 2)] * 2
        done = threading.Event()
        assert engine.map(_share_alone, [(0, done), (1, done)]) == [None, cores]  # alone
    assert task_threads() is None  # elsewhere: the caller's own default


def test_threads_options() -> None:
    assert 1 <= default_threads() <= 4
    engine = engine_from_options("local", threads=None)
    assert isinstance(engine, LocalEngine) and engine.threads == default_threads()
    assert engine_from_options("local").threads == 1  # type: ignore[attr-defined]
    with pytest.raises(EngineError, match="--threads needs --engine local"):
        engine_from_options("dask", threads=2)
    with pytest.raises(EngineError, match="at least 1"):
        LocalEngine(0)
