"""Model fits at once (fpi.model.parallel): the same bundle whatever ``jobs`` is, results
in order, at most ``at_once`` fits running, and one failure stops the others."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from fpi.errors import InputError
from fpi.model import train
from fpi.model.parallel import Fits, FitsStopped, fits_at_once

BUNDLE_FILES = ("manifest.json", "model.txt", "model_no_context.txt", "learned.json")


def _same_bundle(a: Path, b: Path) -> None:
    for name in BUNDLE_FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_one_candidate_fits_every_fold_and_the_no_context_model_at_once(
        small_turns: pl.DataFrame, tmp_path: Path) -> None:
    # (the session model's search candidates and folds two at a time:
    # tests/test_model.py::test_training_is_byte_identical). On half the session model's
    # turns, three folds and ten rounds: the fits run side by side as on more
    kw: dict[str, Any] = dict(seed=0, threads=1, num_boost_round=10, early_stopping_rounds=5,
                              search=False, folds=3)
    turns = small_turns.head(small_turns.height // 2)
    one = train(turns, tmp_path / "one", jobs=1, **kw)
    many = train(turns, tmp_path / "many", jobs=4, **kw)
    _same_bundle(one.path, many.path)
    assert one.manifest["no_context"] is not None


def test_jobs_must_be_positive(small_turns: pl.DataFrame, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="jobs must be at least 1"):
        train(small_turns, tmp_path / "m", jobs=0)


@pytest.mark.parametrize(("jobs", "threads", "expected"), [(4, 1, 4), (4, 2, 2), (3, 2, 1),
                                                           (1, 4, 1)])
def test_fits_at_once_divides_the_cores_by_the_threads(jobs: int, threads: int,
                                                      expected: int) -> None:
    assert fits_at_once(jobs, threads) == expected
    assert fits_at_once(None, 1) >= 1


def test_map_keeps_the_order_and_the_cap() -> None:
    fits = Fits(2)
    running, most, lock = [0], [0], threading.Lock()

    def job(i: int) -> int:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.02 * (5 - i))  # the first ones finish last
        with lock:
            running[0] -= 1
        return i * i

    finished: list[int] = []
    assert fits.map([lambda i=i: job(i) for i in range(5)], finished.append) == [
        0, 1, 4, 9, 16]
    assert most[0] == 2
    assert finished == [1, 2, 3, 4, 5]


def test_a_failed_fit_stops_the_others_and_its_error_is_raised() -> None:
    fits = Fits(2)
    stop = fits.callback()
    rounds = [0]

    def long_fit() -> None:
        for _ in range(500):  # a fit checks the stop at each round, as LightGBM's callback
            stop(None)
            rounds[0] += 1
            time.sleep(0.01)

    def failing() -> None:
        time.sleep(0.05)
        raise ValueError("bad fold")

    with pytest.raises(ValueError, match="bad fold"):
        fits.map([long_fit, failing, long_fit])
    assert rounds[0] < 100  # stopped long before its 500 rounds
    with pytest.raises(FitsStopped):
        fits.fit(lambda: None)  # and nothing new starts


def test_one_at_a_time_runs_here_in_order() -> None:
    fits = Fits(1)
    where: list[str] = []
    out = fits.map([lambda: where.append(threading.current_thread().name) or 1,
                    lambda: 2])
    assert out == [1, 2]
    assert where == [threading.current_thread().name]


_INTERRUPTED = """
import os, signal, sys, threading, time
sys.path.insert(0, sys.argv[2])
from fpi.lightgbm_import import import_lean
import_lean()  # as the fpi executable: without scikit-learn and pandas (2 CPU-s)
from tiny_turns import make_turns
from fpi.model import train

fired = []

def progress(stage, done, total):
    if stage.startswith("cross-fitting") and not fired:  # the fits have started
        fired.append(time.monotonic())
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()

try:  # rounds enough for minutes of boosting
    train(make_turns(300, seed=0), sys.argv[1], seed=0, threads=1, jobs=2,
          params={"learning_rate": 0.001}, num_boost_round=100_000,
          early_stopping_rounds=100_000, no_context=True, progress=progress)
except KeyboardInterrupt:
    print(f"interrupted {time.monotonic() - fired[0] - 0.5:.2f}")
"""


@pytest.mark.slow
def test_ctrl_c_stops_fits_running_side_by_side_at_once(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", _INTERRUPTED, str(tmp_path / "m"),
                           str(Path(__file__).parent)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    word, seconds = done.stdout.split()
    assert word == "interrupted" and float(seconds) < 10
    assert not (tmp_path / "m").exists()
