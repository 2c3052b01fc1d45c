"""A bundle nobody can tamper with: every edit to a file or the manifest is refused.

Plus the model id (the bundle's own hash) in the summary and the baseline checks.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from any_text import any_text
from cli_run import in_process
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_turns import make_turns

from fpi.diagnose import diagnose
from fpi.errors import InputError, ModelError
from fpi.model import load_bundle
from fpi.model.bundle import MODEL_FILE, NO_CONTEXT_FILE
from fpi.model.manifest import (
    MANIFEST_FILE,
    SAFE_NAME,
    SCHEMA,
    bundle_hash,
    check_entry_name,
    validate_manifest,
)
from fpi.schema import CLASSES

FPI = [sys.executable, "-m", "fpi"]
FAST_DIAG: dict[str, Any] = {"attribution": "none", "n_boot": 20, "min_support": 20}


@pytest.fixture
def bundle(small_bundle, tmp_path: Path) -> Path:
    """A private copy of the session's bundle, free to damage."""
    target = tmp_path / "model"
    shutil.copytree(small_bundle.path, target)
    return target


def manifest(b: Path) -> dict[str, Any]:
    return json.loads((b / MANIFEST_FILE).read_text())


def write(b: Path, m: dict[str, Any], rehash: bool) -> None:
    if rehash:  # a consistent rewrite: only the content check can catch it
        m["bundle_hash"] = bundle_hash(m)
    (b / MANIFEST_FILE).write_text(json.dumps(m, indent=2))


