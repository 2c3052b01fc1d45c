"""The CLI frame: version, help for every command, one-line errors, console script."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from fpi import __version__
from fpi.cli import app

runner = CliRunner()

COMMANDS = ("ingest", "simulate", "train", "evaluate", "diagnose", "explain")


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"fpi {__version__}"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str) -> None:
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
    # a real description, not an empty docstring
    assert len(result.output.splitlines()) > 5


def test_unknown_command_is_a_usage_error() -> None:
    result = runner.invoke(app, ["no-such-command"])
    assert result.exit_code == 2


def test_missing_input_is_one_line_error_exit_2(tmp_path) -> None:
    missing = tmp_path / "nope.jsonl"
    result = runner.invoke(app, ["ingest", str(missing), "-o", str(tmp_path / "out.parquet")])
    assert result.exit_code == 2
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:")
    assert "nope.jsonl" in lines[0]
    assert "Traceback" not in result.output


def test_python_dash_m() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "fpi", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"fpi {__version__}"


def test_error_message_is_not_read_as_markup(tmp_path) -> None:
    # Brackets in a path (or in log text quoted by a message) must reach the user as they
    # are, and so must emoji codes.
    missing = tmp_path / "[[gate]] [bold]:thumbs_up: x.jsonl"
    result = runner.invoke(app, ["ingest", str(missing), "-o", str(tmp_path / "out.parquet")])
    assert result.exit_code == 2
    assert "[[gate]] [bold]:thumbs_up: x.jsonl" in result.stderr


def test_installed_console_script() -> None:
    # `pip install` must have put an `fpi` command beside this Python (skops once
    # lost its console script and nobody noticed).
    from pathlib import Path

    script = Path(sys.executable).parent / "fpi"
    assert script.is_file(), f"no console script at {script}"
    out = subprocess.run([str(script), "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"fpi {__version__}"
