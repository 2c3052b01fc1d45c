"""``trend.md``, ``trend.html`` and ``trend.json``, rendered from the trend document alone.

The document is :meth:`fpi.trend.Trend.to_dict` (keys in ``docs/reports.md``).
Like the nightly reports these only format it: Markdown neutralises every string
from the summaries (labels, paths, gate names) with :func:`fpi.report.markdown.md`,
HTML is Jinja2-autoescaped with the same Content-Security-Policy as ``report.html``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import jinja2
from markupsafe import Markup

from fpi.errors import os_error
from fpi.files import staged_output_dir
from fpi.report._fmt import CLASS_TITLES, STATUS_ICON, interval, pct
from fpi.report._jinja import environment
from fpi.report.markdown import md
from fpi.report.trend_svg import Point, trend_chart

_ENV = environment(autoescape=True, undefined=jinja2.StrictUndefined)
_ARROW = {"up": "⬆️", "down": "⬇️"}
#: The kind of a trend directory (its marker, :mod:`fpi.files`), and the files it holds.
KIND: Final = "trend"
FILES: Final = ("trend.json", "trend.md", "trend.html")


def short_id(model_id: Any) -> str:
    """First 12 characters of a model id without its ``sha256:`` prefix."""
    return str(model_id).removeprefix("sha256:")[:12] if model_id else "unknown"


def _title(c: str) -> str:
    return CLASS_TITLES.get(c, c)


def _band(b: Mapping[str, Any] | None) -> str:
    return "–" if b is None else interval(b["low"], b["high"])


# ---------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------


def render_trend_markdown(doc: Mapping[str, Any]) -> str:
    """GitHub-flavoured Markdown: headline, steps, latest night against its band, nights."""
    nights, classes = doc["nights"], doc["classes"]
    first, last = nights[0], nights[-1]
    out = [f"# fpi trend: {len(nights)} night{'s' if len(nights) != 1 else ''}, "
           f"{md(first['label'])} to {md(last['label'])}", ""]
    steps = doc["steps"]
    changes = sum(n["model_changed"] for n in nights)
    out += [f"**{len(steps)} step{'s' if len(steps) != 1 else ''}** outside the band of the "
            f"previous nights · {len(doc['models'])} model{'s' if len(doc['models']) != 1 else ''}"
            f" ({changes} change{'s' if changes != 1 else ''}) · band: previous "
            f"{doc['rule']['window']} nights of the same model, at least "
            f"{doc['rule']['min_history']}", ""]
    out += [f"⚠️ {md(w)}" for w in doc.get("warnings") or []]
    out += [""] if doc.get("warnings") else []
    out += ["## Latest night against its band", "",
            f"{md(last['label'])}, model `{md(short_id(last['model_id']))}`", "",
            "| failure point | rate | interval | band of previous nights | step |",
            "|---|---:|---|---|---|"]
    for c in classes:
        r = last["rates"][c]
        out.append(f"| {_title(c)} | {pct(r['estimate'])} | {interval(r['low'], r['high'])} | "
                   f"{_band(r['band'])} | {_ARROW.get(r['step'] or '', '')} {r['step'] or ''} |")
    out += ["", "## Steps", ""]
    if steps:
        out += ["| night | failure point | direction | rate | interval | band | model |",
                "|---|---|---|---:|---|---|---|"]
        for s in reversed(steps):
            out.append(f"| {md(s['night'])} | {_title(s['class'])} | {_ARROW[s['direction']]} "
                       f"{s['direction']} | {pct(s['estimate'])} | "
                       f"{interval(s['low'], s['high'])} | {_band(s['band'])} | "
                       f"`{md(short_id(s['model_id']))}` |")
    else:
        out.append("No night stepped outside the band of its previous nights.")
    out += ["", "## Models", "", "| model | first night | last night | nights |",
            "|---|---|---|---:|"]
    for m in doc["models"]:
        out.append(f"| `{md(short_id(m['id']))}` | {md(m['first'])} | {md(m['last'])} | "
                   f"{m['nights']} |")
    out += ["", *_nights_table(doc), "", "---",
            f"<sub>fpi {md(doc['fpi_version'])} · trend schema {doc['schema_version']} · "
            f"rates are estimates of each night's summary.json; ⬆️/⬇️ a step, 🔁 a new "
            "model</sub>", ""]
    return "\n".join(out)


def _nights_table(doc: Mapping[str, Any]) -> list[str]:
    classes, gates = doc["classes"], doc["gates"]
    head = ("| night | model | turns | " + " | ".join(_title(c) for c in classes)
            + " | gates |" + "".join(f" {md(g)} |" for g in gates))
    out = ["## Nights", "", head, "|---|---|---:|" + "---:|" * len(classes) + "---|"
           + "---|" * len(gates)]
    for n in reversed(doc["nights"]):
        rates = " | ".join(pct(n["rates"][c]["estimate"])
                           + (f" {_ARROW[n['rates'][c]['step']]}" if n["rates"][c]["step"]
                              else "") for c in classes)
        model = ("🔁 " if n["model_changed"] else "") + f"`{md(short_id(n['model_id']))}`"
        cells = "".join(f" {STATUS_ICON.get((n['gates'].get(g) or {}).get('status') or '', '–')} |"
                        for g in gates)
        out.append(f"| {md(n['label'])} | {model} | {n['turns']:,} | {rates} | "
                   f"{md(n['gate_status'])} |{cells}")
    return out


# ---------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------


def _charts(doc: Mapping[str, Any]) -> list[tuple[str, Markup]]:
    charts = []
    for c in doc["classes"]:
        pts = []
        for n in doc["nights"]:
            r = n["rates"][c]
            b = r["band"] or {}
            pts.append(Point(n["label"], r["estimate"], r["low"], r["high"], b.get("low"),
                             b.get("high"), r["step"],
                             short_id(n["model_id"]) if n["model_changed"] else None))
        title = f"{_title(c)}: rate per night"
        charts.append((title, trend_chart(title, pts)))
    return charts


def render_trend_html(doc: Mapping[str, Any]) -> str:
    """One self-contained page: a chart per class, the steps, models, gates and nights."""
    return _ENV.get_template("trend.html.j2").render(
        d=doc, last=doc["nights"][-1], charts=_charts(doc), titles=CLASS_TITLES,
        pct=pct, interval=interval, band=_band, short=short_id, icon=STATUS_ICON,
        arrow=_ARROW)


def render_trend_json(doc: Mapping[str, Any]) -> str:
    """``trend.json`` text: sorted keys, two-space indent, trailing newline."""
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"


def write_trend(doc: Mapping[str, Any], out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``trend.json``, ``trend.md`` and ``trend.html`` into ``out_dir`` as one set.

    All three are rendered first, then built in a staging directory beside
    ``out_dir`` and swapped in whole (:func:`fpi.files.staged_output_dir`): a failed
    write leaves the previous set exactly as it was.

    Raises
    ------
    InputError
        ``out_dir`` is a file, or a directory that is neither empty nor an earlier
        trend (fpi never replaces a folder it did not write).
    OutputError
        The set cannot be written there (read-only place, full disk).
    """
    texts = {"json": ("trend.json", render_trend_json(doc)),
             "markdown": ("trend.md", render_trend_markdown(doc)),
             "html": ("trend.html", render_trend_html(doc))}
    try:
        with staged_output_dir(out_dir, KIND, legacy=_is_legacy_trend) as stage:
            for name, text in texts.values():
                (stage / name).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise os_error(exc, "the trend to", out_dir) from None
    return {key: Path(out_dir) / name for key, (name, _) in texts.items()}


def _is_legacy_trend(path: Path) -> bool:
    """A trend directory written before outputs carried a marker: an fpi trend.json and
    only the trend's files (and the staging an older fpi may have left)."""
    try:
        doc = json.loads((path / "trend.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (isinstance(doc, dict) and doc.get("kind") == "fpi-trend"
            and all(p.name in FILES or p.name.startswith(".fpi-trend-") for p in path.iterdir()))
