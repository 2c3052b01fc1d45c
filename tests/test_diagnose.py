"""fpi diagnose / explain end to end: files, exit codes, escaping, redaction, golden reports."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from gfm_check import triggers
from golden_compare import check_golden, compare_json
from tiny_turns import make_turns
from typer.testing import CliRunner

from fpi.cli import app
from fpi.diagnose import diagnose, explain
from fpi.diagnose.attribution import GROUP_COLUMNS
from fpi.errors import InputError
from fpi.model import load_bundle
from fpi.schema import CLASSES

runner = CliRunner()
GOLDEN = Path(__file__).parent / "golden"
PAYLOAD = ('<script>alert("pwn")</script> & \'q\' <b>bold</b> [x](https://evil.example) '
           "www.evil.example a@evil.example @octocat #123")
BAD_LOCALE = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="session")
def bundle_dir(small_bundle) -> Path:
    """The session's tiny model (conftest.py); the golden reports were made with it."""
    return small_bundle.path


def _hostile(frame: pl.DataFrame) -> pl.DataFrame:
    """Log text full of markup: every response, and one locale for a big slice."""
    n = frame.height
    loc = np.where(np.arange(n) % 3 == 0, BAD_LOCALE, "en-US")
    return frame.with_columns(
        pl.col("result").struct.with_fields(pl.lit(PAYLOAD).alias("response_text")),
        pl.col("device").struct.with_fields(pl.Series(loc).alias("locale")),
    )


