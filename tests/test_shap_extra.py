"""shap and matplotlib are the optional extra ``fpi[shap]``: only ``Explanation.to_shap``
needs them; the documented waterfall example runs with the extra, every command runs
without it, and ``to_shap`` without shap says which extra to install.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from tiny_turns import make_turns

import fpi
from fpi.errors import ExitStatus, MissingExtra

ROOT = Path(__file__).resolve().parent.parent
#: Run the CLI in a child with these imports made to fail: as if the extra were absent, in
#: a plain install (``pip install .`` brings neither scikit-learn nor pandas either).
_WITHOUT_EXTRA = ("import json, sys\n"
                  "sys.modules.update(shap=None, matplotlib=None, sklearn=None, pandas=None)\n"
                  "from fpi.cli import app\n"
                  "for args in json.loads(sys.argv[1]):\n"
                  "    app(args, standalone_mode=False)\n")


@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A small night in canonical Parquet and a session of it with at least three turns."""
    turns = make_turns(120, seed=4)
    sizes = turns.group_by("session_id").len().filter(pl.col("len") >= 3).sort("session_id")
    path = tmp_path_factory.mktemp("shap-night") / "night.parquet"
    turns.write_parquet(path)
    return path, str(sizes["session_id"][0])


def _waterfall_block() -> str:
    doc = (ROOT / "docs" / "reports.md").read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"```python\n(.*?)```", doc, re.S) if "waterfall" in b]
    assert len(blocks) == 1, "docs/reports.md should show one waterfall example"
    return blocks[0]


def test_documented_waterfall_example_runs(night: tuple[Path, str], small_bundle,
                                           tmp_path: Path) -> None:
    path, session = night
    block = _waterfall_block()
    # the block as written, pointed at this test's night, model and session
    for old, new in (('"nightly.jsonl.gz"', repr(str(path))),
                     ('"model/"', repr(str(small_bundle.path))),
                     ('"s-7f3a"', repr(session))):
        assert old in block
        block = block.replace(old, new)
    env = {**os.environ, "MPLBACKEND": "Agg", "MPLCONFIGDIR": str(tmp_path / "mpl")}
    res = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    png = (tmp_path / "turn.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 2000


def test_to_shap_without_shap_names_the_extra(night: tuple[Path, str], small_bundle,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    path, session = night
    call = fpi.explain(path, model=small_bundle.path, session_id=session, turn_index=0)
    monkeypatch.setitem(sys.modules, "shap", None)  # `import shap` now fails
    with pytest.raises(MissingExtra, match=re.escape("pip install 'fpi[shap]'")) as info:
        call.to_shap()
    assert info.value.exit_code == ExitStatus.ERROR


def test_commands_run_without_the_extra(night: tuple[Path, str], small_bundle,
                                        tmp_path: Path) -> None:
    path, session = night
    model = str(small_bundle.path)
    commands = [["explain", str(path), "--model", model, "--session", session, "--turn", "1"],
                ["diagnose", str(path), "--model", model, "--out", str(tmp_path / "out"),
                 "--attribution", "all", "--examples", "1"]]
    res = subprocess.run([sys.executable, "-c", _WITHOUT_EXTRA, json.dumps(commands)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "contributions" in res.stdout
    assert (tmp_path / "out" / "summary.json").is_file()
