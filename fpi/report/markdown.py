r"""``report.md``: GitHub-flavoured Markdown for a CI job summary or a pull-request comment.

Every string that came from the logs (or from a summary document, which may have
been edited) is shown as an inline code span, never as Markdown text. Inside a
code span GitHub renders nothing: no emphasis, links, images, raw HTML or
entities, no autolinks (``https://``, ``www.``, e-mail addresses) and no
``@mention``, ``#123`` or commit references, which GitHub only looks for outside
``<code>``. Backslash escapes are not enough: GFM turns ``a\@b.com`` into a
``mailto:`` link, and GitHub's mention filter works on the rendered text. The
fence is one backtick longer than the longest run of backticks in the text
(CommonMark code-span rule), whitespace (newlines included) is flattened to one
space, control and bidirectional-override characters are shown as ``\uXXXX``,
and a pipe is escaped as ``\|`` in table cells only (GFM splits cells before it
parses code spans, and removes that backslash). Inside raw HTML blocks
(``<summary>``), where Markdown is not parsed, text is HTML-escaped into
``<code>`` instead, so a session id copies out without backslashes.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from typing import Any

from fpi.classes import (
    CLASSES,
    COMPONENTS,
    ENTITY_STATUSES,
    EXPLICIT_FEEDBACK,
    RESULT_STATUSES,
)
from fpi.report._fmt import (
    CLASS_TITLES,
    FAILURE_CLASSES,
    STATUS_ICON,
    gate_value,
    interval,
    num,
    pct,
    plain,
    pp,
    qvalue,
    redaction_note,
    signed,
)
from fpi.report.runinfo import run_markdown
from fpi.report.story import drift_markdown, headline_markdown, slice_name, vs_baseline_markdown

_BACKTICKS = re.compile(r"`+")


def md(text: Any, *, cell: bool = False) -> str:
    """Log text as an inert inline code span (``–`` for None); ``cell``: inside a table."""
    if text is None:
        return "–"
    s = plain(text)
    if not s:
        return "“”"
    fence = "`" * (max((len(r) for r in _BACKTICKS.findall(s)), default=0) + 1)
    # a span that starts or ends with a backtick needs a space inside the fence
    # (one space each side is stripped again by the renderer)
    pad = " " if s[0] == "`" or s[-1] == "`" else ""
    if cell:
        s = s.replace("|", "\\|")
    return f"{fence}{pad}{s}{pad}{fence}"


def md_cell(text: Any) -> str:
    """:func:`md` for a table cell (pipes escaped)."""
    return md(text, cell=True)


def html_code(text: Any) -> str:
    """Log text inside a raw HTML block (``<summary>``): HTML-escaped, in ``<code>``."""
    if text is None:
        return "–"
    return f"<code>{html.escape(plain(text), quote=True)}</code>"


def _short(fingerprint: Any) -> str:
    """First 12 hex digits of a ``sha256:...`` fingerprint."""
    return re.sub(r"[^0-9a-f]", "", str(fingerprint or "").removeprefix("sha256:"))[:12]


def _word(value: Any, allowed: tuple[str, ...]) -> str:
    """A validated enum value (status, class) as plain text; anything else as :func:`md`."""
    return str(value) if value in allowed else md(value)


def _value(value: Any) -> str:
    """A feature value: numbers as numbers, strings (categories from the logs) as :func:`md`."""
    if value is None or isinstance(value, bool | int | float):
        return num(value, 4)
    return md(value)


def _ours(text: Any) -> str:
    """fpi's own words (versions, method names) from the summary: letters, digits, ``.-+``."""
    return re.sub(r"[^A-Za-z0-9_.+ -]", "", str(text))


