"""fpi diagnose on every engine and partitioning gives the same summary.json: the local
engine over one file and over a partitioned directory of 3 parts; ``fpi diagnose`` on a
cluster of two workers (tests/conftest.py's ``dask_threads``: threads of this process,
every task and result pickled over TCP); and fpi's LocalCluster of one worker process
(``dask_cluster``) whose worker dies in the run. A worker that reads another model
than the driver is refused, and a part holding another part's session is refused by a
cluster the ``fpi`` executable starts itself (``--workers``). (A scheduler and a worker
started as separate processes are tested on cheaper work in test_engine_dask.py.)"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
import pytest
from cli_run import in_process
from dask_tasks import die_first, environment, lightgbm_is_lean
from tiny_turns import make_turns

import fpi
from fpi.diagnose import partition
from fpi.errors import ModelError
from fpi.ingest.partition import ingest_partitioned
from fpi.model import train

if TYPE_CHECKING:  # Dask is imported by the fixtures that start a cluster
    from fpi.engine.dask import DaskEngine

#: Clusters and the executable's own: the slow tier (``-m slow``; CI runs it). The quick
#: tier's Dask tests are test_engine_dask.py's and test_train_engine.py's.
pytestmark = pytest.mark.slow

#: Settings that exercise every mergeable block (sample attribution, examples, focus
#: examples, slices), as API keywords and as CLI options.
OPTS: dict[str, Any] = {"attribution_sample": 60, "min_support": 20, "seed": 3}
CLI_OPTS = ["--attribution-sample", "60", "--min-support", "20", "--seed", "3"]


def _fpi(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fpi", *map(str, args)], capture_output=True,
                          text=True, timeout=600, check=False)


def _comparable(summary: dict[str, Any]) -> dict[str, Any]:
    """The summary without what names the run rather than the night (run metadata, the
    input's file name)."""
    return {k: v for k, v in summary.items() if k not in ("run", "inputs")}


@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 1,500 turns of 600 sessions: every block of the summary that OPTS asks for
    has rows (as with 2.5 times as many; each scoring costs less)."""
    path = tmp_path_factory.mktemp("dask-night") / "night.parquet"
    turns = make_turns(600, seed=11)
    assert 1000 <= turns.height <= 2000
    turns.write_parquet(path)
    return path


@pytest.fixture(scope="module")
def local(night: Path, small_bundle, tmp_path_factory: pytest.TempPathFactory
          ) -> dict[str, Any]:
    """The local engine's summary, in process (the tests below run ``fpi`` for the CLI)."""
    out = tmp_path_factory.mktemp("dask-local") / "out"
    return fpi.diagnose(night, model=small_bundle.path, out_dir=out, **OPTS).summary


@pytest.fixture(scope="module")
def night_parts(night: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``night`` ingested into 3 parts (more than a cluster's workers and not a multiple
    of 2; the merged blocks of 1, 4 and 7 parts are compared one by one in
    test_diagnose_partition.py)."""
    turns = tmp_path_factory.mktemp("dask-night-parts") / "turns"
    ingest_partitioned([night], turns, 3)
    return turns


def _predictions_are_complete(out: Path, summary: dict[str, Any], night: Path,
                              parts: int) -> None:
    """One predictions part per partition, together every turn of the night once, with
    contributions for the turns the summary says were attributed."""
    written = sorted(p.name for p in (out / "predictions").iterdir())
    assert written == [f"part-{i:05d}.parquet" for i in range(parts)]
    pred = pl.read_parquet(out / "predictions" / "*.parquet")
    assert pred.height == summary["turns"] == pl.read_parquet(night).height
    assert pred.select("session_id", "turn_index").is_unique().all()
    assert pred.filter(pl.col("contrib_bias").is_not_null()).height == (
        summary["attribution"]["turns_attributed"])


def test_the_command_on_a_cluster_of_two_workers_gives_the_same_summary(
        night: Path, small_bundle, local: dict[str, Any], tmp_path: Path,
        dask_threads: DaskEngine) -> None:
    """``fpi diagnose --engine dask --scheduler-file`` on the module's two-worker cluster
    (its file written here: the address is all fpi reads from one): one night cut into
    one partition per worker. The command runs in this process (the executable's road on
    a cluster, to its exit and error line, is the refused part's test below)."""
    scheduler = tmp_path / "scheduler.json"
    scheduler.write_text(json.dumps({"address": dask_threads.client.scheduler.address}))
    out = tmp_path / "out"
    res = in_process("diagnose", night, "--model", small_bundle.path, "--out", out,
                     "--engine", "dask", "--scheduler-file", scheduler, *CLI_OPTS)
    assert res.returncode == 0, res.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert _comparable(summary) == _comparable(local)
    _predictions_are_complete(out, summary, night, dask_threads.workers)


def test_a_partitioned_directory_gives_the_same_summary(night: Path, night_parts: Path,
                                                         small_bundle,
                                                         local: dict[str, Any],
                                                         tmp_path: Path) -> None:
    """On the local engine (its parts as Dask workers would take them)."""
    res = fpi.diagnose(night_parts, model=small_bundle.path, out_dir=tmp_path / "out", **OPTS)
    assert _comparable(res.summary) == _comparable(local)
    _predictions_are_complete(tmp_path / "out", res.summary, night, 3)


def test_a_part_holding_another_parts_session_is_refused(small_bundle,
                                                          tmp_path: Path) -> None:
    """On a cluster of one worker that the ``fpi`` executable starts itself (``--workers``;
    the local engine's check is test_diagnose_partition's): the error the worker's task
    raised is the run's one line, and the executable stops its cluster and exits."""
    make_turns(120, seed=11).write_parquet(tmp_path / "small.parquet")  # little to score
    turns = tmp_path / "turns"
    ingest_partitioned([tmp_path / "small.parquet"], turns, 3)
    shutil.copy(turns / "part-00001.parquet", turns / "part-00002.parquet")
    res = _fpi("diagnose", turns, "--model", small_bundle.path, "--out", tmp_path / "out",
               "--engine", "dask", "--workers", "1")
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "part-00002.parquet: session" in lines[0] and "belongs to part 1 of 3" in lines[0]
    assert not (tmp_path / "out").exists()


def test_a_worker_reading_another_model_is_refused(night: Path, small_bundle, tmp_path: Path,
                                                   dask_cluster: DaskEngine) -> None:
    """The driver holds a model trained here, which no worker can have kept from an earlier
    test (a worker keeps the bundles it has read, by hash); the files now hold another.
    (A worker process: on threads of this process it would find the driver's bundle.)"""
    model = tmp_path / "model"
    train(make_turns(200, seed=9), model, seed=0, threads=1, num_boost_round=5,
          early_stopping_rounds=2, search=False, no_context=False)
    bundle = fpi.load_bundle(model)  # what the driver holds
    shutil.rmtree(model)
    shutil.copytree(small_bundle.path, model)  # the files changed under the run
    with pytest.raises(ModelError) as info:
        fpi.diagnose(night, model=bundle, out_dir=tmp_path / "out", engine=dask_cluster,
                     attribution="none")
    message = str(info.value)
    assert "\n" not in message
    assert f"{model}: a worker read model" in message and "the driver uses" in message
    assert not (tmp_path / "out").exists()


class _Killing:
    """The cluster, except that the first task of each victim (a function, with the
    marker file its death creates) kills its worker process."""

    name = "dask"

    def __init__(self, engine: DaskEngine, victims: dict[Callable[..., Any], Path]) -> None:
        self.engine, self.victims = engine, victims

    @property
    def workers(self) -> int:
        return self.engine.workers

    def map(self, fn: Callable[..., Any], items: Sequence[Any], *args: Any) -> list[Any]:
        if fn in self.victims:
            fn = partial(die_first, fn=fn, marker=str(self.victims[fn]))
        return self.engine.map(fn, items, *args)

    def gather(self, handles: Sequence[Any]) -> list[Any]:
        return self.engine.gather(handles)

    def close(self) -> None:
        return None


def test_workers_killed_inside_diagnose_give_the_same_summary(
        night: Path, night_parts: Path, small_bundle, local: dict[str, Any],
        tmp_path: Path, dask_cluster: DaskEngine) -> None:
    """One run of the 3 parts on one worker process, which dies in the first EM round,
    after scoring: the task in flight and every scored partition the worker held are
    lost. Dask runs them again in the new process its nanny starts (which loads the model
    again) and the summary and predictions are the same. (Also the test of DaskEngine
    with a dying worker: a task in flight and the results held run again.)"""
    died = tmp_path / "died-em"
    killing = _Killing(dask_cluster, {partition.em_step: died})
    out = tmp_path / "out"
    res = fpi.diagnose(night_parts, model=small_bundle.path, out_dir=out, engine=killing,
                       **OPTS)  # type: ignore[arg-type]
    assert died.exists()  # the worker really died
    assert _comparable(res.summary) == _comparable(local)
    _predictions_are_complete(out, res.summary, night, 3)
    # the nanny restarts it (a new process importing fpi: slow on a loaded machine)
    dask_cluster.client.wait_for_workers(1, timeout=300)
    # the restarted worker runs as fpi starts its workers: one thread
    # (POLARS_MAX_THREADS and OMP_NUM_THREADS 1), no profiler...
    got = dask_cluster.gather(dask_cluster.map(environment, range(2)))
    assert set(got) == {("1", "1", 1, False)}
    # ...and it imports LightGBM lean (fpi's preload): without scikit-learn and pandas,
    # which a worker that scored would otherwise hold
    lean = dask_cluster.client.run(lightgbm_is_lean)
    assert list(lean.values()) == [True]
