"""Inline SVG charts for the HTML report: no scripts, no external resources.

Every label passes through :func:`markupsafe.escape`; the charts are returned as
:class:`markupsafe.Markup` so the template does not escape them twice.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

from fpi.numbers import stable

_FONT = 'font-family="system-ui,-apple-system,Segoe UI,Roboto,sans-serif" font-size="12"'
BLUE, GREY, RED, GREEN, AMBER = "#2f6fb0", "#9aa5b1", "#c0392b", "#2e8b57", "#d48806"


@dataclass(frozen=True)
class Bar:
    """One row of a bar chart: value with an optional interval and reference mark."""

    label: str
    value: float
    low: float | None = None
    high: float | None = None
    reference: float | None = None
    color: str = BLUE
    note: str = ""


def _f(x: float) -> str:
    return f"{stable(x):.1f}"


def bar_chart(bars: Sequence[Bar], *, title: str, fmt: str = "pct", width: int = 640,
              label_width: int = 190, reference_label: str = "baseline",
              axis_label: str = "") -> Markup:
    """Horizontal bars with interval whiskers and reference ticks (e.g. the baseline).

    ``fmt`` is ``pct`` (values are fractions), ``signed`` (centred at zero, fractions
    shown in percentage points) or ``num``.
    """
    row_h, top, bottom = 26, 28, 44
    h = top + row_h * max(len(bars), 1) + bottom
    plot_w = width - label_width - 90
    vals = [v for b in bars for v in (b.value, b.low, b.high, b.reference) if v is not None]
    signed = fmt == "signed"
    if signed:
        m = max([abs(v) for v in vals] + [1e-6]) * 1.1
        lo_v, hi_v = -m, m
    else:
        lo_v, hi_v = min([0.0, *vals]), max([*vals, 1e-6]) * 1.08

    def x(v: float) -> float:
        return label_width + (v - lo_v) / (hi_v - lo_v) * plot_w

    def text(v: float) -> str:
        v = stable(v)
        if abs(v) < 1e-12:
            v = 0.0
        if fmt == "pct":
            return f"{stable(100 * v):.2f}%"
        if signed:
            return f"{stable(100 * v):+.2f} pp"
        return f"{v:+.2f}" if lo_v < 0 else f"{v:.2f}"

    parts = [
        f'<svg role="img" viewBox="0 0 {width} {h}" '
        f'width="{width}" height="{h}" preserveAspectRatio="xMinYMin meet" {_FONT}>',
        f"<title>{escape(title)}</title>",
        f'<text x="0" y="16" font-weight="600" font-size="13">{escape(title)}</text>',
    ]
    zero = x(0.0)
    parts.append(f'<line x1="{_f(zero)}" y1="{top - 4}" x2="{_f(zero)}" '
                 f'y2="{h - bottom + 4}" stroke="#555" stroke-width="1"/>')
    for i, b in enumerate(bars):
        y = top + i * row_h
        cy = y + row_h / 2
        parts.append(f'<text x="{label_width - 8}" y="{_f(cy + 4)}" text-anchor="end">'
                     f"{escape(b.label)}</text>")
        x0, x1 = sorted((zero, x(b.value)))
        parts.append(f'<rect x="{_f(x0)}" y="{_f(y + 5)}" width="{_f(max(x1 - x0, 1))}" '
                     f'height="{row_h - 10}" fill="{b.color}" opacity="0.85"/>')
        if b.low is not None and b.high is not None:
            a, c = x(b.low), x(b.high)
            parts.append(f'<line x1="{_f(a)}" y1="{_f(cy)}" x2="{_f(c)}" y2="{_f(cy)}" '
                         'stroke="#222" stroke-width="1.5"/>')
            for e in (a, c):
                parts.append(f'<line x1="{_f(e)}" y1="{_f(cy - 5)}" x2="{_f(e)}" '
                             f'y2="{_f(cy + 5)}" stroke="#222" stroke-width="1.5"/>')
        if b.reference is not None:
            r = x(b.reference)
            parts.append(f'<line x1="{_f(r)}" y1="{_f(y + 2)}" x2="{_f(r)}" '
                         f'y2="{_f(y + row_h - 2)}"'
                         f' stroke="{AMBER}" stroke-width="3"><title>{escape(reference_label)}: '
                         f"{escape(text(b.reference))}</title></line>")
        end = max(x(v) for v in (b.value, b.high, b.reference) if v is not None)
        parts.append(f'<text x="{_f(min(end + 6, width - 84))}" y="{_f(cy + 4)}" fill="#333">'
                     f"{escape(text(b.value) + b.note)}</text>")
    parts += _axis(x, text, lo_v, hi_v, y0=h - bottom + 6, left=label_width,
                   right=label_width + plot_w, label=axis_label)
    parts.append("</svg>")
    return Markup("".join(parts))


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values between ``lo`` and ``hi``."""
    span = max(hi - lo, 1e-12)
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step + 1e-9) + 1)]


def _axis(x: Callable[[float], float], text: Callable[[float], str], lo: float, hi: float, *,
          y0: float, left: float, right: float, label: str) -> list[str]:
    """An x axis: baseline rule, ticks with values, and the axis title."""
    parts = [f'<line x1="{_f(left)}" y1="{_f(y0)}" x2="{_f(right)}" y2="{_f(y0)}" '
             'stroke="#888" stroke-width="1"/>']
    for t in _ticks(lo, hi, max(2, int((right - left) / 90))):
        xt = x(t)
        parts.append(f'<line x1="{_f(xt)}" y1="{_f(y0)}" x2="{_f(xt)}" y2="{_f(y0 + 4)}" '
                     'stroke="#888"/>')
        parts.append(f'<text x="{_f(xt)}" y="{_f(y0 + 16)}" text-anchor="middle" fill="#555" '
                     f'font-size="11">{escape(text(t))}</text>')
    if label:
        parts.append(f'<text x="{_f((left + right) / 2)}" y="{_f(y0 + 32)}" '
                     f'text-anchor="middle" fill="#333">{escape(label)}</text>')
    return parts