@pytest.fixture(scope="session")
def night(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("diag-night") / "night.parquet"
    _hostile(make_turns(160, seed=1)).write_parquet(path)
    return path


@pytest.fixture(scope="session")
def run(night: Path, bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("diag-run") / "out"
    return diagnose([night], model=bundle_dir, out_dir=out, attribution_sample=60, n_boot=50,
                    min_support=20)


def test_writes_every_output(run) -> None:
    out = run.out_dir
    for name in ("summary.json", "report.md", "report.html"):
        assert (out / name).is_file(), name
    # one predictions file per partition (this night is one)
    assert [p.name for p in (out / "predictions").iterdir()] == ["part-00000.parquet"]
    # no temp files left, in the set or beside it; only the output marker is hidden
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [".fpi-output.json"]
    assert [p.name for p in out.parent.iterdir()] == [out.name]
    pred = pl.read_parquet(out / "predictions" / "*.parquet")
    assert pred.columns[:3] == ["session_id", "turn_index", "predicted"]
    assert [f"p_{c}" for c in CLASSES] == pred.columns[3:9]
    assert [f"contrib_{g}" for g in GROUP_COLUMNS] == pred.columns[9:]
    probs = pred.select(f"p_{c}" for c in CLASSES).to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    attributed = pred.filter(pl.col("contrib_bias").is_not_null())
    assert attributed.height == run.summary["attribution"]["turns_attributed"]
    # stratified: every predicted class present is represented in the sample
    assert set(attributed["predicted"]) == set(pred["predicted"])


def test_summary_keys_are_stable(run) -> None:
    s = json.loads((run.out_dir / "summary.json").read_text())
    assert s == run.summary
    assert s["schema_version"] == 1
    for key in ("turns", "sessions", "rates", "failure", "attribution", "slices", "gates",
                "gate_status", "baseline", "examples", "model", "method", "ingest", "labels"):
        assert key in s, key
    for c in CLASSES:
        r = s["rates"][c]
        assert {"estimate", "low", "high", "count"} <= set(r)
        assert r["low"] <= r["estimate"] <= r["high"]
    assert sum(s["rates"][c]["count"] for c in CLASSES) == s["turns"]
    assert s["labels"]["turns"] == s["turns"]  # make_turns is labelled
    assert set(s["labels"]["true_rates"]) == set(CLASSES)
    m = s["method"]
    # the bundle has per-ASR-confidence-stratum matrices: the headline is the stratified PACC
    assert m["estimator"] == "pacc-per-asr-confidence-stratum"
    assert m["estimator_key"] == "spacc" and m["weight"] is None
    for c in CLASSES:  # every estimator beside it; the interval spans PCC's too
        r = s["rates"][c]
        assert r["estimate"] == pytest.approx(r["spacc"], abs=2e-6)
        assert r["low"] <= min(r["estimate"], r["mean_probability"]) + 1e-9
        assert {"count_rate", "mean_probability", "acc", "pacc", "em", "spacc"} <= set(r)


def test_html_escapes_log_text_and_fetches_nothing(run) -> None:
    html = (run.out_dir / "report.html").read_text()
    assert PAYLOAD not in html and "<script" not in html.lower()
    assert "&lt;script&gt;alert(&#34;pwn&#34;)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html  # the locale slice, escaped
    assert "<img" not in html
    assert "http://" not in html and "https://" not in html.replace(
        "https://evil.example", "")  # only the escaped log text itself
    assert "<link" not in html and "@import" not in html and "url(" not in html
    assert "<svg" in html
    assert len(html.encode()) < 2_000_000


def test_markdown_neutralises_log_text(run) -> None:
    md = (run.out_dir / "report.md").read_text()
    assert triggers(md) == {}  # no link, mention, issue ref or HTML outside code spans
    assert f"`{PAYLOAD}`" in md  # shown as it was, in a code span
    assert "## Failure rates" in md and "| ASR |" in md


@pytest.fixture(scope="module")
def redacted_all(night: Path, bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """One redacted run that attributes every turn (redaction masks the text the reports
    show; the predictions and their contributions are the model's either way)."""
    out = tmp_path_factory.mktemp("diag-redacted") / "out"
    return diagnose([night], model=bundle_dir, out_dir=out, attribution="all", n_boot=20,
                    redact=True)


def test_redact_masks_text(redacted_all) -> None:
    res = redacted_all
    for name in ("summary.json", "report.md", "report.html"):
        text = (res.out_dir / name).read_text()
        assert "pwn" not in text, name
        assert "garbage store" not in text, name
    ex = next(e for c in CLASSES[1:] for e in res.summary["examples"][c])
    assert ex["answered"]["response"] == "[redacted]"
    assert res.summary["redacted"] is True


def test_attribution_all_matches_the_margin(night: Path, bundle_dir: Path, redacted_all) -> None:
    res = redacted_all
    pred = pl.read_parquet(res.out_dir / "predictions" / "*.parquet")
    assert pred["contrib_bias"].null_count() == 0
    assert res.summary["attribution"]["mode"] == "all"
    assert res.summary["attribution"]["turns_attributed"] == pred.height
    # grouped contributions sum to the raw margin of the predicted class
    from fpi.features import build_features

    bundle = load_bundle(bundle_dir)
    margin = bundle.raw_margin(build_features(pl.read_parquet(night)))
    idx = pred["predicted"].replace_strict({c: i for i, c in enumerate(CLASSES)}).to_numpy()
    total = pred.select(f"contrib_{g}" for g in GROUP_COLUMNS).to_numpy().sum(axis=1)
    np.testing.assert_allclose(total, margin[np.arange(len(idx)), idx], atol=1e-6)


def test_batches_of_whole_sessions_give_the_same_answer(night: Path, bundle_dir: Path,
                                                         tmp_path: Path, run) -> None:
    # about 130 turns a batch: three batches of whole sessions from the night's 384 turns
    # (each batch beyond the first costs about 0.13 CPU-s)
    small = diagnose([night], model=bundle_dir, out_dir=tmp_path, attribution="none",
                     n_boot=50, min_support=20, batch_turns=130)
    assert len(list((tmp_path / "predictions").iterdir())) == 3
    a = pl.read_parquet(tmp_path / "predictions" / "*.parquet").drop(
        pl.selectors.starts_with("contrib"))
    b = pl.read_parquet(run.out_dir / "predictions" / "*.parquet").drop(
        pl.selectors.starts_with("contrib"))
    probs = [f"p_{c}" for c in CLASSES]
    assert a.drop(probs).equals(b.drop(probs))
    # vectorised kernels may round a last bit differently on a shorter batch
    np.testing.assert_allclose(a.select(probs).to_numpy(), b.select(probs).to_numpy(),
                               rtol=1e-12, atol=1e-15)
    assert compare_json(run.summary["rates"], small.summary["rates"]) == []


def test_raw_jsonl_input_goes_through_ingest(bundle_dir: Path, tmp_path: Path) -> None:
    raw = tmp_path / "night.jsonl"
    frame = make_turns(40, seed=3)
    lines = frame.with_columns(pl.col("timestamp").dt.strftime("%Y-%m-%dT%H:%M:%S%.3fZ"))
    raw.write_text("\n".join([*lines.write_ndjson().splitlines(), "{not json"]) + "\n")
    res = diagnose([raw], model=bundle_dir, out_dir=tmp_path / "out", attribution="none",
                   n_boot=20)
    assert res.summary["turns"] == frame.height
    assert res.summary["ingest"]["rejected"] == 1
    assert (tmp_path / "out" / "rejects.jsonl").is_file()
    assert "1 of 101 input records were rejected (`invalid_json` 1)" in (
        tmp_path / "out" / "report.md").read_text()


# ---------------------------------------------------------------------------
# CLI and exit codes
# ---------------------------------------------------------------------------


def _cli(*args: str | Path):
    return runner.invoke(app, [str(a) for a in args])


def test_cli_exit_codes(night: Path, bundle_dir: Path, tmp_path: Path, run) -> None:
    base = ["diagnose", night, "--model", bundle_dir, "--attribution", "none", "--examples", "0"]
    # a failing gate: JUnit and --json in one run (the message stays on stderr)
    fail = _cli(*base, "--out", tmp_path / "b", "--gate", "failure.estimate <= 0.01",
                "--junit", tmp_path / "b" / "gates.xml", "--json")
    assert fail.exit_code == 1, fail.output
    assert "gate failed: failure.estimate <= 0.01" in fail.stderr
    assert 'failures="1"' in (tmp_path / "b" / "gates.xml").read_text()
    doc = json.loads(fail.stdout)
    assert doc["gate_status"] == "fail" and doc["gates"][0]["status"] == "FAIL"
    # passing gates, a baseline comparison and a baseline gate (the baseline: the session
    # fixture's run of this night and model, whose other options change no point estimate)
    cmp_ = _cli(*base, "--out", tmp_path / "d", "--baseline", run.out_dir / "summary.json",
                "--gate", "turns >= 1", "--gate", "asr.estimate <= baseline + 0.01", "--json")
    assert cmp_.exit_code == 0, cmp_.output
    doc = json.loads(cmp_.stdout)
    assert doc["baseline"]["changes"]["asr"]["change"] == 0


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--gate", "asr.estimate <="], "not of the form"),
        (["--gate", "asr.estimate <= baseline"], "give --baseline"),
        (["--baseline", "nope/summary.json"], "baseline summary not found"),
        (["--gates", "nope.toml"], "gate file not found"),
        (["--attribution", "some"], "'--attribution': 'some' is not one of"),
    ],
)
def test_cli_usage_errors_exit_2(night: Path, bundle_dir: Path, tmp_path: Path,
                                 extra: list[str], fragment: str) -> None:
    res = _cli("diagnose", night, "--model", bundle_dir, "--out", tmp_path, *extra)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], lines
    assert not (tmp_path / "summary.json").exists()


