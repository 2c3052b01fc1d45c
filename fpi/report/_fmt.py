"""Number and text formatting shared by the renderers (deterministic, locale-free).

Every figure passes through :func:`fpi.numbers.stable` before it is formatted, so
last-bit differences between machines cannot move a value across a rounding tie.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from typing import Any

from fpi.classes import CLASSES
from fpi.numbers import stable

#: Human names of the classes, for headings.
CLASS_TITLES: dict[str, str] = {
    "correct": "correct",
    "false_wake": "false wake",
    "asr": "ASR",
    "nlu": "NLU",
    "er": "entity resolution (ER)",
    "result": "result",
    "failure": "any failure",
}
FAILURE_CLASSES: tuple[str, ...] = CLASSES[1:]
STATUS_ICON: dict[str, str] = {"PASS": "✅", "WARN": "⚠️", "FAIL": "❌"}


_INVISIBLE = frozenset(("Cc", "Cf", "Cn", "Co", "Cs", "Zl", "Zp"))


def plain(text: Any) -> str:
    """Log text on one line, nothing hidden: whitespace runs (newlines included) as one
    space; control, format (bidi overrides, zero-width, ANSI escapes) and unassigned
    characters shown as ``\\uXXXX``."""
    flat = " ".join(str(text).split())
    if flat.isascii() and flat.isprintable():  # no control character: nothing to show
        return flat
    # each distinct character looked up once (a report prints the same log text often)
    shown = {ord(c): f"\\u{ord(c):04x}" for c in set(flat)
             if unicodedata.category(c) in _INVISIBLE}
    return flat.translate(shown) if shown else flat


def redaction_note(summary: Mapping[str, Any]) -> str:
    """How the report was redacted, in a few words (fpi's own text, nothing from the logs)."""
    red = summary.get("redaction") or {}
    if red.get("salt") == "given":
        salt_id = re.sub(r"[^0-9a-f]", "", str(red.get("salt_id")))[:8]
        ids = f"session ids pseudonymised (salt id {salt_id})"
    else:
        ids = "session ids pseudonymised (random salt: not comparable across runs)"
    return f"text redacted, {ids}"


def pct(x: float | None, digits: int = 2) -> str:
    """``0.0612`` -> ``6.12%``; ``None`` -> ``n/a``."""
    if x is None:
        return "n/a"
    return f"{stable(100 * float(x)):.{digits}f}%"


def pp(x: float | None, digits: int = 2) -> str:
    """A change in percentage points, signed: ``+1.30 pp``."""
    if x is None:
        return "n/a"
    return f"{stable(100 * float(x)):+.{digits}f} pp"


def num(x: Any, digits: int = 4) -> str:
    """Compact number: integers with thousands separators, floats to ``digits`` significant."""
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, int):
        return f"{x:,}"
    return f"{stable(x):.{digits}g}"


def dash(x: Any) -> Any:
    """``None`` shown as an en dash; anything else unchanged."""
    return "–" if x is None else x


def signed(x: float, digits: int = 2) -> str:
    """``+1.23`` / ``-0.40``; a value that rounds to zero is ``+0.00``, never ``-0.00``."""
    return f"{round(stable(x), digits) + 0.0:+.{digits}f}"


def qvalue(q: float) -> str:
    """A q-value: two significant digits, tiny ones as an upper bound."""
    return "< 1e-16" if q < 1e-16 else f"{stable(q):.2g}"


def interval(lo: float | None, hi: float | None) -> str:
    """``[5.10%, 7.02%]``."""
    return f"[{pct(lo)}, {pct(hi)}]"


def gate_value(key: str, x: float | None) -> str:
    """Gate figures: rates as percentages, counts as integers."""
    if x is None:
        return "n/a"
    field = key.split(".")[-1]
    if field in ("count", "turns") or key == "turns":
        return f"{round(stable(x)):,}"
    if key in ("macro_f1", "accuracy"):
        return f"{stable(x):.4f}"
    if field.startswith("change"):
        return pp(x)
    return pct(x)
