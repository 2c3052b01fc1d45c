"""``fpi`` run without starting an ``fpi`` process per command, shaped as the executable's
``subprocess.CompletedProcess``: in the test's own process (typer's CliRunner,
:func:`in_process`), or several commands one after another in one child process
(:func:`each_in_one_process`).

For a case whose road from the command to its result or ``error:`` line another test
takes in the real executable: an ``fpi`` process costs about 1 CPU-s to start.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
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


#: Runs each argument list of ``sys.argv[1]`` (JSON) as the ``fpi`` console script does
#: (its target, ``fpi.__main__:main``, under ``sys.argv``), with its own stdout and
#: stderr, and writes ``[[status, stdout, stderr], ...]`` as JSON into the file
#: ``sys.argv[2]``. ``main`` ends in ``sys.exit``; returning instead fails the child.
_EACH = """\
import contextlib, io, json, sys
from fpi.__main__ import main
commands, results, done = json.loads(sys.argv[1]), sys.argv[2], []
for args in commands:
    sys.argv, out, err = ["fpi", *args], io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        else:
            raise SystemExit(f"fpi {args}: main returned without exiting")
    done.append([code, out.getvalue(), err.getvalue()])
with open(results, "w", encoding="utf-8") as fh:
    json.dump(done, fh)
"""


def each_in_one_process(*commands: Sequence[object], cwd: Path | None = None,
                        env: Mapping[str, str] | None = None,
                        ) -> list[subprocess.CompletedProcess[str]]:
    """``fpi`` with each argument list of ``commands``, one after another in one child
    process in ``cwd`` with ``env`` added, each run as the executable runs it, with its
    own exit status, stdout and stderr: one interpreter start-up for all. The child itself
    must exit 0 and write nothing to its own stderr."""
    argv = [[str(a) for a in command] for command in commands]
    with tempfile.TemporaryDirectory(prefix="fpi-each-") as scratch:
        results = Path(scratch) / "results.json"
        child = subprocess.run([sys.executable, "-c", _EACH, json.dumps(argv), str(results)],
                               cwd=cwd, env={**os.environ, **(env or {})},
                               capture_output=True, text=True, timeout=600)
        assert child.returncode == 0 and not child.stderr, child.stderr[-3000:]
        done = json.loads(results.read_text(encoding="utf-8"))
    return [subprocess.CompletedProcess(["fpi", *args], code, out, err)
            for args, (code, out, err) in zip(argv, done, strict=True)]
