"""fpi trend: ordering, bands and steps, model changes, bad inputs, 1 and 365 nights."""

from __future__ import annotations

import copy
import json
import os
import random
import re
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cli_run import each_in_one_process, in_process
from gfm_check import triggers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fpi
from fpi.errors import InputError, OutputError
from fpi.files import MARKER
from fpi.report.trend import render_trend_html, render_trend_markdown
from fpi.schema import CLASSES
from fpi.trend import Rate, band, bands_and_steps, build_trend, order_nights, read_night, step

GOLDEN = Path(__file__).parent / "golden" / "diagnose_summary.json"
EVIL = "<script>alert(1)</script> | **b** [x](https://evil.example)"
DAY0 = datetime(2026, 1, 1, tzinfo=UTC)


def _summary(day: int, *, asr: float = 0.05, half: float = 0.005, model: str = "m1",
             gates: dict[str, str] | None = None, with_run: bool = True) -> dict[str, Any]:
    """A summary.json of night ``day`` (the committed golden one's keys the trend reads),
    ASR at ``asr``."""
    s = copy.deepcopy(_SLIM)
    for c in CLASSES[1:]:
        est = asr if c == "asr" else 0.03
        s["rates"][c].update(estimate=est, low=est - half, high=est + half)
    s["failure"].update(estimate=0.2, low=0.19, high=0.21)
    s["model"].pop("fingerprint", None)
    s["model"]["id"] = f"sha256:{model}"
    s["gates"] = [{"name": name, "status": st, "value": asr, "bound": 0.06, "op": "<=",
                   "key": "asr.estimate", "expr": name, "message": "", "low": None,
                   "high": None, "warn_bound": None} for name, st in (gates or {}).items()]
    s["gate_status"] = ("fail" if "FAIL" in (gates or {}).values()
                        else "pass" if gates else "none")
    if with_run:
        t = DAY0 + timedelta(days=day)
        s["run"] = {"time_range": {"first": t.strftime("%Y-%m-%dT00:00:05Z"),
                                   "last": t.strftime("%Y-%m-%dT23:59:50Z")}}
    else:
        s.pop("run", None)
    return s


_GOLDEN = json.loads(GOLDEN.read_text(encoding="utf-8"))
_SLIM = {k: _GOLDEN[k] for k in ("schema_version", "fpi_version", "inputs", "turns", "rates",
                                 "failure", "model", "gates", "gate_status")}


def _write(root: Path, name: str, doc: Any) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps(doc), encoding="utf-8")
    return d


# ---------------------------------------------------------------------------
# Bands and steps
# ---------------------------------------------------------------------------


def test_band_is_median_and_the_wider_of_interval_and_spread() -> None:
    flat = [Rate(0.05, 0.045, 0.055)] * 5
    b = band(flat)
    assert b.reference == pytest.approx(0.05)
    assert (b.low, b.high) == pytest.approx((0.045, 0.055))  # MAD 0: the interval half-width
    noisy = [Rate(e, e - 0.001, e + 0.001) for e in (0.04, 0.05, 0.06, 0.05, 0.05)]
    assert band(noisy).high - 0.05 == pytest.approx(0.001)  # MAD 0: the half-width again
    spread = [Rate(e, e - 0.001, e + 0.001) for e in (0.04, 0.045, 0.05, 0.055, 0.06)]
    assert band(spread).high == pytest.approx(0.05 + 3 * 1.4826 * 0.005)


def test_step_needs_the_band_left_and_the_reference_excluded() -> None:
    b = band([Rate(0.05, 0.045, 0.055)] * 5)
    assert step(Rate(0.08, 0.072, 0.088), b) == "up"
    assert step(Rate(0.02, 0.015, 0.025), b) == "down"
    assert step(Rate(0.058, 0.049, 0.067), b) is None  # above the band, interval has 5%
    assert step(Rate(0.052, 0.051, 0.053), b) is None  # inside the band
    assert step(Rate(0.5, 0.4, 0.6), None) is None  # not tested


