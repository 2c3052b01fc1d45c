"""Write docs/cli.md from every command's ``--help``.

Run ``python scripts/gen_cli_docs.py`` after changing a command's options;
``tests/test_cli_docs.py`` fails while docs/cli.md is out of date.
"""

from __future__ import annotations

import sys
from pathlib import Path

from typer.testing import CliRunner

from fpi.cli import app
from fpi.files import write_text_atomic

COMMANDS = ("ingest", "simulate", "train", "evaluate", "diagnose", "explain", "trend", "queue",
            "labels", "labels import", "labels agreement", "labels measure", "labels check")
DOC = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def help_text(*args: str) -> str:
    """The ``--help`` output of ``fpi ARGS``, rendered 100 columns wide without colour.

    An argument with spaces is a subcommand path (``"labels import"``).
    """
    args = tuple(word for arg in args for word in arg.split())
    result = CliRunner().invoke(
        app, [*args, "--help"], env={"COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb"},
        prog_name="fpi",
    )
    if result.exit_code != 0:
        raise SystemExit(f"fpi {' '.join(args)} --help failed: {result.output}")
    return "\n".join(line.rstrip() for line in result.output.strip("\n").splitlines())


def render() -> str:
    parts = [
        "# fpi command reference\n",
        "Generated from each command's `--help` by `python scripts/gen_cli_docs.py`;",
        "the tests fail when it is out of date.\n",
        "```text",
        help_text(),
        "```\n",
    ]
    for command in COMMANDS:
        parts += [f"## fpi {command}\n", "```text", help_text(command), "```\n"]
    return "\n".join(parts)


if __name__ == "__main__":
    write_text_atomic(DOC, render())
    print(f"wrote {DOC}", file=sys.stderr)
