"""``report.html``: one self-contained file, inline CSS and SVG, every log string escaped.

Rendered with Jinja2 and ``autoescape=True`` (so a ``<script>`` in an utterance
is shown, never run; every printed string also goes through
:func:`fpi.report._fmt.plain`, so control and bidi-override characters are
shown as ``\\uXXXX``) and a Content-Security-Policy that forbids any fetch. Size
does not grow with the number of turns: only aggregates and a bounded number of
example turns are embedded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jinja2
from markupsafe import Markup

from fpi.classes import COMPONENTS
from fpi.report import svg
from fpi.report._fmt import (
    CLASS_TITLES,
    FAILURE_CLASSES,
    dash,
    gate_value,
    num,
    pct,
    plain,
    pp,
    qvalue,
    redaction_note,
    signed,
)
from fpi.report._jinja import environment
from fpi.report.runinfo import run_rows
from fpi.report.story import headline_lines, slice_name

#: Chart width in SVG units (the page scales it to the full column).
_W = 960
#: Compact chart width for narrow screens (phones).
_NARROW = 420


def _finalize(value: Any) -> Any:
    """Every string the template prints (log text included) on one line, with control and
    bidi-override characters shown, not obeyed; ``Markup`` (the charts) passes through."""
    if isinstance(value, str) and not isinstance(value, Markup):
        return plain(value)
    return value


_ENV = environment(
    autoescape=True,
    finalize=_finalize,
    undefined=jinja2.StrictUndefined,
    trim_blocks=False,
    lstrip_blocks=False,
)


def _both(bars: list[svg.Bar], **kw: Any) -> Markup:
    """A chart twice: full width for wide screens, compact (larger type) for phones; CSS
    shows one of them (no script)."""
    wide = svg.bar_chart(bars, width=_W, **kw)
    narrow = svg.bar_chart(bars, width=_NARROW, label_width=140, **kw)
    return Markup('<div class="wide">') + wide + Markup('</div><div class="narrow">') + (
        narrow + Markup("</div>"))


def _charts(s: Mapping[str, Any]) -> dict[str, Markup | None]:
    rates = s["rates"]
    changes = (s.get("baseline") or {}).get("changes") or {}
    base_rates = {c: v["baseline"] for c, v in changes.items()}
    rate_bars = [
        svg.Bar(CLASS_TITLES[c], rates[c]["estimate"], rates[c]["low"], rates[c]["high"],
                reference=base_rates.get(c))
        for c in FAILURE_CLASSES
    ]
    title = "Failure rate by failure point" + (" (amber: baseline)" if base_rates else "")
    out: dict[str, Markup | None] = {"rates_chart": _both(
        rate_bars, title=title, axis_label="rate of turns")}
    if changes:
        bars = [svg.Bar(CLASS_TITLES[c], changes[c]["change"], changes[c]["low"],
                        changes[c]["high"],
                        color=svg.RED if changes[c]["significant"] and changes[c]["change"] > 0
                        else (svg.GREEN if changes[c]["significant"] else svg.GREY))
                for c in FAILURE_CLASSES if c in changes]
        out["change_chart"] = _both(bars, title="Change vs baseline", fmt="signed",
                                    axis_label="change (percentage points)")
    else:
        out["change_chart"] = None
    top = (s.get("slices") or {}).get("top") or []
    out["slices_chart"] = svg.bar_chart(
        [svg.Bar(plain(f"{slice_name(t, str, '=')} · {t['class']}"), t["rate"],
                 reference=t["rest_rate"], color=svg.RED) for t in top],
        title="Slices with excess failures (amber: rest of night)", reference_label="rest",
        label_width=400, width=_W, axis_label="rate in the slice") if top else None
    a = s.get("attribution") or {}
    share = a.get("by_component") or {}
    if a.get("turns_attributed") and any(v.get("share") is not None for v in share.values()):
        out["attr_chart"] = _both(
            [svg.Bar(g, share[g]["share"] or 0.0, share[g]["low"], share[g]["high"])
             for g in COMPONENTS if g in share],
            title="Share of evidence by component", axis_label="share of attributed evidence")
    else:
        out["attr_chart"] = None
    return out


def render_html(summary: Mapping[str, Any]) -> str:
    """Render the summary document as one self-contained HTML page."""
    a = summary.get("attribution") or {}
    how = ("every turn" if a.get("mode") == "all"
           else f"stratified sample of {a.get('turns_attributed', 0):,} turns")
    template = _ENV.get_template("report.html.j2")
    return template.render(
        s=summary,
        inputs=", ".join(summary.get("inputs", [])) or "input",
        conf_pct=round(100 * summary.get("method", {}).get("confidence", 0.95)),
        changes=(summary.get("baseline") or {}).get("changes") or {},
        order=(*FAILURE_CLASSES, "correct"),
        failure_classes=FAILURE_CLASSES,
        components=COMPONENTS,
        titles=CLASS_TITLES,
        attr_how=how,
        redaction_note=redaction_note,
        run_rows=run_rows(summary),
        hl=summary.get("headline"),
        hl_lines=headline_lines(summary["headline"], plain) if summary.get("headline") else [],
        sname=lambda t: slice_name(t, plain),
        vs=(summary.get("slices") or {}).get("vs_baseline"),
        drift=summary.get("drift"),
        pct=pct, pp=pp, gv=gate_value, num=lambda x: num(x, 3), dash=dash, qv=qvalue, sg=signed,
        **_charts(summary),
    )
