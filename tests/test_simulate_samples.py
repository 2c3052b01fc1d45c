"""The shipped sample logs are what the simulator makes for their seeds."""

from __future__ import annotations

import functools
import gzip
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from fpi.ingest import read_traces
from fpi.writers import TurnWriter

SAMPLES_DIR = Path(__file__).resolve().parents[1] / "sample_logs"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_samples",
                                                  SAMPLES_DIR / "make_samples.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_samples"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


make_samples = _load()


def _content(path: Path) -> bytes:
    return gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory) -> Path:
    """Every sample made again, gzip at level 1 (the tests compare the decompressed
    content, which is the same at any level; level 1 compresses the 57 MB in 0.4 CPU-s,
    level 6 in 1.0)."""
    out = tmp_path_factory.mktemp("samples")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TurnWriter, "__init__",
                   functools.partialmethod(TurnWriter.__init__, compression_level=1))
        make_samples.make(out)
    return out


def test_samples_are_small() -> None:
    total = sum(p.stat().st_size for p in SAMPLES_DIR.iterdir() if p.is_file())
    assert total < 15 * 1024 * 1024


@pytest.mark.parametrize(
    "name", [s.name for s in make_samples.SAMPLES] + ["broken.jsonl", "annotations.csv"]
)
def test_shipped_sample_matches_its_seed(name: str, regenerated: Path) -> None:
    shipped = SAMPLES_DIR / name
    assert shipped.exists(), f"{name} missing: run python sample_logs/make_samples.py"
    assert _content(shipped) == _content(regenerated / name)
    truth = SAMPLES_DIR / f"{name}.truth.json"
    if truth.exists() or name not in ("broken.jsonl", "annotations.csv"):
        assert json.loads(truth.read_text()) == json.loads(
            (regenerated / f"{name}.truth.json").read_text()
        )


def test_sample_sizes_and_labels() -> None:
    specs = {s.name: s for s in make_samples.SAMPLES}
    for name, spec in specs.items():
        truth = json.loads((SAMPLES_DIR / f"{name}.truth.json").read_text())
        assert truth["turns"] == spec.turns and truth["seed"] == spec.seed
        assert truth["profile"] == spec.profile and truth["labels_written"] == spec.labels
    assert specs["train.jsonl.gz"].turns == 30_000
    assert specs["nightly.jsonl.gz"].profile != "baseline"


def test_broken_sample_breaks_each_rule_once() -> None:
    _, rules = make_samples.broken_jsonl()
    frame, report = read_traces(SAMPLES_DIR / "broken.jsonl")
    assert report.rejected == len(rules) == 12
    assert report.rejects_by_rule == {rule: 1 for rule in rules.values()}
    assert frame.height == make_samples.BROKEN_TURNS - len(rules)


def test_readme_commands_match_the_specs() -> None:
    readme = (SAMPLES_DIR / "README.md").read_text()
    for spec in make_samples.SAMPLES:
        assert spec.command() in readme, spec.command()
