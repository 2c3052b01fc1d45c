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
#: One child for both: first the CLI commands in ``sys.argv[1]`` (JSON) with these imports
#: made to fail, as if the extra were absent, in a plain install (``pip install .`` brings
#: neither scikit-learn nor pandas either); then, after a record separator line on stdout,
#: the imports allowed again, the Python block ``sys.argv[2]``. (A second Python would cost
#: about 1 CPU-s to start; the extra's own imports, about 4, are needed either way.)
_WITHOUT_THEN_WITH_EXTRA = (
    "import json, sys\n"
    "absent = dict(shap=None, matplotlib=None, sklearn=None, pandas=None)\n"
    "sys.modules.update(absent)\n"
    "from fpi.cli import app\n"
    "for args in json.loads(sys.argv[1]):\n"
    "    app(args, standalone_mode=False)\n"
    "print('\\036', flush=True)\n"
    "for name in absent:\n"
    "    del sys.modules[name]\n"
    "exec(compile(sys.argv[2], 'waterfall example', 'exec'), {'__name__': '__main__'})\n"
)


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


#: The child's outcome and the directory it ran in.
Child = tuple[subprocess.CompletedProcess[str], Path]


@pytest.fixture(scope="module")
def child(night: tuple[Path, str], small_bundle,
          tmp_path_factory: pytest.TempPathFactory) -> Child:
    """The child of :data:`_WITHOUT_THEN_WITH_EXTRA` run in a directory of its own: ``fpi
    explain`` and ``fpi diagnose`` (output in ``out/``) without the extra, then the
    documented waterfall block, pointed at this module's night, model and session."""
    path, session = night
    model = str(small_bundle.path)
    where = tmp_path_factory.mktemp("shap-child")
    commands = [["explain", str(path), "--model", model, "--session", session, "--turn", "1"],
                ["diagnose", str(path), "--model", model, "--out", str(where / "out"),
                 "--attribution", "all", "--examples", "1"]]
    block = _waterfall_block()
    for old, new in (('"nightly.jsonl.gz"', repr(str(path))),
                     ('"model/"', repr(model)),
                     ('"s-7f3a"', repr(session))):
        assert old in block
        block = block.replace(old, new)
    env = {**os.environ, "MPLBACKEND": "Agg", "MPLCONFIGDIR": str(where / "mpl")}
    res = subprocess.run([sys.executable, "-c", _WITHOUT_THEN_WITH_EXTRA, json.dumps(commands),
                          block], cwd=where, env=env, capture_output=True, text=True,
                         timeout=300)
    return res, where


@pytest.mark.slow
def test_documented_waterfall_example_runs(child: Child) -> None:
    res, where = child
    assert res.returncode == 0, res.stderr
    png = (where / "turn.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 2000


def test_to_shap_without_shap_names_the_extra(night: tuple[Path, str], small_bundle,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    path, session = night
    call = fpi.explain(path, model=small_bundle.path, session_id=session, turn_index=0)
    monkeypatch.setitem(sys.modules, "shap", None)  # `import shap` now fails
    with pytest.raises(MissingExtra, match=re.escape("pip install 'fpi[shap]'")) as info:
        call.to_shap()
    assert info.value.exit_code == ExitStatus.ERROR


@pytest.mark.slow
def test_commands_run_without_the_extra(child: Child) -> None:
    res, where = child
    without_extra, marker, _ = res.stdout.partition("\036\n")
    assert marker, res.stderr  # both commands returned
    assert "contributions" in without_extra
    assert (where / "out" / "summary.json").is_file()
