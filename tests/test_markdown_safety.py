"""Log text in report.md and report.html is inert, whatever it holds.

Markdown is checked twice: with :mod:`gfm_check` (what GitHub would act on outside
code spans, including @mentions and #123, which GitHub adds after rendering)
and by rendering with cmark-gfm, GitHub's own Markdown library.
"""

from __future__ import annotations

import functools
import html
import json
import re
from collections import Counter
from pathlib import Path

import cmarkgfm
import pytest
from any_text import any_text
from cmarkgfm.cmark import Options
from gfm_check import code_span, outside_code, triggers
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from fpi.report import render_html, render_markdown, render_terminal
from fpi.report.markdown import html_code, md, md_cell, plain

GOLDEN = Path(__file__).parent / "golden" / "diagnose_summary.json"
HOSTILE = [
    "see https://evil.example/x and http://a.b, www.evil.example, ftp://f.example",
    "mail a@evil.example or mailto:a@evil.example, xmpp:a@evil.example",
    "cc @octocat and @org/team, fixes #123 and GH-7, owner/repo#9",
    "<script>alert(1)</script><img src=x onerror=alert(1)> &amp; &#64; &lt;",
    "[link](https://evil.example) ![img](https://evil.example/i.png) <https://e.example>",
    "# heading\n\n---\n> quote\n* item\n1. one\n```\nfence\n```",
    "**bold** _em_ ~~strike~~ `code` ``two`` | pipe | \\| \\`",
    "line\u2028sep\u202eevil\u200bzero\x00nul\x1b[31mred",
    "`", "``", " ` ", "a`", "`a", "\\", "|", "", "   ",
]

# Text from anywhere in Unicode (no surrogates), weighted toward Markdown's specials.
TEXT = st.one_of(
    any_text(),
    st.text(alphabet=st.sampled_from(list("`\\|*_[]()<>!#@:/.w&;~-+= \n\taxh1")), max_size=40),
    st.sampled_from(HOSTILE),
)

# cmark-gfm's own HTML escaping of text
_CMARK_ESCAPE = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}


def _gfm(text: str) -> str:
    # raw HTML kept (GitHub keeps <details>, <summary>, <code>, <sub> after sanitising)
    return cmarkgfm.github_flavored_markdown_to_html(text, options=Options.CMARK_OPT_UNSAFE)


def _escaped(text: str) -> str:
    return "".join(_CMARK_ESCAPE.get(c, c) for c in text)


@given(TEXT)
def test_md_is_one_code_span_of_the_flattened_text(text: str) -> None:
    out = md(text)
    assert "\n" not in out and "\r" not in out
    if plain(text):
        assert code_span(out) == plain(text)
    assert triggers(f"- x {out} y") == {}


@given(TEXT)
def test_md_cell_is_one_cell_and_one_code_span(text: str) -> None:
    out = md_cell(text)
    flat = plain(text)
    if flat:
        assert code_span(out.replace("\\|", "|")) == flat
    # an unescaped pipe would start a new cell
    assert not re.search(r"(?<!\\)\|", out)


@settings(max_examples=150, deadline=None)
@given(TEXT)
def test_cmark_gfm_renders_log_text_as_code_only(text: str) -> None:
    flat = plain(text)
    expected = f"<code>{_escaped(flat)}</code>" if flat else "“”"
    assert _gfm(f"- heard: {md(text)} (conf)") == (
        f"<ul>\n<li>heard: {expected} (conf)</li>\n</ul>\n")
    table = _gfm(f"| a | b |\n|---|---|\n| {md_cell(text)} | z |\n")
    assert f"<td>{expected}</td>\n<td>z</td>" in table
    assert table.count("<td>") == 2 and "<a " not in table
    summary = _gfm(f"<details>\n<summary>session {html_code(text)} · turn 1</summary>\n\n"
                   "- x\n\n</details>\n")
    # in the raw HTML block the id is entity-escaped: a browser shows the text itself
    # (no backslashes), so it can be copied into `fpi explain --session`
    assert f"<summary>session <code>{html.escape(flat)}</code> · turn 1</summary>" in summary


def test_session_ids_copy_out_without_backslashes() -> None:
    sid = "sess_*a*_[1]-`x`|y"
    line = html_code(sid)
    assert "\\" not in line and html.unescape(line) == f"<code>{sid}</code>"


@functools.cache
def _golden_text() -> str:
    return GOLDEN.read_text()