def render_markdown(summary: Mapping[str, Any]) -> str:
    """Render the summary document as GitHub-flavoured Markdown."""
    out: list[str] = []
    inputs = ", ".join(md(i) for i in summary.get("inputs", [])) or "input"
    out.append(f"# fpi diagnosis: {inputs}")
    out.append("")
    out += headline_markdown(summary, md)
    status = summary.get("gate_status", "none")
    gates = summary.get("gates", [])
    if status == "none":
        out.append("**Gates:** none configured.")
    else:
        failed = sum(g["status"] == "FAIL" for g in gates)
        warned = sum(g["status"] == "WARN" for g in gates)
        icon = {"pass": "✅ PASS", "warn": "⚠️ WARN", "fail": "❌ FAIL"}[status]
        out.append(f"**Gates: {icon}** ({failed} failed, {warned} warned, {len(gates)} in all)")
    out.append("")
    model = summary.get("model", {})
    conf = summary.get("method", {}).get("confidence", 0.95)
    out.append(
        f"{summary['turns']:,} turns in {summary.get('sessions', 0):,} sessions · "
        f"model `{_short(model.get('id'))}` · "
        f"{round(100 * conf)}% intervals"
        + (f" · {redaction_note(summary)}" if summary.get("redacted") else "")
    )
    out.append("")
    ing = summary.get("ingest") or {}
    if ing.get("rejected"):
        rules = ", ".join(f"{md(k)} {v}" for k, v in (ing.get("rejects_by_rule") or {}).items())
        out += [f"⚠️ {ing['rejected']:,} of {ing['records_read']:,} input records were rejected "
                f"({rules}); see {md(ing.get('rejects_file'))} in the output directory.", ""]
    if gates:
        out += ["## Gates", "", "| | gate | value | interval | bound | status |",
                "|---|---|---:|---|---:|---|"]
        for g in gates:
            iv = "" if g["low"] is None else (
                f"[{gate_value(g['key'], g['low'])}, {gate_value(g['key'], g['high'])}]")
            out.append(
                f"| {STATUS_ICON[g['status']]} | {md_cell(g['name'])} | "
                f"{gate_value(g['key'], g['value'])} | {iv} | "
                f"{g['op']} {gate_value(g['key'], g['bound'])} | {g['status']} |"
            )
        out.append("")
    out += _rates(summary)
    out += vs_baseline_markdown(summary, md_cell)
    out += _slices(summary)
    out += drift_markdown(summary, md_cell)
    out += _attribution(summary)
    out += _focus_examples(summary)
    out += _examples(summary)
    out += run_markdown(summary)
    out.append("---")
    out.append(
        f"<sub>fpi {_ours(summary.get('fpi_version', ''))} · summary schema "
        f"{summary.get('schema_version')} · estimator: "
        f"{_ours(summary.get('method', {}).get('estimator', ''))}"
        "</sub>"
    )
    out.append("")
    return "\n".join(out)


#: What the rates table's estimate is, per estimator.
_RATES_TEXT = {
    "blend": "Estimated rate of each failure point: a blend of the mean calibrated "
             "probability and its correction for the night's class mix, beside the plain "
             "count of argmax predictions. Intervals cover sampling noise and model error; "
             "they widen when the corrected and uncorrected estimates disagree.",
    "spacc": "Estimated rate of each failure point: the mean calibrated probability "
             "corrected for the night's class mix within each band of ASR confidence (so "
             "new speakers whose confidence means something else are still counted), "
             "beside the plain count of argmax predictions. Intervals cover sampling noise "
             "and model error, and span the uncorrected mean's.",
}


