"""The labels loop through the real ``fpi`` executable: each command and its errors.

Each labels command (``queue``, ``labels import | agreement | measure | check``) runs once
as its own ``fpi`` process; the first error of each command runs as the executable runs
it (:func:`fpi_each`: the console script's ``fpi.__main__:main`` with the command's own
arguments, stdout and stderr), all five in one child process (:func:`executable_errors`).
Further cases whose road through the CLI one of those processes already takes run in-process
(:func:`inproc`): a queue without a model, ``evaluate`` with labels (``fpi evaluate``
runs in a child process in tests/test_readme.py's quickstart), ``train`` on imported labels
and the further errors.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import polars as pl
import pytest
from cli_run import each_in_one_process, in_process

#: Real processes of every labels command: the slow tier (``-m slow``; CI runs it).
pytestmark = pytest.mark.slow

FPI = str(Path(sys.executable).with_name("fpi"))


def inproc(*args: object) -> subprocess.CompletedProcess[str]:
    """In-process run, for the further error cases (the executable's start-up is slow)."""
    return in_process(*args, env={"COLUMNS": "200"})


def fpi(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([FPI, *map(str, args)], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


def fpi_each(*commands: Sequence[object]) -> list[subprocess.CompletedProcess[str]]:
    """Several commands, each run as the executable runs it, in one child process: for
    checks of one behaviour (the error contract), one interpreter start-up for all."""
    return each_in_one_process(*commands, env={"COLUMNS": "200", "NO_COLOR": "1",
                                               "OMP_NUM_THREADS": "1"})


def assert_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


#: Turns of the night that ``labels check`` and ``train`` read here: what they do with
#: them is the same code at any size (test_labels_check ranks whole nights).
PART = 600


@pytest.fixture(scope="module")
def part_file(night_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The night's first :data:`PART` turns (whole sessions but the last)."""
    path = tmp_path_factory.mktemp("part") / "part.parquet"
    pl.read_parquet(night_file).head(PART).write_parquet(path)
    return path


@pytest.fixture(scope="module")
def loop(night_file: Path, model_dir: Path, tmp_path_factory) -> dict[str, Path]:
    """A queue from the model, and its CSV filled in by two annotators from the logs."""
    tmp = tmp_path_factory.mktemp("loop")
    queue = tmp / "queue"
    r = fpi("queue", night_file, "--model", model_dir, "--budget", 120, "--out", queue,
            "--seed", 2, "--json")
    assert r.returncode == 0, r.stderr
    manifest = json.loads(r.stdout)
    assert manifest["selected"] == 120 and manifest["flagged_slices"]["source"] == "model"
    assert manifest["counts"]["slice"] >= len(manifest["flagged_slices"]["findings"]) > 0
    tasks = pl.read_csv(queue / "tasks.csv", infer_schema=False)
    night = pl.read_parquet(night_file).select(
        "session_id", pl.col("turn_index").cast(pl.String),
        pl.col("label").struct.field("failure_point").alias("gold"),
        pl.col("label").struct.field("failure_point_2").alias("second"))
    filled = tasks.join(night, on=["session_id", "turn_index"])
    a = filled.with_columns(pl.lit("ann").alias("annotator"), pl.col("gold").alias("failure_point"))
    b = filled.head(60).with_columns(pl.lit("bob").alias("annotator"),
                                     pl.col("second").alias("failure_point"))
    a.drop("gold", "second").write_csv(tmp / "ann.csv")
    b.drop("gold", "second").write_csv(tmp / "bob.csv")
    return {"queue": queue, "ann": tmp / "ann.csv", "bob": tmp / "bob.csv", "dir": tmp}


@pytest.fixture(scope="module")
def executable_errors(night_file: Path, tmp_path_factory: pytest.TempPathFactory
                      ) -> dict[str, object]:
    """The first error of each command, as the executable runs it (one child process):
    ``queue`` into a directory that holds a file of the user's, ``labels import`` of a
    missing file, ``labels agreement`` of one annotator's labels, ``labels measure`` of a
    missing queue and ``labels check --report`` to an unknown format."""
    tmp = tmp_path_factory.mktemp("errors")
    (tmp / "busy").mkdir()
    (tmp / "busy" / "x").write_text("x")
    single = tmp / "single.parquet"
    pl.read_parquet(night_file).select("session_id", "turn_index").head(60).with_columns(
        pl.lit("bob").alias("annotator"), pl.lit("asr").alias("failure_point")
    ).write_csv(tmp / "bob.csv")
    assert inproc("labels", "import", tmp / "bob.csv", "-o", single).returncode == 0
    names = ("queue", "import", "agreement", "measure", "check")
    done = fpi_each(("queue", night_file, "-n", 5, "-o", tmp / "busy"),
                    ("labels", "import", tmp / "nope.csv", "-o", tmp / "l.parquet"),
                    ("labels", "agreement", single),
                    ("labels", "measure", tmp / "noqueue", "--labels", single),
                    ("labels", "check", night_file, "--report", tmp / "r.html"))
    return {"dir": tmp, **dict(zip(names, done, strict=True))}


def test_queue_without_a_model_writes_every_file(night_file: Path, tmp_path: Path) -> None:
    # in-process: the `loop` fixture's queue (with a model) is the executable's
    r = inproc("queue", night_file, "-n", 30, "-o", tmp_path / "q")
    assert r.returncode == 0, r.stderr
    assert "30 of 2,000 turns (stratified 30)" in " ".join(r.stderr.split())
    assert len(json.loads((tmp_path / "q" / "labelstudio_tasks.json").read_text())) == 30


def test_queue_errors(night_file: Path, executable_errors, tmp_path: Path) -> None:
    busy = executable_errors["dir"] / "busy"
    assert_error(executable_errors["queue"], str(busy))
    assert (busy / "x").read_text() == "x" and [p.name for p in busy.iterdir()] == ["x"]
    assert_error(inproc("queue", night_file, "-n", 0, "-o", tmp_path / "q"), "--budget")
    assert_error(inproc("queue", night_file, "-n", 5, "-o", tmp_path / "q", "-m",
                        tmp_path / "nomodel"), "nomodel")
    assert_error(inproc("queue", tmp_path / "none.jsonl", "-n", 5, "-o", tmp_path / "q"),
                 "none.jsonl")
    assert_error(inproc("queue", night_file, "-n", 5, "-o", tmp_path / "q", "--slices",
                        tmp_path / "summary.json"), "--slices", "--model")
    assert_error(inproc("queue", night_file, "-n", 5, "-o", tmp_path / "q", "-m", tmp_path,
                        "--slices", tmp_path / "summary.json"), "summary.json")
    assert not (tmp_path / "q").exists()


def test_import_agreement_measure_and_evaluate(loop, night_file, model_dir) -> None:
    out = loop["dir"] / "labels.parquet"
    r = fpi("labels", "import", loop["ann"], loop["bob"], "-o", out, "--logs", night_file,
            "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["labels_kept"] == 180 and doc["by_annotator"] == {"ann": 120, "bob": 60}
    r = fpi("labels", "agreement", out, "--json")
    assert r.returncode == 0, r.stderr
    agree = json.loads(r.stdout)
    assert agree["annotators"] == ["ann", "bob"] and agree["pairs"][0]["n"] == 60
    adj = pl.read_csv(loop["dir"] / "labels.adjudication.csv")
    assert adj.height == agree["disagreements"]
    r = fpi("labels", "measure", loop["queue"], "--labels", out, "--label-policy", "gold:ann",
            "--replicates", 200, "--json")
    assert r.returncode == 0, r.stderr
    measured = json.loads(r.stdout)
    assert measured["sampled"] == 30 and measured["labelled"] == 30
    r = inproc("evaluate", night_file, "-m", model_dir, "--labels", out, "--label-policy",
               "gold:ann", "--json")
    assert r.returncode == 0, r.stderr
    ev = json.loads(r.stdout)
    assert ev["n_turns"] == 120 and ev["human"]["n_turns"] == 60


def test_import_and_agreement_errors(loop, executable_errors, tmp_path: Path) -> None:
    assert_error(executable_errors["import"], "nope.csv")
    assert not (executable_errors["dir"] / "l.parquet").exists()
    (tmp_path / "l.txt").write_text("x")
    assert_error(inproc("labels", "import", tmp_path / "l.txt", "-o", tmp_path / "l.parquet"),
                 "l.txt")
    (tmp_path / "bad.json").write_text("[{")
    assert_error(inproc("labels", "import", tmp_path / "bad.json", "-o",
                        tmp_path / "l.parquet"), "bad.json")
    assert not (tmp_path / "l.parquet").exists()
    single = tmp_path / "single.parquet"
    assert inproc("labels", "import", loop["bob"], "-o", single).returncode == 0
    assert_error(executable_errors["agreement"], "two annotators")
    assert_error(inproc("labels", "agreement", tmp_path / "missing.parquet"), "missing.parquet")
    assert_error(executable_errors["measure"], "noqueue")
    assert_error(inproc("labels", "measure", loop["queue"], "--labels", single,
                        "--label-policy", "best"), "--label-policy")


def test_check_and_train_with_labels(night_file: Path, part_file: Path, loop,
                                     executable_errors, tmp_path: Path) -> None:
    report = tmp_path / "check.md"
    clean = tmp_path / "clean.parquet"
    # one fold assignment (--repeats 1): averaging repeats is test_labels_check's
    r = fpi("labels", "check", part_file, "--folds", 2, "--repeats", 1, "--top", 5,
            "--report", report, "--json", "--fix", "weight", "--fixed", clean)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["labelled_turns"] == PART and len(doc["top"]) == min(5, doc["suspects"])
    assert report.read_text().startswith("# Probably wrong labels")
    fixed = pl.read_parquet(clean)
    assert fixed.height == PART and "cleaned labels (weight)" in r.stderr
    # the estimated wrong labels, and only they, are weighted down
    assert (fixed["weight"] < 1).sum() == fixed["extra"].is_not_null().sum() > 0
    assert_error(inproc("labels", "check", night_file, "--fix", "drop"), "--fixed")
    conf = tmp_path / "confident.parquet"
    r = inproc("labels", "check", part_file, "--folds", 2, "--repeats", 1, "--fix", "drop",
               "--fix-by", "confident", "--max-confidence", 0.2, "--fixed", conf, "--json")
    assert r.returncode == 0, r.stderr
    # every dropped turn is a suspect; suspects with p(label) >= 0.2 are kept
    dropped = PART - pl.read_parquet(conf).height
    assert 0 < dropped < json.loads(r.stdout)["suspects"]
    assert_error(inproc("labels", "check", night_file, "--max-confidence", 2),
                 "--max-confidence")
    assert_error(inproc("labels", "check", night_file, "--quota", -1), "--quota")
    assert_error(inproc("labels", "check", night_file, "--repeats", 0), "--repeats")
    assert_error(executable_errors["check"], "r.html")
    assert not (executable_errors["dir"] / "r.html").exists()
    assert_error(inproc("labels", "check", night_file, "--labels",
                        loop["dir"] / "nope.parquet"), "nope.parquet")
    assert_error(inproc("train", night_file, "-o", tmp_path / "m", "--labels", loop["ann"]),
                 "ann.csv")
    assert not (tmp_path / "m").exists()


def test_train_on_imported_labels(night_file: Path, tmp_path: Path) -> None:
    # the night's first 1,000 turns, 400 of them labelled: trained on the 400 alone
    night = pl.read_parquet(night_file).head(1_000)
    logs = tmp_path / "night.parquet"
    night.write_parquet(logs)
    labels = night.select("session_id", "turn_index",
                          pl.col("label").struct.field("failure_point")).head(400)
    labels.with_columns(pl.lit("ann").alias("annotator")).write_csv(tmp_path / "l.csv")
    assert inproc("labels", "import", tmp_path / "l.csv", "-o", tmp_path / "l.parquet"
                  ).returncode == 0
    labels.head(100).select("session_id", "turn_index", pl.lit(0.25).alias("weight")
                            ).write_csv(tmp_path / "w.csv")
    assert_error(inproc("train", logs, "-o", tmp_path / "m", "--weights",
                        tmp_path / "no.csv"), "no.csv")
    r = inproc("train", logs, "-o", tmp_path / "m", "--labels", tmp_path / "l.parquet",
               "--label-policy", "gold:ann", "--folds", "2", "--no-search", "--json",
               "--weights",
               tmp_path / "w.csv")
    assert r.returncode == 0, r.stderr
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["training"]["labelled_turns"] == 400
    assert manifest["training"]["weights"]["turns_not_1"] == 100
    assert manifest["training"]["turns"] == night.height