def test_steps_on_a_constructed_series(tmp_path: Path) -> None:
    """Ten flat nights, a jump on night 10, back to flat: one step up at night 10 only;
    a model change at night 13 restarts the history (nights 13-15 untested)."""
    rng = random.Random(3)
    asr = [0.05 + rng.uniform(-0.002, 0.002) for _ in range(18)]
    asr[10] = 0.09
    nights, _ = order_nights(
        [read_night(_write(tmp_path, f"d{i:02d}", _summary(
            i, asr=a, model="m1" if i < 13 else "m2")) / "summary.json")
         for i, a in enumerate(asr)])
    bands, steps = bands_and_steps(nights, "asr", window=7, min_history=3)
    assert [i for i, s in enumerate(steps) if s] == [10]
    assert steps[10] == "up"
    assert [i for i, b in enumerate(bands) if b is None] == [0, 1, 2, 13, 14, 15]
    assert bands[12] is not None and bands[12].nights == 7
    assert nights[13].model_changed and not nights[12].model_changed
    # the other classes are flat: no step anywhere
    assert not any(bands_and_steps(nights, "er", 7, 3)[1])


# ---------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------


#: The ASR rate of each night of test_trend_orders_by_time_range_marks_steps_and_models.
_ASR = [0.05, 0.051, 0.049, 0.05, 0.05, 0.09, 0.05, 0.05]
_BAD_WHY = "summary schema 99 is not 1"


def _ordered_case(tmp_path: Path) -> list[str]:
    """Eight nights written in any order, under unrelated names: the `fpi trend` words."""
    days = list(range(len(_ASR)))
    random.Random(1).shuffle(days)
    for k, i in enumerate(days):
        _write(tmp_path / "in", f"run-{k}", _summary(
            i, asr=_ASR[i], model="m1" if i < 6 else "m2",
            gates={EVIL: "FAIL" if _ASR[i] > 0.06 else "PASS"}))
    return ["trend", str(tmp_path / "in"), "--out", str(tmp_path / "t")]


def _bad_case(tmp_path: Path) -> list[str]:
    """A good night and a bad one, over a previous trend set: the `fpi trend` words."""
    good = _write(tmp_path, "good", _summary(0))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**_SLIM, "schema_version": 99}), encoding="utf-8")
    fpi.write_trend(build_trend([str(good)]).to_dict(), tmp_path / "t")  # the previous set
    (tmp_path / "previous.md").write_bytes((tmp_path / "t" / "trend.md").read_bytes())
    return ["trend", str(good), str(bad), "-o", str(tmp_path / "t")]


@pytest.fixture(scope="module")
def executable(tmp_path_factory: pytest.TempPathFactory,
               ) -> dict[str, tuple[Path, subprocess.CompletedProcess[str]]]:
    """Each case's directory and its `fpi trend` run as the executable runs it, one after
    the other in one child process (one interpreter start-up): the ordered nights, the bad
    night, and the bad night again with ``--skip-bad`` into another set (``t2``)."""
    ordered, bad = tmp_path_factory.mktemp("ordered"), tmp_path_factory.mktemp("bad")
    words = _bad_case(bad)
    runs = each_in_one_process(_ordered_case(ordered), words,
                               [*words[:-1], str(bad / "t2"), "--skip-bad"])
    return {"ordered": (ordered, runs[0]), "bad": (bad, runs[1]), "skipped": (bad, runs[2])}


