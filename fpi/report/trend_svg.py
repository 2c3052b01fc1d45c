"""Full-width inline SVG line charts of one class's rate over nights (``trend.html``).

No script, no external resource; every label goes through
:func:`markupsafe.escape`. Size grows by a few dozen bytes a night: at 365
nights a chart is about 30 kB (per-point tooltips only up to
:data:`TOOLTIP_MAX_NIGHTS`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

from fpi.report.svg import _FONT, AMBER, BLUE, GREY, RED

#: Nights up to which every point carries a hover tooltip.
TOOLTIP_MAX_NIGHTS = 90
_W, _H = 1000, 240
_L, _R, _T, _B = 62, 14, 14, 48


@dataclass(frozen=True)
class Point:
    """One night of the series."""

    label: str
    estimate: float
    low: float
    high: float
    band_low: float | None = None
    band_high: float | None = None
    step: str | None = None
    model_change: str | None = None  # short id of the new model, on the first night of it


def _nice_step(span: float) -> float:
    raw = span / 5
    mag = 10 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)


def _pct(v: float, step: float) -> str:
    digits = max(0, min(3, -math.floor(math.log10(step * 100) + 1e-9)))
    return f"{100 * v:.{digits}f}%"


def _runs(values: Sequence[tuple[float, float] | None]) -> list[list[tuple[int, float, float]]]:
    runs: list[list[tuple[int, float, float]]] = []
    current: list[tuple[int, float, float]] = []
    for i, v in enumerate(values):
        if v is None:
            if current:
                runs.append(current)
            current = []
        else:
            current.append((i, v[0], v[1]))
    if current:
        runs.append(current)
    return runs


def trend_chart(title: str, points: Sequence[Point]) -> Markup:
    """A line chart: estimate, interval whiskers, band of earlier nights, steps, model changes.

    ``title`` is the SVG's accessible title; the page shows its own heading above it.
    """
    n = max(len(points), 1)
    top = max([p.high for p in points] + [p.band_high or 0 for p in points] + [1e-4])
    step = _nice_step(top * 1.05)
    y_max = step * math.ceil(top * 1.05 / step)
    pw, ph = _W - _L - _R, _H - _T - _B

    def x(i: int) -> float:
        return _L + (i + 0.5) * pw / n

    def y(v: float) -> float:
        return _T + ph - max(0.0, min(v, y_max)) / y_max * ph

    out = [f'<svg role="img" viewBox="0 0 {_W} {_H}" width="100%" '
           f'preserveAspectRatio="xMidYMid meet" {_FONT}>',
           f"<title>{escape(title)}</title>"]
    # y axis: grid lines and labels
    for k in range(round(y_max / step) + 1):
        v = k * step
        out.append(f'<line x1="{_L}" y1="{y(v):.1f}" x2="{_W - _R}" y2="{y(v):.1f}" '
                   f'stroke="#e4e8ec"/><text x="{_L - 6}" y="{y(v) + 4:.1f}" '
                   f'text-anchor="end" fill="#57606a">{_pct(v, step)}</text>')
    out.append(f'<line x1="{_L}" y1="{_T}" x2="{_L}" y2="{_T + ph}" stroke="#555"/>'
               f'<line x1="{_L}" y1="{_T + ph}" x2="{_W - _R}" y2="{_T + ph}" stroke="#555"/>')
    out.append(f'<text x="14" y="{_T + ph / 2:.0f}" transform="rotate(-90 14 {_T + ph / 2:.0f})"'
               f' text-anchor="middle" fill="#57606a">rate</text>')
    # x axis: at most ~10 labels
    every = max(1, math.ceil(n / 10))
    for i in range(0, len(points), every):
        out.append(f'<line x1="{x(i):.1f}" y1="{_T + ph}" x2="{x(i):.1f}" y2="{_T + ph + 4}" '
                   f'stroke="#555"/><text x="{x(i):.1f}" y="{_T + ph + 17}" '
                   f'text-anchor="middle" fill="#57606a">{escape(points[i].label)}</text>')
    out.append(f'<text x="{_L + pw / 2:.0f}" y="{_H - 6}" text-anchor="middle" '
               f'fill="#57606a">night (logs&#39; first day)</text>')
    # band of the earlier nights
    for run in _runs([(p.band_low, p.band_high) if p.band_low is not None
                      and p.band_high is not None else None for p in points]):
        half = pw / n / 2
        up = " ".join(f"{x(i) - half:.1f},{y(hi):.1f} {x(i) + half:.1f},{y(hi):.1f}"
                      for i, _, hi in run)
        down = " ".join(f"{x(i) + half:.1f},{y(lo):.1f} {x(i) - half:.1f},{y(lo):.1f}"
                        for i, lo, _ in reversed(run))
        out.append(f'<polygon points="{up} {down}" fill="{GREY}" opacity="0.28"/>')
    # model changes
    for i, p in enumerate(points):
        if p.model_change is not None:
            xm = x(i) - pw / n / 2
            out.append(f'<line x1="{xm:.1f}" y1="{_T}" x2="{xm:.1f}" y2="{_T + ph}" '
                       f'stroke="{AMBER}" stroke-width="2" stroke-dasharray="5 3"/>'
                       f'<text x="{xm + 3:.1f}" y="{_T + 11}" fill="{AMBER}" font-size="11">'
                       f"model {escape(p.model_change)}</text>")
    # intervals (one path) and the estimate line
    whiskers = "".join(f"M{x(i):.1f} {y(p.low):.1f}V{y(p.high):.1f}"
                       for i, p in enumerate(points))
    width = max(1.0, min(3.0, pw / n * 0.4))
    out.append(f'<path d="{whiskers}" stroke="{BLUE}" stroke-opacity="0.45" '
               f'stroke-width="{width:.1f}" fill="none"/>')
    line = " ".join(f"{x(i):.1f},{y(p.estimate):.1f}" for i, p in enumerate(points))
    out.append(f'<polyline points="{line}" fill="none" stroke="{BLUE}" stroke-width="1.6"/>')
    tips = len(points) <= TOOLTIP_MAX_NIGHTS
    for i, p in enumerate(points):
        if p.step is None and not tips:
            continue
        color, r = (RED, 5) if p.step else (BLUE, 2.5)
        tip = (f"{p.label}: {100 * p.estimate:.2f}% [{100 * p.low:.2f}%, {100 * p.high:.2f}%]"
               + (f", stepped {p.step}" if p.step else ""))
        out.append(f'<circle cx="{x(i):.1f}" cy="{y(p.estimate):.1f}" r="{r}" fill="{color}">'
                   f"<title>{escape(tip)}</title></circle>")
    out.append("</svg>")
    return Markup("".join(out))
