"""fpi train on an engine: features built per partition on a Dask cluster give the very
model of the local engine; --max-train-turns samples; the CLI's engine flags; distributed
training. The cluster is tests/conftest.py's ``dask_threads``: two workers on threads of
this process, every task and result pickled over TCP (what takes a real worker process is
tested in test_engine_dask.py and test_diagnose_dask.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from tiny_turns import make_turns
from typer.testing import CliRunner, Result

import fpi
from fpi.cli import app
from fpi.errors import InputError
from fpi.ingest.partition import ingest_partitioned, read_partitions
from fpi.metrics import labels_to_index
from fpi.model import load_bundle, train
from fpi.model.distributed import WARNING as DISTRIBUTED_WARNING
from fpi.model.distributed import in_sample, sample_bounds
from fpi.model.frame import TurnSample, sample_quotas, sample_turns

#: Quick training: 2 folds, no search, few rounds (what is compared is the path, not
#: the model's quality).
QUICK: dict[str, Any] = {"seed": 3, "threads": 1, "folds": 2, "search": False,
                         "num_boost_round": 15, "early_stopping_rounds": 3}


def _files(bundle: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(bundle.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def turns() -> pl.DataFrame:
    """About 1,500 labelled turns, sorted by session (as fpi ingest writes them)."""
    return pl.concat([make_turns(300, seed=1), make_turns(300, seed=2)]).sort(
        "session_id", "turn_index")


@pytest.fixture(scope="module")
def parts(turns: pl.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``turns`` ingested into 3 partitions."""
    tmp = tmp_path_factory.mktemp("parts")
    turns.write_parquet(tmp / "turns.parquet")
    ingest_partitioned([tmp / "turns.parquet"], tmp / "parts", 3)
    return tmp / "parts"


def _concat_parts(parts: Path) -> pl.DataFrame:
    paths, _ = read_partitions(parts)
    return pl.concat([pl.read_parquet(p) for p in paths])


