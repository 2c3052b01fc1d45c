"""Renderers on a summary with every section filled, including hostile log strings."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
from gfm_check import triggers
from rich.console import Console

from fpi.gates import evaluate_gates, parse_gate
from fpi.report import render_html, render_json, render_markdown, render_terminal, write_reports
from fpi.schema import CLASSES

GOLDEN = Path(__file__).parent / "golden" / "diagnose_summary.json"
EVIL = "<script>alert('x')</script>\"><img src=x onerror=alert(1)> | `code` **b**"


@pytest.fixture
def summary() -> dict:
    s = json.loads(GOLDEN.read_text())
    s = copy.deepcopy(s)
    s["inputs"] = [f"{EVIL}.jsonl"]
    changes = {c: {"baseline": 0.1, "current": 0.12, "change": 0.02, "low": 0.01, "high": 0.03,
                   "relative": 0.2, "significant": c == "asr"} for c in CLASSES}
    s["baseline"] = {"inputs": ["base.jsonl"], "turns": 100, "changes": changes}
    s["slices"]["top"] = [{
        "dimension": "locale", "value": EVIL, "class": "asr", "turns": 120, "rate": 0.3,
        "rest_rate": 0.1, "overall_rate": 0.12, "excess_failures": 21.6, "p_value": 1e-5,
        "q_value": 1e-4, "significant": True}]
    gates = [parse_gate("asr.estimate <= 0.05", name=EVIL), parse_gate("turns >= 1")]
    s["gates"] = [g.to_dict() for g in evaluate_gates(gates, s)]
    s["gate_status"] = "fail"
    return s


def test_html_has_every_section_and_nothing_active(summary: dict) -> None:
    html = render_html(summary)
    for heading in ("Gates", "Failure rates", "Where: slices", "Why: attribution",
                    "Examples for reviewers"):
        assert heading in html
    # rates, change vs baseline, attribution (each wide and compact), slices (wide only)
    assert html.count("<svg") == 7
    assert "<script" not in html.lower() and "<img" not in html
    assert "onerror=alert(1)&gt;" in html  # shown, escaped
    # the only URL is log text (escaped, inert); nothing is fetched
    assert "http://" not in html
    assert html.replace("https://evil.example", "").count("https://") == 0
    assert not re.search(r"<[^>]*\b(src|href)\s*=|url\(|@import|<link|<iframe|<object", html)
    assert "default-src 'none'" in html
    assert 'class="badge fail"' in html


def test_markdown_sections_and_escaping(summary: dict) -> None:
    md = render_markdown(summary)
    assert "**Gates: ❌ FAIL** (1 failed, 0 warned, 2 in all)" in md
    assert "| ❌ |" in md and "| ✅ |" in md
    assert "change vs baseline" in md and "+2.00 pp ⬆️" in md
    # log strings are code spans: nothing in them is markup, a link or a mention
    assert triggers(md) == {}
    assert "``<script>alert('x')</script>\"><img src=x onerror=alert(1)> \\| `code` **b**``" in md
    line = next(ln for ln in md.splitlines() if ln.startswith("| `locale` = "))
    assert len(re.findall(r"(?<!\\)\|", line)) == 8  # 7 cells: the value added no column


def test_terminal_summary(summary: dict) -> None:
    console = Console(record=True, width=120, force_terminal=False)
    render_terminal(summary, console)
    text = console.export_text()
    assert "Failure rates" in text and "Gates" in text and "FAIL" in text
    assert "Slices with excess failures" in text


def test_json_is_stable_and_writes_are_atomic(summary: dict, tmp_path: Path) -> None:
    a, b = render_json(summary), render_json(copy.deepcopy(summary))
    assert a == b and a.endswith("\n") and json.loads(a) == summary
    files = write_reports(summary, tmp_path / "out")
    assert sorted(p.name for p in files.values()) == ["report.html", "report.md",
                                                      "summary.json"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        p.name for p in files.values())


def test_html_size_does_not_grow_with_turns(summary: dict) -> None:
    small = len(render_html(summary).encode())
    big = copy.deepcopy(summary)
    big["turns"] = 100_000_000
    assert abs(len(render_html(big).encode()) - small) < 100
    assert small < 200_000
