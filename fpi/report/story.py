"""Markdown and terminal sections for the headline, slices against the baseline and drift.

Only formatting: everything comes from the summary's ``headline``, ``slices.vs_baseline``
and ``drift`` blocks. Slice values come from the logs and go through :func:`md_cell`
(Markdown) or :func:`rich.markup.escape` of :func:`plain` (terminal).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from rich.console import Console
from rich.markup import escape

from fpi.headline import story
from fpi.report._fmt import CLASS_TITLES, pct, plain, pp, qvalue

_VERDICT = {"pass": "✅ PASS", "warn": "⚠️ WARN", "fail": "❌ FAIL", "none": "NONE"}
_BY = {"traffic": "traffic mix", "component": "a component", "both": "traffic mix and a component"}


def slice_name(t: Mapping[str, Any], quote: Callable[[Any], str], eq: str = " = ") -> str:
    """``dim = value`` (and every other definition selecting the same turns), each quoted."""
    defs = [t, *(t.get("also") or [])]
    return " ≡ ".join(f"{quote(d['dimension'])}{eq}{quote(d['value'])}" for d in defs)


def _moved_line(m: Mapping[str, Any]) -> str:
    return (f"{CLASS_TITLES[m['class']]}: {pct(m['baseline'])} → {pct(m['current'])} "
            f"({pp(m['change'])}, interval [{pp(m['low'])}, {pp(m['high'])}])")


def headline_lines(h: Mapping[str, Any], quote: Callable[[Any], str]) -> list[str]:
    """The headline as bullet texts (no Markdown syntax beyond ``quote``)."""
    out = []
    if h["baseline"]:
        up = [m for m in h["moved"] if m["direction"] == "up"]
        down = [m for m in h["moved"] if m["direction"] == "down"]
        out.append("Worse beyond the interval: " + ("; ".join(_moved_line(m) for m in up)
                                                    or "none"))
        if down:
            out.append("Better: " + "; ".join(_moved_line(m) for m in down))
    else:
        out.append("No baseline given: the verdict comes from the gates")
    sl = h.get("slice")
    if sl is not None:
        extra = (f"{sl['extra_failures']:,.0f} more failures than the baseline slice"
                 if "extra_failures" in sl else
                 f"{sl.get('excess_failures', 0):,.0f} excess failures")
        out.append(f"Where: {slice_name(sl, quote)} ({CLASS_TITLES[sl['class']]}, "
                   f"{sl['turns']:,} turns, {extra}, q {qvalue(sl['q_value'])})")
    ev = h.get("evidence")
    if ev:
        comps = ", ".join(f"{c['component']} {c['mean']:+.2f}" for c in ev["components"])
        out.append(f"Why: attribution ({'in that slice' if ev['from'] == 'slice' else 'class'}"
                   f", mean log-odds toward {CLASS_TITLES[ev['class']]}): {comps}")
    for c, e in (h.get("explained_by") or {}).items():
        share = "" if e.get("share") is None else f", mix alone gives {100 * e['share']:.0f}%"
        dim = f" ({quote(e['dimension'])}{share})" if e.get("dimension") else ""
        out.append(f"{CLASS_TITLES[c]}: change explained by {_BY[e['by']]}{dim}")
    if h.get("drifting_inputs"):
        out.append("Traffic drift: " + ", ".join(quote(d) for d in h["drifting_inputs"]))
    for t in h.get("excess") or []:
        out.append(f"Excess: {slice_name(t, quote)} ({CLASS_TITLES[t['class']]}, "
                   f"{t['excess_failures']:,.0f} more failures than the night's rate)")
    return out


def headline_markdown(summary: Mapping[str, Any], quote: Callable[[Any], str]) -> list[str]:
    h = summary.get("headline")
    if not h:
        return []
    out = [f"> **{_VERDICT.get(h['verdict'], 'NONE')}** {story(h, quote)}", ">"]
    out += [f"> - {line}" for line in headline_lines(h, quote)]
    return [*out, ""]


def vs_baseline_markdown(summary: Mapping[str, Any], quote: Callable[[Any], str]
                         ) -> list[str]:
    vs = (summary.get("slices") or {}).get("vs_baseline")
    if vs is None:
        return []
    out = ["## New or worse since the baseline", ""]
    if not vs["top"]:
        return [*out, f"No slice is significantly worse than the same slice in the baseline "
                      f"({vs['correction']} at {vs['alpha']} over {vs['tests']} tests).", ""]
    out += [f"Each slice against the same slice in the baseline night (one-sided, "
             f"{vs['correction']} at {vs['alpha']} over {vs['tests']} tests).", "",
             "| slice | failure point | turns | rate | baseline | change | interval | "
             "extra failures | q |", "|---|---|---:|---:|---:|---:|---|---:|---:|"]
    for t in vs["top"]:
        new = " (new)" if t.get("new") else ""
        out.append(f"| {slice_name(t, quote)}{new} | {CLASS_TITLES[t['class']]} | "
                   f"{t['turns']:,} | {pct(t['rate'])} | {pct(t['baseline_rate'])} | "
                   f"{pp(t['change'])} | [{pp(t['low'])}, {pp(t['high'])}] | "
                   f"{t['extra_failures']:,.0f} | {qvalue(t['q_value'])} |")
    return [*out, ""]


def drift_markdown(summary: Mapping[str, Any], quote: Callable[[Any], str]) -> list[str]:
    d = summary.get("drift")
    if not d:
        return []
    out = ["## Traffic drift against the baseline", "",
           f"Jensen-Shannon divergence and PSI of each input's distribution; chi-square test, "
           f"Benjamini-Hochberg at {d['alpha']}; drifting: q ≤ {d['alpha']} and "
           f"PSI ≥ {d['min_psi']}.", "",
           "| input | JSD | PSI | q | largest move | drifting |", "|---|---:|---:|---:|---|---|"]
    for r in d["inputs"]:
        lm = r["largest_move"]
        out.append(f"| {quote(r['input'])} | {r['jsd']:.4f} | {r['psi']:.3f} | "
                   f"{qvalue(r['q_value'])} | {quote(lm['bin'])} {pct(lm['baseline_share'], 1)}"
                   f" → {pct(lm['share'], 1)} | {'yes' if r['drifting'] else ''} |")
    out += ["", "| failure point | change | mix alone | drifting dimension | explained by |",
            "|---|---:|---:|---|---|"]
    for c, m in d["mix"].items():
        out.append(f"| {CLASS_TITLES[c]} | {pp(m['change'])} | {pp(m['mix_effect'])} | "
                   f"{quote(m['dimension']) if m['dimension'] else '–'} | "
                   f"{_BY.get(m['explained_by'] or '', '– (no significant change)')} |")
    return [*out, ""]


def headline_terminal(summary: Mapping[str, Any], console: Console) -> None:
    h = summary.get("headline")
    if not h:
        return
    style = {"pass": "green", "warn": "yellow", "fail": "bold red"}.get(h["verdict"], "")
    console.print(f"[{style or 'bold'}]{h['verdict'].upper()}[/]: {escape(plain(h['story']))}")
    for line in headline_lines(h, lambda x: plain(x)):
        console.print(f"  • {escape(line)}")
