"""The terminal summary: rich tables, written to a console on stderr."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fpi.report._fmt import FAILURE_CLASSES, gate_value, pct, plain, pp
from fpi.report.story import headline_terminal, slice_name

_STYLE = {"PASS": "green", "WARN": "yellow", "FAIL": "bold red"}


def render_terminal(summary: Mapping[str, Any], console: Console) -> None:
    """Print the headline figures, rates, top slices and gates to ``console``."""
    console.print(
        f"[bold]fpi diagnose[/]: {summary['turns']:,} turns, {summary.get('sessions', 0):,} "
        f"sessions ({escape(plain(', '.join(summary.get('inputs', []))))})"
    )
    headline_terminal(summary, console)
    ing = summary.get("ingest") or {}
    if ing.get("rejected"):
        rules = ", ".join(f"{plain(k)} {v}" for k, v in (ing.get("rejects_by_rule") or {}).items())
        console.print(f"[yellow]{ing['rejected']:,} input records rejected[/] ({escape(rules)}); "
                      f"see {escape(plain(ing.get('rejects_file')))} in the output directory")
    changes = (summary.get("baseline") or {}).get("changes") or {}
    t = Table(title="Failure rates", title_justify="left")
    for col in ("failure point", "estimate", "interval", "argmax count"):
        t.add_column(col, justify="right" if col != "failure point" else "left")
    if changes:
        t.add_column("vs baseline", justify="right")
    for c in (*FAILURE_CLASSES, "correct"):
        r = summary["rates"][c]
        row = [c, pct(r["estimate"]), f"[{pct(r['low'])}, {pct(r['high'])}]",
               f"{r['count']:,}"]
        if changes:
            ch = changes.get(c)
            mark = "[red]" if ch and ch["significant"] and ch["change"] > 0 else ""
            row.append("" if ch is None else f"{mark}{pp(ch['change'])}{'[/]' if mark else ''}")
        t.add_row(*row)
    console.print(t)
    top = (summary.get("slices") or {}).get("top") or []
    if top:
        st = Table(title="Slices with excess failures", title_justify="left")
        for col in ("slice", "class", "turns", "rate", "rest", "excess"):
            st.add_column(col, justify="left" if col in ("slice", "class") else "right")
        for x in top[:5]:
            st.add_row(escape(slice_name(x, plain)), x["class"],
                       f"{x['turns']:,}", pct(x["rate"]), pct(x["rest_rate"]),
                       f"{x['excess_failures']:,.0f}")
        console.print(st)
    tr = (summary.get("run") or {}).get("time_range")
    if tr:
        console.print(f"logs {escape(tr['first'])} to {escape(tr['last'])}")
    gates = summary.get("gates") or []
    if gates:
        gt = Table(title="Gates", title_justify="left")
        for col in ("status", "gate", "value", "bound"):
            gt.add_column(col)
        for g in gates:
            gt.add_row(f"[{_STYLE[g['status']]}]{g['status']}[/]", escape(plain(g["name"])),
                       gate_value(g["key"], g["value"]),
                       f"{g['op']} {gate_value(g['key'], g['bound'])}")
        console.print(gt)
