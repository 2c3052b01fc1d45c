"""The README's Python example runs as written, on the shipped sample logs."""

from __future__ import annotations

import os
import re
import runpy
from pathlib import Path

from fpi.errors import ExitStatus

ROOT = Path(__file__).resolve().parent.parent


def _python_block() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## The same in Python", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README has no Python example"
    return match.group(1)


def test_readme_python_example_runs(tmp_path: Path, capsys) -> None:
    (tmp_path / "sample_logs").symlink_to(ROOT / "sample_logs")
    script = tmp_path / "example.py"
    script.write_text(_python_block(), encoding="utf-8")
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
