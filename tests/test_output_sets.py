"""Whole output sets: staging, swap, refusal of foreign --out, recovery after a kill."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import polars as pl
import pytest
from cli_run import in_process
from tiny_turns import make_turns

from fpi.diagnose import diagnose
from fpi.errors import InputError
from fpi.files import JOURNAL, MARKER, check_output_dir, recover, staged_files, staged_output_dir
from fpi.ingest import ingest, rejects_path_for

FAST_DIAG = {"attribution": "none", "n_boot": 20, "min_support": 20}


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (hidden ones too) and its bytes."""
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".fpi-" in p.name)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # reaped: no process has it (pids are not reused this fast)


def host() -> str:
    from fpi import files

    return files._HOST


@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sets-night") / "night.jsonl"
    frame = make_turns(60, seed=5).with_columns(
        pl.col("timestamp").dt.strftime("%Y-%m-%dT%H:%M:%S%.3fZ"))
    path.write_text("\n".join([*frame.write_ndjson().splitlines(), "{not json"]) + "\n")
    return path


@pytest.fixture(scope="module")
def first_set(small_bundle, night: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished ``diagnose`` output of ``night``: tests copy it as the previous run's set
    (nothing in a set names where it lies)."""
    out = tmp_path_factory.mktemp("first-set") / "out"
    diagnose([night], model=small_bundle.path, out_dir=out, **FAST_DIAG)
    return out


# ---------------------------------------------------------------------------
# The mechanism
# ---------------------------------------------------------------------------

def test_staged_dir_swaps_in_a_whole_set_and_replaces_the_previous(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with staged_output_dir(target, "demo") as stage:
        (stage / "a.txt").write_text("one")
        (stage / "b.txt").write_text("one")
        assert not target.exists()  # nothing visible before the end
    with staged_output_dir(target, "demo") as stage:
        (stage / "a.txt").write_text("two")
    assert sorted(p.name for p in target.iterdir()) == [MARKER, "a.txt"]  # b.txt is gone too
    assert (target / "a.txt").read_text() == "two"
    assert json.loads((target / MARKER).read_text())["kind"] == "demo"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("exc", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_a_failed_build_leaves_the_previous_set_and_no_staging(tmp_path: Path,
                                                               exc: BaseException) -> None:
    target = tmp_path / "out"
    with staged_output_dir(target, "demo") as stage:
        (stage / "a.txt").write_text("old")
    before = snapshot(target)
    with pytest.raises(type(exc)), staged_output_dir(target, "demo") as stage:
        (stage / "a.txt").write_text("new")
        raise exc
    assert snapshot(target) == before
    assert leftovers(tmp_path) == []


def test_refuses_what_it_did_not_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    user = tmp_path / "user"
    user.mkdir()
    (user / "report.md").write_text("mine")
    with pytest.raises(InputError, match=r"not empty and is not an fpi diagnose output"):
        check_output_dir(user, "diagnose")
    regular = tmp_path / "file.txt"
    regular.write_text("mine")
    with pytest.raises(InputError, match="exists and is not a directory"):
        check_output_dir(regular, "diagnose")
    other = tmp_path / "model"
    with staged_output_dir(other, "model"):
        pass
    with pytest.raises(InputError, match="fpi model output, not a diagnose output"):
        check_output_dir(other, "diagnose")
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    with pytest.raises(InputError, match="current directory"):
        check_output_dir(".", "diagnose")
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(InputError, match="symbolic link"):
        check_output_dir(link, "diagnose")
    assert (user / "report.md").read_text() == "mine" and regular.read_text() == "mine"


def test_recover_removes_dead_staging_and_keeps_live_staging(tmp_path: Path) -> None:
    target = tmp_path / "out"
    dead = tmp_path / f".out.fpi-staging.{host()}.{dead_pid()}.0123abcd"
    live = tmp_path / f".out.fpi-staging.{host()}.{os.getppid()}.0123abcd"
    for d in (dead, live):
        d.mkdir()
        (d / "turns.parquet").write_bytes(b"x" * 1000)
    unrelated = tmp_path / ".out.fpi-staging.notes"
    unrelated.write_text("not ours")
    actions = recover(target)
    assert not dead.exists() and live.exists() and unrelated.exists()
    assert len(actions) == 1


def test_recover_removes_week_old_staging_even_of_a_live_pid(tmp_path: Path) -> None:
    old = tmp_path / f".out.fpi-staging.{host()}.{os.getppid()}.0123abcd"
    old.mkdir()
    week = 8 * 24 * 3600
    os.utime(old, (old.stat().st_atime - week, old.stat().st_mtime - week))
    recover(tmp_path / "out")
    assert not old.exists()


def test_an_output_of_an_older_fpi_is_replaced_whole(small_bundle, night: Path, first_set: Path,
                                                      tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(first_set, out)
    (out / MARKER).unlink()  # as an fpi before markers wrote it, with a killed run's scratch
    shutil.rmtree(out / "predictions")  # and its one predictions file
    (out / "predictions.parquet").write_bytes(b"PAR1")
    (out / ".fpi-diagnose-abc123").mkdir()
    (out / ".fpi-diagnose-abc123" / "turns.parquet").write_bytes(b"x" * 1000)
    (out / "gates.xml").write_text("<testsuites/>")
    diagnose([night], model=small_bundle.path, out_dir=out, **FAST_DIAG)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [MARKER, "predictions", "summary.json", "report.md", "report.html",
         "rejects.jsonl"])
    (out / MARKER).unlink()
    (out / "thesis.tex").write_text("not ours")  # then it is not an fpi output any more
    with pytest.raises(InputError, match="not an fpi diagnose output"):
        diagnose([night], model=small_bundle.path, out_dir=out, **FAST_DIAG)
    assert (out / "thesis.tex").read_text() == "not ours"


def test_recover_restores_a_previous_set_left_aside_by_a_killed_swap(tmp_path: Path) -> None:
    target = tmp_path / "out"
    aside = tmp_path / f".out.fpi-old.{host()}.{dead_pid()}.0123abcd"
    aside.mkdir()
    (aside / "summary.json").write_text("previous")
    recover(target)
    assert (target / "summary.json").read_text() == "previous"
    assert leftovers(tmp_path) == []
    # with the new set already in place, a set-aside old set is just removed
    aside.mkdir()
    recover(target)
    assert (target / "summary.json").read_text() == "previous" and not aside.exists()


def test_file_set_journal_is_rolled_forward(tmp_path: Path) -> None:
    a, b = tmp_path / "t.parquet", tmp_path / "t.rejects.jsonl"
    a.write_text("old a")
    b.write_text("old b")
    with pytest.raises(RuntimeError), staged_files([a, b]) as (sa, sb):
        sa.write_text("new a")
        sb.write_text("new b")
        raise RuntimeError("boom")
    assert (a.read_text(), b.read_text()) == ("old a", "old b")
    assert leftovers(tmp_path) == []
    # a run killed after committing (journal written, one file moved) is finished later
    stage = tmp_path / f".t.parquet.fpi-staging.{host()}.{dead_pid()}.0123abcd"
    stage.mkdir()
    (stage / "1-t.rejects.jsonl").write_text("new b")
    a.write_text("new a")  # already moved before the kill
    (stage / JOURNAL).write_text(json.dumps({"renames": [["0-t.parquet", str(a)],
                                                         ["1-t.rejects.jsonl", str(b)]]}))
    recover(a)
    assert (a.read_text(), b.read_text()) == ("new a", "new b")
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------------------
# diagnose, ingest and train use it
# ---------------------------------------------------------------------------

def test_diagnose_failing_mid_write_keeps_the_previous_set(small_bundle, night: Path,
                                                          first_set: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    shutil.copytree(first_set, out)
    assert (out / "rejects.jsonl").is_file() and (out / MARKER).is_file()
    before = snapshot(out)
    from fpi.diagnose import run as diagnosis

    real = diagnosis.write_reports

    def half(summary, stage):  # the summary is written, then the disk fills up
        real(summary, stage)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(diagnosis, "write_reports", half)
    with pytest.raises(OSError, match="No space"):
        diagnose([night], model=small_bundle.path, out_dir=out, seed=1, **FAST_DIAG)
    assert snapshot(out) == before
    assert leftovers(tmp_path) == []


def test_ingest_failing_keeps_parquet_and_rejects_as_a_pair(night: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    out = tmp_path / "turns.parquet"
    ingest(night, out)
    before = (out.read_bytes(), rejects_path_for(out).read_bytes())
    import fpi.ingest as ingest_mod

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ingest_mod, "sort_rewrite", boom)
    monkeypatch.setattr(ingest_mod._Run, "finish", lambda self: False)
    with pytest.raises(OSError):
        ingest(night, out)
    assert (out.read_bytes(), rejects_path_for(out).read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["turns.parquet", "turns.rejects.jsonl"]


def test_ingest_refuses_to_overwrite_a_foreign_file(night: Path, tmp_path: Path) -> None:
    out = tmp_path / "notes.md"
    out.write_text("# my notes")
    with pytest.raises(InputError, match="not an fpi Parquet output"):
        ingest(night, out)
    assert out.read_text() == "# my notes"


#: A diagnose killed by ``sys.argv[4]`` once it predicts (its partition is staged by then).
#: LightGBM is loaded lean, as the ``fpi`` executable loads it (without the scikit-learn
#: and pandas wrappers: about 1.5 CPU-s less).
_KILLED_RUN = """
import os, signal, sys
from fpi.lightgbm_import import lean_on_first_import
lean_on_first_import()
from fpi.diagnose import diagnose

def progress(step, done, total):
    if step == "predict":
        os.kill(os.getpid(), getattr(signal, sys.argv[4]))

diagnose([sys.argv[1]], model=sys.argv[2], out_dir=sys.argv[3], attribution="none",
         n_boot=20, min_support=20, progress=progress)
"""


def _run_killed(night: Path, bundle: Path, out: Path, sig: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(_KILLED_RUN), str(night),
                           str(bundle), str(out), sig], capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_sigkilled_diagnose_leaves_staging_that_the_next_run_removes(small_bundle, night: Path,
                                                                     first_set: Path,
                                                                     tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(first_set, out)
    before = snapshot(out)
    proc = _run_killed(night, small_bundle.path, out, "SIGKILL")
    assert proc.returncode == -signal.SIGKILL
    stale = leftovers(tmp_path)
    assert len(stale) == 1 and ".out.fpi-staging." in stale[0]
    assert any(p.name.endswith(".parquet") for p in (tmp_path / stale[0]).rglob("*"))
    assert snapshot(out) == before  # the killed run never touched the set
    diagnose([night], model=small_bundle.path, out_dir=out, **FAST_DIAG)  # the next run
    assert leftovers(tmp_path) == []
    assert sorted(snapshot(out)) == sorted(before)


@pytest.mark.slow
def test_sigterm_during_diagnose_cleans_up(small_bundle, night: Path, first_set: Path,
                                           tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(first_set, out)
    before = snapshot(out)
    proc = _run_killed(night, small_bundle.path, out, "SIGTERM")
    assert proc.returncode != 0 and "Terminated" in proc.stderr
    assert snapshot(out) == before
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------------------
# The CLI: --out refusals are one line, exit 2, nothing of the user's touched
# ---------------------------------------------------------------------------

def _one_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.mark.parametrize("case", ["user_folder", "dot", "regular_file"])
def test_cli_refuses_foreign_out(case: str, small_bundle, night: Path, tmp_path: Path) -> None:
    user = tmp_path / "user"
    user.mkdir()
    (user / "report.md").write_text("my own report")
    (user / "rejects.jsonl").write_text("mine too")
    out = {"user_folder": str(user), "dot": ".", "regular_file": str(user / "report.md")}[case]
    before = snapshot(user)
    args = ("diagnose", str(night), "--model", str(small_bundle.path), "--out", out,
            "--attribution", "none")
    # in process (a start-up costs 1-2 CPU-s): test_hostile's truncated gzip (`python -m
    # fpi ingest`) takes the road from such an error to its line in a real process
    proc = in_process(*args, cwd=user if case == "dot" else None)
    _one_error(proc, "--out")
    assert snapshot(user) == before
    assert leftovers(tmp_path) == [] and leftovers(user) == []


def test_cli_train_refuses_a_user_folder(tmp_path: Path) -> None:
    labelled = tmp_path / "labelled.parquet"
    make_turns(20, seed=2).write_parquet(labelled)
    folder = tmp_path / "precious"
    folder.mkdir()
    (folder / "thesis.tex").write_text("keep me")
    # in process: test_hostile's truncated gzip (`python -m fpi ingest`) takes the road
    # from such an error to its line in a real process
    _one_error(in_process("train", str(labelled), "--out", str(folder)), "precious",
               "not an fpi model")
    assert (folder / "thesis.tex").read_text() == "keep me"
