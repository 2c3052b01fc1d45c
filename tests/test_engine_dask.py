"""The Dask engine on clusters: handles and partitioned ingest on an in-process cluster of
two workers (tests/conftest.py's ``dask_threads``: threads, but every task pickled over
TCP); a scheduler and a worker started as separate processes (``scheduler_file``), which
also show what takes a worker process (per-process values, another fpi version than the
driver's). The workers fpi's own LocalCluster starts (their settings, one that dies and
has its tasks run again) are tested in test_diagnose_dask.py, on a night's diagnosis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from dask_tasks import loaded_once, plus_one, scaled

import fpi
from fpi.engine import Engine, LocalEngine, engine_from_options
from fpi.engine.dask import DaskEngine, worker_versions
from fpi.errors import EngineError
from fpi.ingest.partition import MANIFEST, ingest_partitioned


def test_a_cluster_maps_and_chains_handles(dask_threads: DaskEngine) -> None:
    cluster = dask_threads
    assert isinstance(cluster, Engine)
    assert cluster.workers == 2
    handles = cluster.map(scaled, range(6), 10)
    chained = cluster.map(plus_one, handles)  # values stay on the workers in between
    assert cluster.gather(chained) == [1, 11, 21, 31, 41, 51]
    assert cluster.gather(handles) == LocalEngine().map(scaled, range(6), 10)
    factor = cluster.map(plus_one, [9])[0]  # a handle as the shared argument
    assert cluster.gather(cluster.map(scaled, [1, 2], factor)) == [10, 20]
    assert cluster.map(plus_one, []) == []


@pytest.fixture(scope="module")
def separate(scheduler_file: Path) -> Iterator[Engine]:
    """The engine on tests/conftest.py's ``dask scheduler`` and ``dask worker`` processes."""
    with engine_from_options("dask", scheduler_file=scheduler_file, timeout=60) as engine:
        yield engine


@pytest.mark.slow
def test_per_process_values_are_made_once_per_worker(separate: Engine) -> None:
    got = separate.gather(separate.map(loaded_once, range(8), "bundle"))
    assert all(pid == made for pid, made in got)  # made where used, never shipped
    assert len(set(got)) == separate.workers == 1  # once per worker process
    assert os.getpid() not in {pid for pid, _ in got}  # in the worker, not here


def test_partitioned_ingest_on_the_cluster_equals_the_local_one(dask_threads: DaskEngine,
                                                                tmp_path: Path) -> None:
    records = [{"session_id": f"s-{k % 9}", "turn_index": k, "wake": {"detected": True}}
               for k in range(60)]
    for name, part in (("a.jsonl", records[:40]), ("b.jsonl", records[25:])):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in part))
    inputs = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    local = ingest_partitioned(inputs, tmp_path / "local", 3)
    remote = ingest_partitioned(inputs, tmp_path / "remote", 3, engine=dask_threads)
    assert remote.rejects_by_rule == local.rejects_by_rule == {"duplicate_turn": 15}
    manifests = [json.loads((tmp_path / d / MANIFEST).read_text()) for d in ("local", "remote")]
    assert manifests[0]["parts"] == manifests[1]["parts"]  # same bytes (sha256) per part


@pytest.mark.slow
def test_version_mismatch_is_refused(separate: Engine, scheduler_file: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker process that runs fpi 0.1.0 while this process says another version
    (``separate``: once the worker has joined)."""
    monkeypatch.setattr(fpi, "__version__", "0.0.0+elsewhere")
    with pytest.raises(EngineError, match=r"dask worker tcp://\S+ runs fpi 0\.1\.0.*this "
                                          r"process fpi 0\.0\.0\+elsewhere"):
        DaskEngine(scheduler_file=scheduler_file, timeout=10)
    monkeypatch.undo()
    assert worker_versions()["fpi"] == fpi.__version__


def test_unreachable_scheduler_fails_within_the_timeout() -> None:
    start = time.monotonic()
    with pytest.raises(EngineError, match=r"tcp://127\.0\.0\.1:9: cannot be reached within 1 s"):
        DaskEngine(scheduler="tcp://127.0.0.1:9", timeout=1)
    assert time.monotonic() - start < 10


def test_options_are_checked() -> None:
    with pytest.raises(EngineError, match="--workers needs --engine dask"):
        engine_from_options("local", workers=2)
    with pytest.raises(EngineError, match="unknown engine 'spark'"):
        engine_from_options("spark")
    with pytest.raises(EngineError, match="at most one of"):
        DaskEngine(workers=2, scheduler="tcp://127.0.0.1:9")
    with pytest.raises(EngineError, match="no such file"):
        DaskEngine(scheduler_file="/nonexistent/scheduler.json")
    assert isinstance(engine_from_options("local"), LocalEngine)


def test_fpi_does_not_import_dask() -> None:
    """Nor does the ``fpi`` executable's script import the CLI before it runs it: every
    Dask worker that ``fpi --workers`` spawns runs that script again."""
    pyproject = Path(__file__).parent.parent / "pyproject.toml"
    module, name = tomllib.loads(pyproject.read_text())["project"]["scripts"]["fpi"].split(":")
    code = (f"import sys; from {module} import {name}; cli = 'fpi.cli' in sys.modules; "
            "import fpi, fpi.engine, fpi.cli; "
            "print(cli, any(m.split('.')[0] in ('dask', 'distributed') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.slow
def test_separate_scheduler_and_worker_processes(separate: Engine) -> None:
    assert separate.name == "dask" and separate.workers == 1
    assert separate.gather(separate.map(plus_one, separate.map(scaled, [1, 2], 3))) == [4, 7]