def _rates(summary: Mapping[str, Any]) -> list[str]:
    rates = summary["rates"]
    changes = (summary.get("baseline") or {}).get("changes") or {}
    head = "| failure point | estimate | interval | argmax count | argmax rate |"
    sep = "|---|---:|---|---:|---:|"
    if changes:
        head += " change vs baseline | change interval |"
        sep += "---:|---|"
    key = (summary.get("method") or {}).get("estimator_key", "blend")
    out = ["## Failure rates", "", _RATES_TEXT.get(key, _RATES_TEXT["blend"]), "", head, sep]
    for c in (*FAILURE_CLASSES, "correct"):
        r = rates[c]
        line = (f"| {CLASS_TITLES[c]} | **{pct(r['estimate'])}** | {interval(r['low'], r['high'])}"
                f" | {r['count']:,} | {pct(r['count_rate'])} |")
        if changes:
            ch = changes.get(c)
            flag = " ⬆️" if ch and ch["significant"] and ch["change"] > 0 else (
                " ⬇️" if ch and ch["significant"] else "")
            line += (f" {pp(ch['change'])}{flag} | [{pp(ch['low'])}, {pp(ch['high'])}] |"
                     if ch else " | |")
        out.append(line)
    f = summary.get("failure")
    if f:
        out.append(f"| *any failure* | *{pct(f['estimate'])}* | {interval(f['low'], f['high'])}"
                   f" | {f['count']:,} | {pct(f['count_rate'])} |" + (" | |" if changes else ""))
    out.append("")
    labels = summary.get("labels")
    if labels:
        out.append(f"Labelled turns: {labels['turns']:,} · accuracy {labels['accuracy']:.4f} · "
                   f"macro F1 {labels['macro_f1']:.4f}")
        out.append("")
    return out


def _slices(summary: Mapping[str, Any]) -> list[str]:
    s = summary.get("slices") or {}
    out = ["## Where: slices with excess failures within the night", ""]
    top = s.get("top", [])
    if not top:
        out.append(f"No slice has significantly more failures than the rest of the night "
                   f"(slices of at least {s.get('min_support', 0)} turns; "
                   f"{_ours(s.get('correction', ''))} at {s.get('alpha', 0)}).")
        out.append("")
        return out
    out.append(f"Slices of at least {s['min_support']} turns, one-sided tests against the rest "
               f"of the night, {_ours(s['correction'])} false discovery rate {s['alpha']} "
               f"over {s['tests']} tests.")
    out += ["", "| slice | failure point | turns | rate | rest of night | excess failures | q |",
            "|---|---|---:|---:|---:|---:|---:|"]
    for t in top:
        out.append(f"| {slice_name(t, md_cell)} | "
                   f"{CLASS_TITLES[t['class']]} | "
                   f"{t['turns']:,} | {pct(t['rate'])} | {pct(t['rest_rate'])} | "
                   f"{t['excess_failures']:,.0f} | {qvalue(t['q_value'])} |")
    out.append("")
    return out


def _attribution(summary: Mapping[str, Any]) -> list[str]:
    a = summary.get("attribution") or {}
    out = ["## Why: attribution by component", ""]
    if a.get("mode", "none") == "none" or not a.get("turns_attributed"):
        out += ["Attribution was not computed (`--attribution none`).", ""]
        return out
    how = ("every turn" if a["mode"] == "all"
           else f"a stratified sample of {a['turns_attributed']:,} turns")
    out.append(f"Exact TreeSHAP contributions ({how}), summed by component: mean log-odds "
               "pushing each turn toward its predicted class.")
    out += ["", "| predicted as | turns | " + " | ".join(COMPONENTS) + " |",
            "|---|---:|" + "---:|" * len(COMPONENTS)]
    for c in FAILURE_CLASSES:
        bc = a["by_class"].get(c)
        if not bc or not bc["turns_attributed"]:
            continue
        cells = []
        for g in COMPONENTS:
            v = bc["components"][g]
            cells.append("–" if v["mean"] is None else signed(v["mean"]))
        out.append(f"| {CLASS_TITLES[c]} | {bc['turns_predicted']:,} | " + " | ".join(cells)
                   + " |")
    by_slice = [s for s in a.get("by_slice") or [] if s["turns_attributed"]]
    if by_slice:
        out += ["", "Flagged slices: what drove their calls (mean log-odds of the attributed "
                "turns in the slice predicted as the flagged class).", "",
                "| slice | class | attributed | " + " | ".join(COMPONENTS) + " |",
                "|---|---|---:|" + "---:|" * len(COMPONENTS)]
        for s in by_slice:
            cells = ["–" if s["components"][g]["mean"] is None
                     else signed(s["components"][g]["mean"]) for g in COMPONENTS]
            out.append(f"| {md_cell(s['dimension'])} = {md_cell(s['value'])} | "
                       f"{CLASS_TITLES[s['class']]} | "
                       f"{s['turns_attributed']:,} | " + " | ".join(cells) + " |")
    share = a.get("by_component") or {}
    if any(v.get("share") is not None for v in share.values()):
        out.append("")
        out.append("Share of the evidence for failure calls: " + ", ".join(
            f"{g} {pct(v['share'], 1)} [{pct(v['low'], 1)}, {pct(v['high'], 1)}]"
            for g, v in share.items() if v.get("share") is not None))
    out.append("")
    return out


