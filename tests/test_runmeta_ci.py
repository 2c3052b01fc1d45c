"""Run metadata in summary.json, GitHub job summary and annotations, progress only on a TTY."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import select
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from gfm_check import triggers
from tiny_turns import make_turns
from typer.testing import CliRunner

from fpi.ci import (
    append_step_summary,
    ci_info,
    escape_data,
    escape_property,
    gate_annotations,
    github_enabled,
)
from fpi.cli import app

FPI = [sys.executable, "-m", "fpi"]
#: A gate name with every character GitHub's workflow commands treat specially.
NASTY = "ER 50%, worse:\nnext line <b>x</b>"
GATES = (f'[[gate]]\nname = {json.dumps(NASTY)}\nexpr = "er.estimate <= 0.0001"\n\n'
         '[[gate]]\nname = "turns"\nexpr = "turns >= 1"\nwarn = 1000000\n')
CI_VARS = ("GITHUB_ACTIONS", "GITHUB_STEP_SUMMARY", "GITHUB_SERVER_URL", "GITHUB_REPOSITORY",
           "GITHUB_RUN_ID", "GITHUB_SHA", "GITLAB_CI", "CI_JOB_URL", "CI_COMMIT_SHA", "CI",
           "BUILD_URL", "GIT_COMMIT")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CI_VARS}
    return {**env, **extra}


@pytest.fixture(scope="module")
def world(small_bundle, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runmeta")
    make_turns(160, seed=1).write_parquet(root / "night.parquet")
    (root / "gates.toml").write_text(GATES, encoding="utf-8")
    return {"root": root, "model": small_bundle.path, "night": root / "night.parquet",
            "gates": root / "gates.toml"}


@pytest.fixture(scope="module")
def github_run(world: dict[str, Path]) -> tuple[subprocess.CompletedProcess[str], Path, Path]:
    """One `fpi diagnose` as GitHub Actions runs it (stderr piped: not a terminal)."""
    step = world["root"] / "step_summary.md"
    step.write_text("# earlier step\n\nkept\n", encoding="utf-8")
    out = world["root"] / "out"
    res = subprocess.run(
        [*FPI, "diagnose", str(world["night"]), "-m", str(world["model"]), "-o", str(out),
         "--gates", str(world["gates"]), "--attribution", "none", "--examples", "0"],
        capture_output=True, text=True, timeout=300,
        env=_env(GITHUB_ACTIONS="true", GITHUB_STEP_SUMMARY=str(step),
                 GITHUB_SERVER_URL="https://github.example", GITHUB_REPOSITORY="o/r",
                 GITHUB_RUN_ID="42", GITHUB_SHA="c0ffee"))
    return res, out, step


@pytest.mark.slow
def test_run_metadata_keys_checksums_and_time_range(world: dict[str, Path], github_run) -> None:
    res, out, _ = github_run
    assert res.returncode == 1, res.stderr  # the nasty gate fails
    run = json.loads((out / "summary.json").read_text())["run"]
    assert set(run) == {"time_range", "inputs", "fpi_version", "bundle_id", "baseline",
                        "wall_seconds", "ci"}
    data = world["night"].read_bytes()
    assert run["inputs"] == [{"path": str(world["night"]), "bytes": len(data),
                              "sha256": "sha256:" + hashlib.sha256(data).hexdigest()}]
    ts = pl.read_parquet(world["night"])["timestamp"]
    assert run["time_range"] == {"first": ts.min().strftime("%Y-%m-%dT%H:%M:%SZ"),
                                 "last": ts.max().strftime("%Y-%m-%dT%H:%M:%SZ")}
    summary = json.loads((out / "summary.json").read_text())
    assert run["bundle_id"] == summary["model"]["id"]
    assert run["baseline"] is None and run["wall_seconds"] > 0
    assert run["ci"] == {"provider": "github", "url": "https://github.example/o/r/actions/runs/42",
                         "commit": "c0ffee"}
    md = (out / "report.md").read_text()
    assert "## Run" in md and run["inputs"][0]["sha256"][7:19] in md
    assert "<h2>Run</h2>" in (out / "report.html").read_text()


@pytest.mark.slow
def test_baseline_id_and_time_range(world: dict[str, Path], github_run) -> None:
    """Also: with --json under GitHub Actions, stdout is only the JSON, annotations on stderr.
    In process (CliRunner keeps stdout and stderr apart); `github_run` is the executable's."""
    _, out, _ = github_run
    step = world["root"] / "step2.md"
    env: dict[str, str | None] = {var: None for var in CI_VARS}
    env.update(GITHUB_ACTIONS="true", GITHUB_STEP_SUMMARY=str(step))
    result = CliRunner().invoke(app, [
        "diagnose", str(world["night"]), "-m", str(world["model"]), "-o",
        str(world["root"] / "out2"), "--baseline", str(out / "summary.json"),
        "--gates", str(world["gates"]), "--attribution", "none", "--examples", "0", "--json"],
        env=env)
    res = subprocess.CompletedProcess([], result.exit_code, result.stdout, result.stderr)
    assert res.returncode == 1, res.stderr
    run = json.loads(res.stdout)["run"]  # nothing but the JSON on stdout
    assert "::error title=fpi gate failed" in res.stderr
    assert "vs baseline" in step.read_text()
    base = json.loads((out / "summary.json").read_text())["run"]
    digest = hashlib.sha256((out / "summary.json").read_bytes()).hexdigest()
    assert run["baseline"] == {"id": f"sha256:{digest}", "path": str(out / "summary.json"),
                               "bundle_id": base["bundle_id"], "time_range": base["time_range"]}
    assert run["ci"] == {"provider": "github", "url": None, "commit": None}