def test_trend_orders_by_time_range_marks_steps_and_models(
        executable: dict[str, tuple[Path, subprocess.CompletedProcess[str]]]) -> None:
    tmp_path, res = executable["ordered"]
    asr = _ASR
    assert res.returncode == 0, res.stderr
    doc = json.loads((tmp_path / "t" / "trend.json").read_text())
    assert [n["label"] for n in doc["nights"]] == [f"2026-01-0{i + 1}" for i in range(8)]
    assert [n["rates"]["asr"]["estimate"] for n in doc["nights"]] == pytest.approx(asr)
    assert [(s["night"], s["class"], s["direction"]) for s in doc["steps"]] == [
        ("2026-01-06", "asr", "up")]
    assert [n["model_changed"] for n in doc["nights"]] == [False] * 6 + [True, False]
    assert [(m["id"], m["nights"]) for m in doc["models"]] == [("sha256:m1", 6), ("sha256:m2", 2)]
    assert doc["gates"] == [EVIL]
    assert doc["nights"][5]["gates"][EVIL]["status"] == "FAIL"
    assert doc["nights"][7]["rates"]["asr"]["band"] is None  # one night of the new model
    assert set(doc["classes"]) == {*CLASSES[1:], "failure"}
    # rendered from the document: the step and the model change are in both reports
    md = (tmp_path / "t" / "trend.md").read_text()
    assert "`2026-01-06` | ASR | ⬆️ up" in md and "🔁" in md
    assert triggers(md) == {}, triggers(md)  # the gate name is neutralised
    html = (tmp_path / "t" / "trend.html").read_text()
    _self_contained(html)
    assert html.count("<svg") == len(doc["classes"])
    assert "model m2" in html  # the change marked on the charts
    assert "stepped up" in html
    assert not [p for p in (tmp_path / "t").iterdir() if p.name.startswith(".")
                and p.name != MARKER]


def _self_contained(html: str) -> None:
    assert "<script" not in html.lower() and "<img" not in html
    assert "<link" not in html and "url(" not in html and "@import" not in html
    assert "https://" not in html.replace("https://evil.example", "")
    assert "Content-Security-Policy" in html


