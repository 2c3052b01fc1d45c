"""The Dask engine on real process clusters: a LocalCluster of two workers (one per
module), and a scheduler and a worker started as separate processes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from dask_tasks import die_once, environment, loaded_once, plus_one, scaled

import fpi
from fpi.engine import Engine, LocalEngine, engine_from_options
from fpi.engine.dask import DaskEngine, worker_versions
from fpi.errors import EngineError
from fpi.ingest.partition import MANIFEST, ingest_partitioned


@pytest.fixture
def cluster(dask_cluster: DaskEngine) -> DaskEngine:
    return dask_cluster  # tests/conftest.py: one local cluster per test module


def test_local_cluster_maps_and_chains_handles(cluster: DaskEngine) -> None:
    assert isinstance(cluster, Engine)
    assert cluster.workers == 2
    handles = cluster.map(scaled, range(6), 10)
    chained = cluster.map(plus_one, handles)  # values stay on the workers in between
    assert cluster.gather(chained) == [1, 11, 21, 31, 41, 51]
    assert cluster.gather(handles) == LocalEngine().map(scaled, range(6), 10)
    factor = cluster.map(plus_one, [9])[0]  # a handle as the shared argument
    assert cluster.gather(cluster.map(scaled, [1, 2], factor)) == [10, 20]
    assert cluster.map(plus_one, []) == []


def test_per_process_values_are_made_once_per_worker(cluster: DaskEngine) -> None:
    got = cluster.gather(cluster.map(loaded_once, range(8), "bundle"))
    assert all(pid == made for pid, made in got)  # made where used, never shipped
    assert len(set(got)) <= cluster.workers


def test_workers_are_single_threaded_without_the_profiler(cluster: DaskEngine) -> None:
    assert set(cluster.gather(cluster.map(environment, range(4)))) == {("1", "1", 1, False)}


def test_a_worker_dying_mid_run_has_its_task_rerun(cluster: DaskEngine,
                                                   tmp_path: Path) -> None:
    marker = tmp_path / "died"
    got = cluster.gather(cluster.map(die_once, range(8), str(marker), 5))
    assert marker.exists()  # a worker really died
    assert got == [x * x for x in range(8)]
    cluster.client.wait_for_workers(2, timeout=60)  # its nanny restarts it (for other tests)
    # the restarted worker runs as the others did: one thread, no profiler
    assert set(cluster.gather(cluster.map(environment, range(4)))) == {("1", "1", 1, False)}


def test_partitioned_ingest_on_the_cluster_equals_the_local_one(cluster: DaskEngine,
                                                                tmp_path: Path) -> None:
    records = [{"session_id": f"s-{k % 9}", "turn_index": k, "wake": {"detected": True}}
               for k in range(60)]
    for name, part in (("a.jsonl", records[:40]), ("b.jsonl", records[25:])):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in part))
    inputs = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    local = ingest_partitioned(inputs, tmp_path / "local", 3)
    remote = ingest_partitioned(inputs, tmp_path / "remote", 3, engine=cluster)
    assert remote.rejects_by_rule == local.rejects_by_rule == {"duplicate_turn": 15}
    manifests = [json.loads((tmp_path / d / MANIFEST).read_text()) for d in ("local", "remote")]
    assert manifests[0]["parts"] == manifests[1]["parts"]  # same bytes (sha256) per part


def test_version_mismatch_is_refused(cluster: DaskEngine,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    address = cluster.client.scheduler.address
    monkeypatch.setattr(fpi, "__version__", "0.0.0+elsewhere")
    with pytest.raises(EngineError, match=r"dask worker tcp://\S+ runs fpi 0\.1\.0.*this "
                                          r"process fpi 0\.0\.0\+elsewhere"):
        DaskEngine(scheduler=address, timeout=10)
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


def test_separate_scheduler_and_worker_processes(scheduler_file: Path) -> None:
    with engine_from_options("dask", scheduler_file=scheduler_file, timeout=60) as engine:
        assert engine.name == "dask" and engine.workers == 1
        assert engine.gather(engine.map(plus_one, engine.map(scaled, [1, 2], 3))) == [4, 7]