def test_cli_bad_model_and_input_exit_2(night: Path, bundle_dir: Path, tmp_path: Path) -> None:
    res = _cli("diagnose", night, "--model", tmp_path / "no-model", "--out", tmp_path / "o")
    assert res.exit_code == 2 and res.stderr.startswith("error:")
    res = _cli("diagnose", tmp_path / "missing.jsonl", "--model", bundle_dir, "--out",
               tmp_path / "o")
    assert res.exit_code == 2 and "missing.jsonl" in res.stderr


class _ShapExplanation:
    """What ``Explanation.to_shap`` hands ``shap.Explanation`` (its parameters by name).
    Importing shap costs this process about 3 CPU-s; the real shap draws the documented
    waterfall of such a call in tests/test_shap_extra.py."""

    def __init__(self, values: np.ndarray, base_values: float, data: np.ndarray,
                 feature_names: list[str]) -> None:
        self.values, self.base_values, self.data = values, base_values, data
        self.feature_names = feature_names


def test_explain(night: Path, bundle_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sid = pl.read_parquet(night)["session_id"][0]
    e = explain([night], model=bundle_dir, session_id=sid, turn_index=0)
    assert e.predicted in CLASSES
    assert sum(e.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert set(e.components[e.predicted]) == set(GROUP_COLUMNS)
    assert e.features and e.features[0]["component"] in GROUP_COLUMNS
    shap = types.ModuleType("shap")
    shap.Explanation = _ShapExplanation  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "shap", shap)
    sx = e.to_shap()  # shap's Explanation: values + base value = the class's raw margin
    margin = sum(e.components[e.predicted].values())
    assert float(sx.values.sum() + sx.base_values) == pytest.approx(margin, abs=1e-3)
    assert len(sx.values) == len(sx.data) == len(sx.feature_names) > 0
    res = _cli("explain", night, "--model", bundle_dir, "--session", sid, "--turn", "0")
    assert res.exit_code == 0, res.output
    assert e.predicted in res.stdout and "contributions" in res.stdout
    bad = _cli("explain", night, "--model", bundle_dir, "--session", sid, "--turn", "99")
    assert bad.exit_code == 2 and "has no turn 99" in bad.stderr
    with pytest.raises(InputError, match="not in the input"):
        explain([night], model=bundle_dir, session_id="nobody", turn_index=0)


# ---------------------------------------------------------------------------
# Golden files (fixed seed). Regenerate with --update-golden when a change is intended.
# ---------------------------------------------------------------------------


def _without_run(name: str, text: str) -> str:
    """The output minus the run metadata (wall time, paths, CI: differs run to run)."""
    if name == "summary.json":
        from fpi.report import render_json

        doc = json.loads(text)
        assert {"time_range", "inputs", "wall_seconds", "bundle_id"} <= set(doc.pop("run"))
        return render_json(doc)
    head, sep, rest = text.partition("## Run\n")
    assert sep, "report.md has no run section"
    return head + rest[rest.index("---\n"):]


def test_golden_summary_and_markdown(run, update_golden: bool) -> None:
    """Keys and strings exactly, numbers within a tolerance (see golden_compare); the run
    metadata (wall time, paths, CI) and the model's id (checked by the model tests) aside."""
    ignore = {"summary.json": ("$.model.fingerprint", "$.model.id"),
              "report.md": (r"model `[0-9a-f]{12}`",)}
    for name in ("summary.json", "report.md"):
        got = _without_run(name, (run.out_dir / name).read_text())
        check_golden(GOLDEN / f"diagnose_{name}", got, update=update_golden,
                     test="tests/test_diagnose.py", ignore=ignore[name])