@pytest.mark.slow
def test_github_step_summary_is_appended_and_annotations_escaped(github_run) -> None:
    res, _, step = github_run
    text = step.read_text()
    assert text.startswith("# earlier step\n\nkept\n")  # appended, never truncated
    assert "### fpi diagnose: ❌ FAIL" in text and "1 failed, 1 warned of 2 gates" in text
    assert triggers(text) == {}, triggers(text)  # the gate name neutralised (a code span)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("::")]
    assert len(lines) == 2
    assert lines[0].startswith("::error title=fpi gate failed%3A ER 50%25%2C worse%3A%0Anext "
                               "line <b>x</b>::ER 50%25, worse:%0Anext line <b>x</b>: er.estimate")
    assert lines[1].startswith("::warning title=fpi gate warned%3A turns::turns: ")
    assert all("\n" not in ln and "\r" not in ln for ln in lines)


def test_escaping_rules() -> None:
    assert escape_data("100% done\r\nnext") == "100%25 done%0D%0Anext"
    assert escape_property("a:b,c%\n") == "a%3Ab%2Cc%25%0A"
    assert escape_data("%0A") == "%250A"  # % first: an escape in the text stays literal
    summary = {"gates": [{"name": "g", "status": "PASS", "message": "m"},
                         {"name": "w,:", "status": "WARN", "message": "50%"}]}
    assert gate_annotations(summary) == ["::warning title=fpi gate warned%3A w%2C%3A::w,:: 50%25"]


def test_ci_info_from_standard_variables(tmp_path: Path) -> None:
    assert ci_info({}) is None
    assert ci_info({"GITLAB_CI": "true", "CI_JOB_URL": "https://gl/j/1", "CI_COMMIT_SHA": "ab"}
                   ) == {"provider": "gitlab", "url": "https://gl/j/1", "commit": "ab"}
    assert ci_info({"CI": "true", "BUILD_URL": "https://jenkins/1/"}) == {
        "provider": "ci", "url": "https://jenkins/1/", "commit": None}
    assert ci_info({"GITHUB_ACTIONS": "true"})["url"] is None  # incomplete: no made-up URL
    assert github_enabled(None, {"GITHUB_ACTIONS": "true"})
    assert not github_enabled(False, {"GITHUB_ACTIONS": "true"})
    assert not github_enabled(None, {})
    assert append_step_summary("x", {}) is None
    target = tmp_path / "s.md"
    append_step_summary("one", {"GITHUB_STEP_SUMMARY": str(target)})
    append_step_summary("two\n", {"GITHUB_STEP_SUMMARY": str(target)})
    assert target.read_text() == "one\ntwo\n"


@pytest.mark.slow
def test_no_progress_when_stderr_is_not_a_terminal(github_run) -> None:
    res, _, _ = github_run
    assert "\x1b[" not in res.stderr  # no cursor movement or colour
    for word in ("eta ", "took ", "predict", "checksums", "turns/s"):
        assert word not in res.stderr, word


def _on_a_terminal(args: list[str], cwd: Path) -> str:
    """Run ``fpi ARGS`` with stderr on a pseudo-terminal; return what it drew there."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([*FPI, *args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=slave, cwd=cwd, env=_env(COLUMNS="120", TERM="xterm"))
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 120)
        if not ready:
            break
        try:
            data = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=120)
    os.close(master)
    return b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.slow
def test_progress_is_drawn_on_a_terminal_unless_quiet(tmp_path: Path) -> None:
    """On `fpi trend` over two summaries: the cheapest command that draws a stage (0.7
    CPU-s a start; the counts' formatting is checked in process below)."""
    golden = json.loads((Path(__file__).parent / "golden" / "diagnose_summary.json").read_text())
    for day, night in enumerate(("a", "b"), start=1):
        (tmp_path / "in" / night).mkdir(parents=True)
        when = f"2026-01-0{day}T00:00:00Z"
        doc = {**golden, "run": {"time_range": {"first": when, "last": when}}}
        (tmp_path / "in" / night / "summary.json").write_text(json.dumps(doc))
    drawn = _on_a_terminal(["trend", "in", "-o", "t"], tmp_path)
    assert "summaries" in drawn and "2 of 2 files" in drawn and "took" in drawn
    assert "2 nights, 2026-01-01 to 2026-01-02" in drawn
    quiet = _on_a_terminal(["--quiet", "trend", "in", "-o", "q"], tmp_path)
    assert "2 nights, 2026-01-01 to 2026-01-02" in quiet
    assert "summaries" not in quiet and "took" not in quiet


def test_progress_counts_read_as_amounts() -> None:
    from fpi.cli._progress_bar import _amount

    assert [_amount(x, "turns") for x in (3, 999, 3000, 1_234_567, 2e9)] == [
        "3", "999", "3.0k", "1.2M", "2.0G"]
    assert [_amount(x, "bytes") for x in (12, 45_000_000)] == ["12 B", "45.0 MB"]