@pytest.fixture(scope="module")
def local_model(parts: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The local engine's model of ``parts`` read into one frame, part after part."""
    return train(_concat_parts(parts), tmp_path_factory.mktemp("local") / "model", **QUICK)


@pytest.mark.slow
@pytest.mark.parametrize("max_train_turns", [None, 750])
def test_dask_features_give_the_local_model(dask_threads: Any, parts: Path, tmp_path: Path,
                                            local_model: Any,
                                            max_train_turns: int | None) -> None:
    local = local_model if max_train_turns is None else train(
        _concat_parts(parts), tmp_path / "local", max_train_turns=max_train_turns, **QUICK)
    remote = train(str(parts), tmp_path / "dask", engine=dask_threads,
                   max_train_turns=max_train_turns, **QUICK)
    assert _files(remote.path) == _files(local.path)
    assert remote.manifest["bundle_hash"] == local.manifest["bundle_hash"]
    expected = 750 if max_train_turns else local.manifest["training"]["labelled_turns"]
    assert remote.manifest["training"]["labelled_turns"] == expected


@pytest.mark.slow
def test_one_parquet_file_is_cut_at_session_boundaries(dask_threads: Any, parts: Path,
                                                       local_model: Any,
                                                       tmp_path: Path) -> None:
    """One file of the same frame (each session's turns together, as the parts hold
    them) gives the same model."""
    _concat_parts(parts).write_parquet(tmp_path / "turns.parquet")
    remote = train(tmp_path / "turns.parquet", tmp_path / "dask", engine=dask_threads, **QUICK)
    assert _files(remote.path) == _files(local_model.path)


def test_a_file_with_split_sessions_is_refused(turns: pl.DataFrame, tmp_path: Path) -> None:
    turns.sort("turn_index").write_parquet(tmp_path / "shuffled.parquet")
    with pytest.raises(InputError, match="a session's turns are not together"):
        train(tmp_path / "shuffled.parquet", tmp_path / "m", **QUICK)
    assert not (tmp_path / "m").exists()


def test_quotas_are_proportional_and_sum_to_the_cap() -> None:
    assert sample_quotas(np.array([50, 30, 20]), 10).tolist() == [5, 3, 2]
    assert sample_quotas(np.array([5, 3, 2]), 100).tolist() == [5, 3, 2]  # all fit
    # 3 * (4, 2, 1) / 7 = 1.71, 0.86, 0.43: floors 1, 0, 0, then the largest remainders
    assert sample_quotas(np.array([4, 2, 1]), 3).tolist() == [2, 1, 0]
    assert sample_quotas(np.array([1, 1, 1]), 2).tolist() == [1, 1, 0]  # ties: class order


def test_the_sample_is_stratified_and_independent_of_row_order(turns: pl.DataFrame) -> None:
    feats = pl.DataFrame({"session_id": turns["session_id"],
                          "turn_index": turns["turn_index"]})
    sample = TurnSample(1000, seed=7)
    got, got_feats = sample_turns(turns, feats, sample)
    assert got.height == 1000
    assert got_feats.select("session_id", "turn_index").equals(
        got.select("session_id", "turn_index"))
    per_class = got["label"].struct.field("failure_point").value_counts()
    full = turns["label"].struct.field("failure_point").value_counts()
    ratio = dict(zip(per_class["failure_point"], per_class["count"], strict=True))
    for c, n in zip(full["failure_point"], full["count"], strict=True):
        assert abs(ratio.get(c, 0) - n * 1000 / turns.height) <= 1
    shuffled = turns.sample(fraction=1.0, shuffle=True, seed=11)
    again, _ = sample_turns(shuffled, shuffled.select("session_id", "turn_index"), sample)
    key = ["session_id", "turn_index"]
    assert again.select(key).sort(key).equals(got.select(key).sort(key))
    other, _ = sample_turns(turns, feats, TurnSample(1000, seed=8))
    assert not other.select(key).equals(got.select(key))  # the seed matters


def test_the_sample_is_pinned() -> None:
    """Golden rows: the rule (hash of session id and seed) must not drift between versions.
    112 turns (result 19, correct 12, nlu 27, asr 21, er 16, false_wake 17), cap 12:
    floors 2, 1, 2, 2, 1, 1 and the 3 left over to nlu (.89), false_wake (.82), er (.71)."""
    frame = make_turns(40, seed=0)
    got, _ = sample_turns(frame, frame.select("session_id", "turn_index"), TurnSample(12, 0))
    rows = list(zip(got["session_id"], got["turn_index"],
                    got["label"].struct.field("failure_point"), strict=True))
    assert rows == PINNED_SAMPLE


PINNED_SAMPLE = [
    ("s0-0001", 0, "result"), ("s0-0004", 1, "result"), ("s0-0004", 2, "nlu"),
    ("s0-0018", 0, "er"), ("s0-0020", 1, "er"), ("s0-0020", 2, "nlu"),
    ("s0-0021", 1, "false_wake"), ("s0-0026", 0, "correct"), ("s0-0026", 3, "nlu"),
    ("s0-0030", 0, "asr"), ("s0-0030", 1, "asr"), ("s0-0036", 2, "false_wake"),
]


def _fpi(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fpi", *map(str, args)], capture_output=True,
                          text=True, timeout=600)


def _fpi_here(*args: str | Path) -> Result:
    """``fpi`` run in this process (its app: the executable's error handling, without
    starting Python again), for usage errors that stop it before any work."""
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("flags", [["--scheduler", "tcp://x:1"], ["--distributed-training"]])
def test_dask_flags_need_the_dask_engine(parts: Path, tmp_path: Path, flags: list[str]) -> None:
    run = _fpi_here("train", parts, "--out", tmp_path / "m", *flags)
    assert run.exit_code == 2
    assert run.stderr.strip().startswith("error:") and len(run.stderr.strip().splitlines()) == 1
    assert "needs --engine dask" in run.stderr and flags[0] in run.stderr
    assert not (tmp_path / "m").exists()


def test_distributed_training_needs_a_sample(parts: Path, tmp_path: Path) -> None:
    run = _fpi_here("train", parts, "--out", tmp_path / "m", "--engine", "dask",
                    "--distributed-training")
    assert run.exit_code == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "--distributed-training" in lines[0]
    assert "--max-train-turns" in lines[0]
    assert not (tmp_path / "m").exists()


def test_the_sample_bounds_find_the_sample_again(turns: pl.DataFrame) -> None:
    """Workers tell the driver's sample from the rest by its per-class bounds alone."""
    sample = TurnSample(900, seed=5)
    got, _ = sample_turns(turns, turns.select("session_id", "turn_index"), sample)
    y = labels_to_index(turns["label"].struct.field("failure_point"))
    mask = in_sample(turns, y, sample_bounds(got, 5), 5)
    key = ["session_id", "turn_index"]
    assert turns.filter(pl.Series(mask)).select(key).equals(got.select(key))
    assert in_sample(turns, y, sample_bounds(got, 6), 6).tolist() != mask.tolist()


@pytest.mark.slow
def test_distributed_training_grows_a_loadable_bundle(dask_threads: Any, parts: Path,
                                                      turns: pl.DataFrame,
                                                      tmp_path: Path) -> None:
    """``fpi train --engine dask --scheduler`` with a sample (--max-train-turns) and
    lightgbm.dask on the module's cluster (the executable is the driver; the workers,
    threads of this process, train as two LightGBM machines over its sockets): one
    warning line, JSON alone on stdout, and a bundle that loads, says it was trained on
    the sample and grown on every labelled turn outside it, and diagnoses. (The same
    flags without --distributed-training give the local engine's model:
    test_dask_features_give_the_local_model[750].)"""
    address = dask_threads.client.scheduler.address
    run = _fpi("train", parts, "--out", tmp_path / "m", "--engine", "dask", "--scheduler",
               address, "--folds", "2", "--no-search", "--max-train-turns", "900",
               "--distributed-training",
               "--rounds", "4", "--json")
    assert run.returncode == 0, run.stderr
    assert [line for line in run.stderr.splitlines() if line.startswith("warning:")] == [
        f"warning: {DISTRIBUTED_WARNING}"]
    doc = json.loads(run.stdout)
    assert doc["training"]["distributed"]["reproducible"] is False
    bundle = load_bundle(tmp_path / "m")  # checksums, LightGBM text models, no pickle
    assert not list((tmp_path / "m").glob("*.pkl"))
    training = bundle.manifest["training"]
    grown = training["distributed"]
    labelled = int((labels_to_index(turns["label"].struct.field("failure_point")) >= 0).sum())
    assert grown["library"] == "lightgbm.dask" and grown["early_stopping"] is False
    assert grown["turns"] == labelled - 900 == sum(grown["per_class"].values())
    assert grown["rounds"] == 4 == bundle.manifest["params"]["best_iteration"]
    assert grown["rounds_from"] == "--rounds"
    assert training["labelled_turns"] == 900 and "distributed" in training["heldout_is"]
    night = tmp_path / "night.parquet"
    turns.head(800).write_parquet(night)
    diagnosed = fpi.diagnose(night, model=bundle, out_dir=tmp_path / "out")
    assert diagnosed.exit_status == 0 and diagnosed.summary["turns"] == 800


def test_distributed_training_refuses_per_turn_weights(turns: pl.DataFrame,
                                                       tmp_path: Path) -> None:
    weights = turns.select("session_id", "turn_index").with_columns(weight=pl.lit(0.5))
    with pytest.raises(InputError, match="per-turn weights"):
        train(turns, tmp_path / "m", distributed_training=True, weights=weights, **QUICK)
    assert not (tmp_path / "m").exists()
