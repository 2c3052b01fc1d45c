"""The run metadata section of the reports (``summary["run"]``, see :mod:`fpi.runmeta`).

One list of (field, value) rows, shown by Markdown and HTML alike. The values
are plain text: the Markdown renderer neutralises them, the HTML template
autoescapes them (file paths and CI URLs come from the user's environment).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _short(x: Any) -> str:
    return str(x).removeprefix("sha256:")[:12] if x else "–"


def _size(n: int) -> str:
    for f, unit in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if n >= f:
            return f"{n / f:.1f} {unit}"
    return f"{n} B"


def run_rows(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The run block as labelled rows (empty when the summary has none)."""
    run = summary.get("run")
    if not isinstance(run, Mapping):
        return []
    tr = run.get("time_range")
    rows = [("logs", f"{tr['first']} to {tr['last']}" if tr else "no timestamps")]
    for f in run.get("inputs") or []:
        rows.append(("input", f"{f['path']} · {_size(int(f['bytes']))} · "
                              f"sha256 {_short(f['sha256'])}"))
    rows.append(("fpi", str(run.get("fpi_version"))))
    rows.append(("model", _short(run.get("bundle_id"))))
    b = run.get("baseline")
    if b:
        btr = b.get("time_range")
        rows.append(("baseline", f"{b.get('path') or 'summary'} · id {_short(b.get('id'))} · "
                                 f"model {_short(b.get('bundle_id'))} · logs "
                                 + (f"{btr['first']} to {btr['last']}" if btr else "unknown")))
    rows.append(("wall time", f"{float(run.get('wall_seconds') or 0):.1f} s"))
    ci = run.get("ci")
    if ci:
        rows.append(("CI", " · ".join(str(v) for v in (ci.get("provider"), ci.get("url"),
                                                       ci.get("commit")) if v)))
    return rows


def run_markdown(summary: Mapping[str, Any]) -> list[str]:
    """``## Run`` as a two-column table (values neutralised), or nothing."""
    from fpi.report.markdown import md

    rows = run_rows(summary)
    if not rows:
        return []
    return ["## Run", "", "| | |", "|---|---|",
            *(f"| {k} | {md(v)} |" for k, v in rows), ""]
