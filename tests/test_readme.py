"""The README's examples run as written, on the shipped sample logs.

The quickstart's shell commands, as bash reads them, run in order through the ``fpi``
executable's entry point, each with the exit code the README announces for it; the
Python example runs as a script.

The quickstart runs in a copy of ``sample_logs/`` whose ``train.jsonl.gz`` holds only the
first 500 of the 30,000 labelled turns (every other file is the shipped one): the
commands are checked as written, and the gate still fails on the nightly file's ER outage
(estimate 0.126, interval from 0.083, against a bound of 0.057: the baseline night's 0.047
plus 0.01), while training costs about 8 CPU-s instead of about 67 (11 at 1,000 turns, 17
at 3,000; at 400 both nights' ER intervals reach down to 0, and at 300 a class has too
few turns to train). Training at full size
is measured by ``benchmarks/`` and run by ``scripts/sample_run.sh``.

The Python example runs on the shipped ``example.csv`` (500 turns) as it stands: its
model (``search=False``: about 3 CPU-s to train instead of about 8; macro-F1 0.758 on the
holdout, 0.759 with the search) estimates the nightly file's ER rate at 0.072 (true rate
0.115), which fails the example's gate of 0.05, and the baseline night's at 0.014 (true
0.040), which passes it.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from cli_run import each_in_one_process

from fpi.errors import ExitStatus

ROOT = Path(__file__).resolve().parent.parent


def _section(title: str, lang: str) -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split(f"## {title}", 1)[1]
    match = re.search(rf"```{lang}\n(.*?)```", section, re.S)
    assert match, f"README section {title!r} has no {lang} block"
    return match.group(1)


def quickstart_commands() -> list[tuple[str, int]]:
    """``(command, expected exit code)`` in README order.

    Commands come in groups under a comment; a group whose comment says "exits 1"
    is expected to exit 1 (a failed gate), every other command to succeed.
    """
    block = _section("Quickstart", "bash").replace("\\\n", " ")
    commands: list[tuple[str, int]] = []
    comment = ""
    for line in block.splitlines():
        stripped = line.strip()
        if not stripped:
            comment = ""
        elif stripped.startswith("#"):
            comment += " " + stripped.lstrip("# ")
        else:
            commands.append((" ".join(stripped.split()), 1 if "exits 1" in comment else 0))
    return commands


def test_quickstart_parser_reads_exit_codes() -> None:
    commands = quickstart_commands()
    assert len(commands) >= 7
    assert all(cmd.startswith("fpi ") for cmd, _ in commands)
    gated = [cmd for cmd, code in commands if code == 1]
    assert len(gated) == 1 and "--gate" in gated[0] and gated[0].endswith("+ 0.01'")


#: Labelled turns the quickstart test trains on (the first records of train.jsonl.gz).
QUICKSTART_TRAIN_TURNS = 500


def _sample_logs_with_a_smaller_training_file(where: Path) -> None:
    """``where/sample_logs``: every shipped sample file, linked, except ``train.jsonl.gz``,
    which is the shipped file's first :data:`QUICKSTART_TRAIN_TURNS` lines."""
    logs = where / "sample_logs"
    logs.mkdir()
    for shipped in (ROOT / "sample_logs").iterdir():
        if shipped.name != "train.jsonl.gz":
            (logs / shipped.name).symlink_to(shipped)
    with gzip.open(ROOT / "sample_logs" / "train.jsonl.gz", "rt", encoding="utf-8") as src:
        head = [line for _, line in zip(range(QUICKSTART_TRAIN_TURNS), src, strict=False)]
    assert len(head) == QUICKSTART_TRAIN_TURNS
    with gzip.open(logs / "train.jsonl.gz", "wt", encoding="utf-8", compresslevel=1) as dst:
        dst.writelines(head)


#: ``fpi`` as a shell function that writes the arguments the shell called it with, each
#: ending in NUL, and a record separator (``\\036``) after the last.
_RECORD_ARGS = "fpi() { printf '%s\\0' \"$@\"; printf '\\036\\0'; }\n"


def shell_words(block: str, cwd: Path) -> list[list[str]]:
    """The arguments of each ``fpi`` command of ``block``, as bash reads the block
    (comments, quotes, line continuations) and would pass them to the executable."""
    done = subprocess.run(["bash", "-c", _RECORD_ARGS + block], cwd=cwd, capture_output=True,
                          check=True, timeout=60)
    words = done.stdout.decode("utf-8").split("\0")
    assert words.pop() == ""
    commands: list[list[str]] = [[]]
    for word in words:
        if word == "\036":
            commands.append([])
        else:
            commands[-1].append(word)
    assert commands.pop() == []
    return commands


@pytest.mark.slow
def test_readme_quickstart_runs_in_order(tmp_path: Path) -> None:
    """Every command as bash reads it, through the executable's entry point, all in one
    process: each exits with the status the executable would (``main`` ends in
    ``sys.exit``). Twelve ``fpi`` processes would cost about 11 CPU-s more just to start;
    the console script is tested in tests/test_cli.py."""
    assert (Path(sys.executable).parent / "fpi").is_file(), (
        "the fpi console script is not installed beside python")
    _sample_logs_with_a_smaller_training_file(tmp_path)
    commands = quickstart_commands()
    words = shell_words(_section("Quickstart", "bash"), tmp_path)
    assert words == [shlex.split(command)[1:] for command, _ in commands]
    results = each_in_one_process(*words, cwd=tmp_path, env={"COLUMNS": "120"})
    for (command, expected), result in zip(commands, results, strict=True):
        assert result.returncode == expected, (command, result.returncode,
                                               result.stderr[-2000:])
        assert "Traceback" not in result.stderr, (command, result.stderr[-2000:])
    for made in ("turns.parquet", "model/manifest.json", "nightly/report.md",
                 "baseline/summary.json", "night.jsonl.gz"):
        assert (tmp_path / made).exists(), made
    manifest = json.loads((tmp_path / "model" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["training"]["labelled_turns"] == QUICKSTART_TRAIN_TURNS


@pytest.mark.slow
def test_readme_python_example_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "sample_logs").symlink_to(ROOT / "sample_logs")
    script = tmp_path / "example.py"
    script.write_text(_section("The same in Python", "python"), encoding="utf-8")
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        namespace = runpy.run_path(str(script))
    finally:
        os.chdir(cwd)
    assert (tmp_path / "model" / "manifest.json").is_file()
    assert (tmp_path / "nightly" / "report.html").is_file()
    # the shipped nightly file has an ER outage: the example's gate must catch it
    assert namespace["night"].exit_status == ExitStatus.GATE_FAILED
    assert namespace["report"].rejected == 0
    printed = capsys.readouterr().out
    assert "f1" in printed