def edit(rehash: bool, fn: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def apply(b: Path) -> None:
        m = manifest(b)
        fn(m)
        write(b, m, rehash)
    return apply


def _bias(m: dict[str, Any]) -> None:
    m["calibration"]["bias"][3] += 0.4


def _escape(m: dict[str, Any]) -> None:
    m["files"]["../outside/model.txt"] = m["files"].pop(MODEL_FILE)


def _absolute(m: dict[str, Any]) -> None:
    m["files"]["/etc/passwd"] = m["files"].pop(NO_CONTEXT_FILE)


def _outside_link(b: Path) -> None:
    outside = b.parent / "outside.txt"
    shutil.copy(b / MODEL_FILE, outside)
    (b / MODEL_FILE).unlink()
    (b / MODEL_FILE).symlink_to(outside)


#: name -> (damage, words the one-line message must hold)
CASES: dict[str, tuple[Callable[[Path], None], tuple[str, ...]]] = {
    "missing_file": (lambda b: (b / NO_CONTEXT_FILE).unlink(), (NO_CONTEXT_FILE, "missing")),
    "extra_file": (lambda b: (b / "notes.txt").write_text("hi"), ("notes.txt", "unexpected")),
    "edited_model": (lambda b: (b / MODEL_FILE).write_text(
        (b / MODEL_FILE).read_text().replace("shrinkage=", "shrinkage=9", 1)),
        (MODEL_FILE, "edited")),
    "edited_bias": (edit(False, _bias), (MANIFEST_FILE, "edited")),
    "missing_section": (edit(True, lambda m: m.pop("calibration")),
                        (MANIFEST_FILE, "calibration", "missing")),
    "wrong_type": (edit(True, lambda m: m["calibration"].update(temperature="hot")),
                   (MANIFEST_FILE, "calibration.temperature", "number")),
    "nested_wrong_type": (edit(True, lambda m: m["features"][2].update(levels=7)),
                          (MANIFEST_FILE, "features[2].levels")),
    "unknown_key": (edit(True, lambda m: m.update(extra_weights=[1, 2])),
                    (MANIFEST_FILE, "extra_weights")),
    "escaping_entry": (edit(True, _escape), ("../outside/model.txt", "plain file name")),
    "absolute_entry": (edit(True, _absolute), ("/etc/passwd", "plain file name")),
    "symlink_outside": (_outside_link, (MODEL_FILE, "not a regular file")),
    "not_json": (lambda b: (b / MANIFEST_FILE).write_text("{oops"), (MANIFEST_FILE, "damaged")),
    "old_format": (edit(True, lambda m: m.update(format_version="1.0")), ("format 1.0", "retrain")),
    "bias_length": (edit(True, lambda m: m["calibration"]["bias"].pop()),
                    (MANIFEST_FILE, "calibration.bias has 5 values")),
    "feature_kind": (edit(True, lambda m: m["features"][0].update(kind="magic")),
                     (MANIFEST_FILE, "feature kind(s) magic")),
    "bad_digest": (edit(True, lambda m: m["files"].update({MODEL_FILE: "abc"})),
                   (MODEL_FILE, "SHA-256")),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_tampering_is_refused(case: str, bundle: Path) -> None:
    damage, words = CASES[case]
    damage(bundle)
    with pytest.raises(ModelError) as info:
        load_bundle(bundle)
    message = str(info.value)
    assert "\n" not in message
    for w in words:
        assert w in message, (w, message)


@pytest.mark.parametrize("case", [pytest.param("edited_bias", marks=pytest.mark.slow),
                                  "escaping_entry", "extra_file", "wrong_type"])
def test_cli_tampering_is_one_error_line_exit_2(case: str, bundle: Path, tmp_path: Path) -> None:
    """The real executable for one case; the others take the same path from the refusing
    ModelError to the error line, so they run in process (a start-up costs 2 CPU-s)."""
    CASES[case][0](bundle)
    night = tmp_path / "night.parquet"
    make_turns(10, seed=4).write_parquet(night)
    out = tmp_path / "out"
    args = ["diagnose", str(night), "--model", str(bundle), "--out", str(out)]
    proc = (subprocess.run([*FPI, *args], capture_output=True, text=True, timeout=300)
            if case == "edited_bias" else in_process(*args))
    assert proc.returncode == 2, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert all(w in lines[0] for w in CASES[case][1]), lines[0]
    assert not out.exists()


def test_an_untouched_copy_loads_and_its_id_is_its_hash(small_bundle, bundle: Path) -> None:
    loaded = load_bundle(bundle)
    m = manifest(bundle)
    assert loaded.model_id == m["bundle_hash"] == bundle_hash(m)
    assert loaded.model_id != m["training"]["fingerprint"]
    assert set(m["versions"]) == {"fpi", "lightgbm", "polars", "numpy", "python"}


@given(any_text(max_size=30))
def test_entry_names_are_plain_names_or_refused(name: str) -> None:
    plain = SAFE_NAME.fullmatch(name) is not None and name != MANIFEST_FILE
    if plain:
        assert check_entry_name(name) == name
        # whatever it is, it names a file directly inside the bundle
        joined = os.path.normpath(os.path.join("/bundle", name))
        assert os.path.dirname(joined) == "/bundle" and joined != "/bundle"
        assert not name.startswith(".")
    else:
        with pytest.raises(ValueError, match="plain file name"):
            check_entry_name(name)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                    | any_text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(any_text(max_size=5), inner, max_size=3), max_leaves=8)


@settings(max_examples=60, deadline=None)
@given(section=st.sampled_from(sorted(SCHEMA)), value=JSON)
def test_any_value_in_any_section_is_valid_or_a_model_error(small_bundle, section: str,
                                                           value: Any) -> None:
    m = copy.deepcopy(small_bundle.manifest)
    m[section] = value
    try:
        validate_manifest(m, "m/manifest.json")
    except ModelError as exc:
        assert str(exc).startswith("m/manifest.json is damaged or edited: ")
        assert "\n" not in str(exc)


@given(st.lists(st.sampled_from(["..", ".", "model.txt", "a", "", "/"]), min_size=1,
                max_size=4).map("/".join))
def test_path_like_entries_never_pass(name: str) -> None:
    if name in ("model.txt", "a"):
        assert check_entry_name(name) == name
    else:
        with pytest.raises(ValueError):
            check_entry_name(name)


# ---------------------------------------------------------------------------
# The model id in the summary; baselines of another model
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("integrity-night") / "night.parquet"
    make_turns(50, seed=6).write_parquet(path)
    return path


@pytest.fixture(scope="module")
def first_run(small_bundle, night: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("integrity-run") / "out"
    return diagnose([night], model=small_bundle.path, out_dir=out, **FAST_DIAG)


def test_summary_names_the_model_by_its_bundle_hash(small_bundle, first_run) -> None:
    model = first_run.summary["model"]
    assert model["id"] == small_bundle.manifest["bundle_hash"]
    assert model["training_data"] == small_bundle.manifest["training"]["fingerprint"]
    assert "fingerprint" not in model
    assert set(first_run.summary["versions"]) == {"fpi", "lightgbm", "polars", "numpy",
                                                  "python"}
    short = model["id"].removeprefix("sha256:")[:12]
    assert f"model `{short}`" in (first_run.out_dir / "report.md").read_text()
    assert short in (first_run.out_dir / "report.html").read_text()


def test_same_model_baseline_is_recorded(small_bundle, night: Path, first_run,
                                         tmp_path: Path) -> None:
    res = diagnose([night], model=small_bundle.path, out_dir=tmp_path / "o",
                   baseline=first_run.out_dir / "summary.json", **FAST_DIAG)
    base = res.summary["baseline"]
    assert base["model_id"] == small_bundle.manifest["bundle_hash"] and base["same_model"]


def _other_model_baseline(first_run, tmp_path: Path) -> Path:
    doc = dict(first_run.summary)
    doc["model"] = {**doc["model"], "id": "sha256:" + "ab" * 32}
    path = tmp_path / "other.json"
    path.write_text(json.dumps(doc))
    return path


def test_baseline_of_another_model_is_refused_unless_allowed(small_bundle, night: Path,
                                                             first_run, tmp_path: Path) -> None:
    other = _other_model_baseline(first_run, tmp_path)
    with pytest.raises(InputError, match=r"other.json: the baseline was made with model "
                                         r"abababababab.*--allow-other-model"):
        diagnose([night], model=small_bundle.path, out_dir=tmp_path / "o", baseline=other,
                 **FAST_DIAG)
    assert not (tmp_path / "o").exists()
    # allowed: test_cli_allow_other_model's second run (the same library call, in process)


def test_cli_allow_other_model(small_bundle, night: Path, first_run, tmp_path: Path) -> None:
    """In process: the executable's part of a refusal (one error line, exit 2) is
    test_cli_tampering_is_one_error_line_exit_2[edited_bias]'s (in the slow tier)."""
    other = _other_model_baseline(first_run, tmp_path)
    args = ["diagnose", str(night), "--model", str(small_bundle.path), "--out",
            str(tmp_path / "o"), "--baseline", str(other), "--attribution", "none"]
    refused = in_process(*args)
    assert refused.returncode == 2
    assert refused.stderr.strip().count("\n") == 0 and "--allow-other-model" in refused.stderr
    assert not (tmp_path / "o").exists()
    allowed = in_process(*args, "--allow-other-model")
    assert allowed.returncode == 0, allowed.stderr
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["baseline"]["model_id"] == "sha256:" + "ab" * 32
    assert summary["baseline"]["same_model"] is False


@pytest.mark.parametrize(("content", "words"), [
    ("{oops", "not a summary.json"),
    ("[1, 2]", "not an fpi summary.json"),
    (json.dumps({"schema_version": 1, "rates": "high"}), "'rates' is not an object"),
    (json.dumps({"schema_version": 1, "rates": {"correct": {"estimate": 0.9}}}),
     "rates of correct"),
    (json.dumps({"schema_version": 1, "rates": {}}), "rates of correct, false_wake"),
    (json.dumps({"schema_version": 1, "model": 5, "rates": {
        c: {"estimate": 0.1, "low": 0.0, "high": 0.2} for c in CLASSES}}), "'model' is not"),
    (json.dumps({"schema_version": 1, "rates": {
        c: {"estimate": True, "low": 0.0, "high": 0.2} for c in CLASSES}}), "not numbers"),
])
def test_malformed_baseline_is_a_clean_input_error(small_bundle, night: Path, tmp_path: Path,
                                                    content: str, words: str) -> None:
    path = tmp_path / "summary.json"
    path.write_text(content)
    with pytest.raises(InputError, match=words):
        diagnose([night], model=small_bundle.path, out_dir=tmp_path / "o", baseline=path,
                 **FAST_DIAG)