def _examples(summary: Mapping[str, Any]) -> list[str]:
    ex = summary.get("examples") or {}
    out = ["## Examples for reviewers", ""]
    if not any(ex.get(c) for c in CLASSES):
        out += ["No example turns (`--examples 0`).", ""]
        return out
    for c in FAILURE_CLASSES:
        turns = ex.get(c) or []
        if not turns:
            continue
        out.append(f"### {CLASS_TITLES[c]}")
        out.append("")
        for t in turns:
            out.append("<details>")
            out.append(f"<summary>session {html_code(t['session_id'])} · "
                       f"turn {t['turn_index']} · "
                       f"p({c}) = {t['probability']:.3f}</summary>")
            out.append("")
            out += _turn_lines(t)
            out.append("")
            out.append("</details>")
            out.append("")
    return out


def _focus_examples(summary: Mapping[str, Any]) -> list[str]:
    focus = summary.get("focus_examples") or []
    if not focus:
        return []
    out = ["## Examples from the flagged slices and the classes that moved", ""]
    for f in focus:
        where = slice_name(f, md) if f.get("dimension") is not None else "the whole night"
        out += [f"### {CLASS_TITLES[f['class']]} in {where}", ""]
        for t in f["examples"]:
            out += ["<details>",
                    f"<summary>{_word(t['kind'], ('confident', 'borderline'))} · session "
                    f"{html_code(t['session_id'])} · turn {t['turn_index']} · "
                    f"p({f['class']}) = {t['probability']:.3f}</summary>", "",
                    *_turn_lines(t), "", "</details>", ""]
    return out


def _turn_lines(t: Mapping[str, Any]) -> list[str]:
    h, u, a, nx = t["heard"], t["understood"], t["answered"], t["next"]
    slots = ", ".join(f"{md(s['name'])}={md(s['value'])}" for s in u.get("slots") or []) or "–"
    ents = "; ".join(
        f"{md(e['mention'])} → {md(e['resolved_name'])} ({_word(e['status'], ENTITY_STATUSES)})"
        for e in t.get("resolved") or []) or "–"
    prev = [f"- **previous turn:** {md((t.get('previous') or {}).get('text'))}"]
    lines = [*(prev if "previous" in t else []),
        f"- **heard:** {md(h['text'])} (confidence {num(h['confidence'], 3)}; "
        f"runner-up {md(h['runner_up'])})",
        f"- **understood:** {md(u['domain'])} / {md(u['intent'])} "
        f"(confidence {num(u['confidence'], 3)}); slots: {slots}",
        f"- **resolved:** {ents}",
        f"- **answered:** {_word(a['status'], RESULT_STATUSES)}: {md(a['response'])}",
        f"- **next:** barge-in {num(nx['barge_in'])}, "
        f"feedback {_word(nx['explicit'], EXPLICIT_FEEDBACK)}, next turn {md(nx['text'])}",
    ]
    if t.get("label"):
        lines.append(f"- **label:** {_word(t['label'], CLASSES)}")
    comps = t.get("components") or {}
    if comps:
        lines.append("- **components:** " + ", ".join(
            f"{g} {signed(v)}" for g, v in sorted(comps.items(), key=lambda kv: -abs(kv[1]))))
    feats = t.get("features") or []
    if feats:
        lines.append("- **features:** " + ", ".join(
            f"`{_ours(f['name'])}`={_value(f['value'])} ({signed(f['contribution'])})"
            for f in feats))
    return lines