def _hostile_summary() -> dict:
    s = json.loads(_golden_text())  # a new document each time, without a deep copy
    evil = " ".join(HOSTILE)
    s["inputs"] = [f"{HOSTILE[0]}.jsonl"]
    for turns in s["examples"].values():
        for t in turns:
            t["session_id"] = HOSTILE[2]
            t["heard"]["text"] = t["heard"]["runner_up"] = evil
            t["understood"]["slots"] = [{"name": HOSTILE[4], "value": HOSTILE[1]}]
            t["understood"]["domain"] = t["understood"]["intent"] = HOSTILE[6]
            t["resolved"] = [{"mention": HOSTILE[3], "resolved_name": HOSTILE[0],
                              "status": "resolved", "score": 0.5}]
            t["answered"]["response"] = t["next"]["text"] = evil
    s["slices"]["top"] = [{
        "dimension": "locale", "value": evil, "class": "asr", "turns": 120, "rate": 0.3,
        "rest_rate": 0.1, "overall_rate": 0.12, "excess_failures": 21.6, "p_value": 1e-5,
        "q_value": 1e-4, "significant": True}]
    return s


def test_report_md_has_no_trigger_outside_code() -> None:
    s = _hostile_summary()
    report = render_markdown(s)
    assert sum(bool(s["examples"][c]) for c in s["examples"]) >= 3
    assert triggers(report) == {}, triggers(report)
    rendered = _gfm(report)
    assert "<a " not in rendered and "<img" not in rendered and "<script" not in rendered
    # outside <code>, the rendered page holds none of the log text's triggers
    text_only = re.sub(r"<code>.*?</code>", " ", rendered, flags=re.S)
    for needle in ("evil.example", "@octocat", "#123", "onerror", "alert("):
        assert needle not in text_only, needle
    row = next(ln for ln in report.splitlines() if ln.startswith("| `locale` = "))
    assert len(re.findall(r"(?<!\\)\|", row)) == 8  # 7 cells: the value added none


def test_gfm_checker_finds_what_github_would_link() -> None:
    """The checker can fail: raw log text (or the old backslash escaping) trips it."""
    for raw, kind in [("see https://x.example", "url"), ("go www.x.example", "www"),
                      ("a@b.example", "email"), ("hi @octocat", "mention"),
                      ("fixes #12", "issue"), ("<img src=x>", "html"),
                      ("[a](b)", "link"), ("a\\@b.example", "email"),
                      ("&#64;x", "entity")]:
        assert kind in triggers(raw), (raw, triggers(raw))
    assert triggers("`https://x.example @me #1 <b>`") == {}
    assert outside_code("a ``b`c`` d `e") == "a   d `e"


def _tags(page: str) -> list[tuple[str, int]]:
    return sorted(Counter(re.findall(r"<([A-Za-z][\w-]*)", page)).items())


@functools.cache
def _template_tags() -> list[tuple[str, int]]:
    probe = _hostile_summary()
    for turns in probe["examples"].values():
        for t in turns:
            t["heard"]["text"] = t["session_id"] = "PROBE"
    probe["slices"]["top"][0]["value"] = "PROBE"
    return _tags(render_html(probe))


@settings(max_examples=40, deadline=None)
@given(TEXT)
def test_html_never_lets_a_log_angle_bracket_through(text: str) -> None:
    s = _hostile_summary()
    for turns in s["examples"].values():
        for t in turns:
            t["heard"]["text"] = t["session_id"] = text
    s["slices"]["top"][0]["value"] = text  # also in the SVG chart's labels
    page = render_html(s)
    # every tag in the page is one of the template's own: the log text added none
    assert _tags(page) == _template_tags()
    assert "<script" not in page.lower()
    if "<" in text:
        assert "&lt;" in page


@pytest.mark.parametrize("payload", HOSTILE)
def test_html_escapes_svg_text_titles_and_attributes(payload: str) -> None:
    s = _hostile_summary()
    s["slices"]["top"][0]["value"] = payload
    page = render_html(s)
    svg = page[page.index("Slices with excess failures (amber"):]
    svg = svg[:svg.index("</svg>")]
    # the chart label carries the value, escaped
    assert "locale=" in svg
    assert not re.search(r"<(?!/?(text|line|rect|title|svg)\b)", svg)
    for tag_body in re.findall(r"<[^>]*>", page):
        # no attribute value was opened by log text
        assert "onerror" not in tag_body and "javascript:" not in tag_body.lower()


def test_terminal_shows_control_characters_instead_of_obeying_them() -> None:
    s = _hostile_summary()
    s["slices"]["top"][0]["value"] = "en\x1b[2J\x1b]0;pwned\x07-US\u202e[bold]x[/bold]"
    s["inputs"] = ["night\x1b[31m.jsonl"]
    console = Console(record=True, width=200, force_terminal=True, color_system=None)
    render_terminal(s, console)
    text = console.export_text(styles=False)
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
    assert "\\u001b[2J" in text and "\\u202e[bold]x[/bold]" in text


def test_html_shows_bidi_and_control_characters() -> None:
    s = _hostile_summary()
    s["slices"]["top"][0]["value"] = "en\u202eSU-\x1b[31m"
    for turns in s["examples"].values():
        for t in turns:
            t["heard"]["text"] = "pay \u202e$001\u202c now"
    page = render_html(s)
    assert "\u202e" not in page and "\x1b" not in page
    assert "pay \\u202e$001\\u202c now" in page and "en\\u202eSU-\\u001b[31m" in page
