"""``fpi`` run in the test's own process (typer's CliRunner), shaped as the executable's
``subprocess.CompletedProcess``.

For a case whose road from the command to its result or ``error:`` line another test
takes in the real executable: an ``fpi`` process costs about 1 CPU-s to start.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

from typer.testing import CliRunner

from fpi.cli import app


def in_process(*args: object, cwd: Path | None = None,
               env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``fpi ARGS`` (each argument as ``str``) in ``cwd`` with ``env`` added."""
    argv = [str(a) for a in args]
    old = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        res = CliRunner().invoke(app, argv, env=dict(env) if env else None)
    finally:
        os.chdir(old)
    return subprocess.CompletedProcess(argv, res.exit_code, res.stdout, res.stderr)
