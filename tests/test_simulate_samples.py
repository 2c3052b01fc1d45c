"""The shipped sample logs are what the simulator makes for their seeds."""

from __future__ import annotations

import gzip
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from fpi import writers
from fpi.ingest import read_traces

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


def _stored_gzip_file(*args: Any, **kwargs: Any) -> gzip.GzipFile:
    """A gzip stream that stores its data uncompressed (level 0)."""
    return gzip.GzipFile(*args, **{**kwargs, "compresslevel": 0})


@pytest.fixture(scope="module")
def broken() -> tuple[str, dict[int, str]]:
    """broken.jsonl's text and rules, made once for the module."""
    return make_samples.broken_jsonl()


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory, broken: tuple[str, dict[int, str]]) -> Path:
    """Every sample made again, its gzip files stored at level 0 (the tests compare the
    decompressed content, which is the same at any level; level 1 compressed the 57 MB in
    0.4 CPU-s, level 6 in 1.0; TurnWriter takes 0 for its default)."""
    out = tmp_path_factory.mktemp("samples")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(writers, "gzip", SimpleNamespace(GzipFile=_stored_gzip_file))
        mp.setattr(make_samples, "broken_jsonl", lambda: broken)
        make_samples.make(out)
    return out


def test_samples_are_small() -> None:
    total = sum(p.stat().st_size for p in SAMPLES_DIR.iterdir() if p.is_file())
    assert total < 15 * 1024 * 1024


@pytest.mark.slow
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


def test_broken_sample_breaks_each_rule_once(broken: tuple[str, dict[int, str]]) -> None:
    _, rules = broken
    frame, report = read_traces(SAMPLES_DIR / "broken.jsonl")
    assert report.rejected == len(rules) == 12
    assert report.rejects_by_rule == {rule: 1 for rule in rules.values()}
    assert frame.height == make_samples.BROKEN_TURNS - len(rules)


def test_readme_commands_match_the_specs() -> None:
    readme = (SAMPLES_DIR / "README.md").read_text()
    for spec in make_samples.SAMPLES:
        assert spec.command() in readme, spec.command()