def test_one_night(tmp_path: Path) -> None:
    path = _write(tmp_path, "only", _summary(0)) / "summary.json"
    res = in_process("trend", str(path), "-o", str(tmp_path / "t"), "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert len(doc["nights"]) == 1 and doc["steps"] == []
    assert doc == json.loads((tmp_path / "t" / "trend.json").read_text())
    assert doc["nights"][0]["rates"]["asr"]["band"] is None
    _self_contained((tmp_path / "t" / "trend.html").read_text())


def test_365_nights_are_fast_and_the_html_stays_small(tmp_path: Path) -> None:
    rng = random.Random(7)
    for i in range(365):
        _write(tmp_path / "in", f"{i:03d}", _summary(
            i, asr=0.05 + rng.uniform(-0.003, 0.003) + (0.03 if i >= 300 else 0.0),
            model="m1" if i < 200 else "m2", gates={"asr": "PASS", "er": "WARN"}))
    t0 = time.perf_counter()
    trend = fpi.build_trend([str(tmp_path / "in")])  # the public API
    doc = trend.to_dict()
    files = fpi.write_trend(doc, tmp_path / "t")
    elapsed = time.perf_counter() - t0
    assert len(doc["nights"]) == 365
    assert ("2026-10-28", "asr", "up") in {(s["night"], s["class"], s["direction"])
                                           for s in doc["steps"]}  # night 300
    assert sum(n["model_changed"] for n in doc["nights"]) == 1
    html = files["html"].read_bytes()
    assert len(html) < 1_000_000, len(html)
    assert elapsed < 20, elapsed
    _self_contained(html.decode())


def test_old_summaries_without_time_range_are_ordered_by_mtime(tmp_path: Path) -> None:
    paths = []
    for i in range(3):
        paths.append(_write(tmp_path, f"night-{2 - i}", _summary(i, with_run=False)))
        os.utime(paths[-1] / "summary.json", (1_700_000_000 + i * 86400,) * 2)
    # in-process (the executable's run is test_trend_orders_by_time_range_...'s)
    res = in_process("trend", *map(str, reversed(paths)), "-o", str(tmp_path / "t"))
    assert res.returncode == 0, res.stderr
    assert "warning:" in res.stderr and res.stderr.count("modification time") == 1  # once
    doc = json.loads((tmp_path / "t" / "trend.json").read_text())
    assert [n["label"] for n in doc["nights"]] == ["night-2", "night-1", "night-0"]
    assert {n["ordered_by"] for n in doc["nights"]} == {"mtime"}
    assert doc["warnings"]


@pytest.mark.parametrize(("content", "why"), [
    ("{not json", "not JSON"),
    (json.dumps({"hello": 1}), "not an fpi summary.json"),
    (json.dumps({**_SLIM, "schema_version": 99}), "summary schema 99 is not 1"),
    (json.dumps({**_SLIM, "rates": {"asr": {"estimate": "x"}}}), "missing or not numbers"),
    ("\xff\xfe", "cannot read"),
])
def test_bad_summaries_are_named_with_the_reason(tmp_path: Path, content: str, why: str) -> None:
    bad = tmp_path / "bad.json"
    bad.write_bytes(content.encode("latin-1") if content.startswith("\xff") else content.encode())
    with pytest.raises(InputError, match=re.escape(why)) as err:
        read_night(bad)
    assert str(bad) in str(err.value)


def test_bad_input_is_one_error_line_exit_2(
        executable: dict[str, tuple[Path, subprocess.CompletedProcess[str]]]) -> None:
    tmp_path, res = executable["bad"]
    bad, why = tmp_path / "bad.json", _BAD_WHY
    previous = (tmp_path / "previous.md").read_bytes()  # the set before the run
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and why in lines[0]
    assert str(bad) in lines[0] and "Traceback" not in res.stderr
    assert (tmp_path / "t" / "trend.md").read_bytes() == previous  # nothing half-written
    # --skip-bad: the library's warning is the executable's one "warning:" line on stderr
    _, skipped = executable["skipped"]
    assert skipped.returncode == 0, skipped.stderr
    warnings = [ln for ln in skipped.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and warnings[0].startswith("warning: skipped"), skipped.stderr
    assert why in warnings[0] and "Traceback" not in skipped.stderr
    assert len(json.loads((tmp_path / "t2" / "trend.json").read_text())["nights"]) == 1


def test_missing_paths_and_nothing_usable(tmp_path: Path) -> None:
    res = in_process("trend", str(tmp_path / "nope"), "-o", str(tmp_path / "t"))
    assert res.returncode == 2 and "no such file or directory" in res.stderr
    assert res.stderr.count("\n") == 1 and not (tmp_path / "t").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"no summary\.json"):
        build_trend([str(tmp_path / "empty")])
    with pytest.raises(InputError, match="no file or directory matches"):
        build_trend([str(tmp_path / "nothing-*")])
    bad = tmp_path / "bad.json"
    bad.write_text("[]", encoding="utf-8")
    with pytest.raises(InputError, match="no usable summary"):
        build_trend([str(bad)], skip_bad=True)
    with pytest.raises(InputError, match="cannot exceed"):
        build_trend([str(bad)], window=2, min_history=3)


def test_renderers_neutralise_labels(tmp_path: Path) -> None:
    nights = [read_night(_write(tmp_path, f"{EVIL}{i}".replace("/", "_"),
                                _summary(i, with_run=False)) / "summary.json")
              for i in range(2)]
    ordered, warnings = order_nights(nights)
    assert warnings
    from fpi.trend import Trend

    doc = Trend(ordered, {c: [None, None] for c in ("false_wake", "asr", "nlu", "er", "result",
                                                    "failure")},
                {c: [None, None] for c in ("false_wake", "asr", "nlu", "er", "result",
                                           "failure")}, 7, 3, warnings).to_dict()
    md = render_trend_markdown(doc)
    assert "<script>" in md  # the label is there, but only inside code spans: inert
    assert triggers(md) == {}, triggers(md)
    html = render_trend_html(doc)
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert re.search(r"<svg[^>]*width=\"100%\"", html)


@given(st.permutations(range(9)))
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_input_order_gives_the_same_trend(tmp_path: Path, order: list[int]) -> None:
    root = tmp_path / "nights"  # tmp_path is shared by the examples: write the nights once
    if not root.exists():
        for i in range(9):
            _write(root, f"n{i}", _summary(i, asr=0.05 + 0.004 * (i % 3) + 0.04 * (i == 7),
                                           model="m1" if i < 3 else "m2"))
    doc = build_trend([str(root / f"n{i}") for i in order]).to_dict()
    assert [n["label"] for n in doc["nights"]] == [f"2026-01-0{i + 1}" for i in range(9)]
    assert [s["night"] for s in doc["steps"]] == ["2026-01-08"]
    reference = build_trend([str(root)]).to_dict()
    assert doc == reference


def test_a_failed_write_leaves_the_previous_trend_whole(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The three files are one set (fpi.files.staged_output_dir): a disk that fills up
    half-way leaves the previous set byte for byte, and no staging behind."""
    _write(tmp_path / "in", "a", _summary(0))
    doc = fpi.build_trend([str(tmp_path / "in")]).to_dict()
    out = tmp_path / "t"
    fpi.write_trend(doc, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(before) == {"trend.json", "trend.md", "trend.html", MARKER}
    real = Path.write_text

    def full_disk(self: Path, *args: Any, **kwargs: Any) -> int:
        if self.name == "trend.html":  # trend.json and trend.md are already staged
            raise OSError(28, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_disk)
    doc["nights"][0]["label"] = "changed"
    with pytest.raises(OutputError, match=r"cannot write the trend to .*: No space left"):
        fpi.write_trend(doc, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "t"]


def test_trend_refuses_a_folder_it_did_not_write(tmp_path: Path) -> None:
    _write(tmp_path / "in", "a", _summary(0))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.md").write_text("keep", encoding="utf-8")
    # in-process (an error's exit through the executable is test_bad_input_...'s)
    res = in_process("trend", str(tmp_path / "in"), "--out", str(mine))
    assert res.returncode == 2, res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "not an fpi trend output" in errors[0], res.stderr
    assert "Traceback" not in res.stderr
    assert [p.name for p in mine.iterdir()] == ["notes.md"]
    # a trend directory of an older fpi (no marker) is replaced whole
    old = tmp_path / "old"
    old.mkdir()
    for name in ("trend.json", "trend.md", "trend.html"):
        (old / name).write_text('{"kind": "fpi-trend"}' if name == "trend.json" else "x")
    assert in_process("trend", str(tmp_path / "in"), "--out", str(old)).returncode == 0
    assert json.loads((old / "trend.json").read_text())["nights"]


def test_compiled_templates_are_cached_and_a_bad_cache_is_a_miss(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The report templates' compiled code is kept in fpi's cache directory (FPI_CACHE_DIR)
    and read back; a damaged or unwritable cache is only a miss."""
    import jinja2

    from fpi.report._jinja import environment

    cache = tmp_path / "cache"
    monkeypatch.setenv("FPI_CACHE_DIR", str(cache))
    page = environment(autoescape=True).get_template("trend.html.j2")
    assert [p.suffix for p in cache.iterdir()] == [".cache"]
    with monkeypatch.context() as m:  # a new environment reads it instead of compiling
        m.setattr(jinja2.Environment, "compile", lambda *a, **k: pytest.fail("compiled"))
        again = environment(autoescape=True).get_template("trend.html.j2")
    assert again.filename == page.filename and again is not page
    next(cache.iterdir()).write_bytes(b"j2 damaged")
    assert environment(autoescape=True).get_template("trend.html.j2").filename == page.filename
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    monkeypatch.setenv("FPI_CACHE_DIR", str(blocked / "cache"))
    assert environment(autoescape=True).get_template("trend.html.j2").filename == page.filename


def test_compiled_templates_go_where_the_cache_is_when_loaded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The report environments are built when fpi.report is imported; a cache directory
    set later (a program, a test's FPI_CACHE_DIR) is the one their templates use."""
    from fpi.report._jinja import environment

    monkeypatch.setenv("FPI_CACHE_DIR", str(tmp_path / "at-import"))
    env = environment(autoescape=True)
    monkeypatch.setenv("FPI_CACHE_DIR", str(tmp_path / "later"))
    env.get_template("trend.html.j2")
    assert not (tmp_path / "at-import").exists()
    assert [p.suffix for p in (tmp_path / "later").iterdir()] == [".cache"]
