"""Rounding that does not depend on the machine.

Two machines can compute the same figure a few units apart in its last bits
(BLAS kernels, fused multiply-add, summation order). Rounded to 6 decimals, a
value exactly on a tie (13/128 = 0.1015625) then prints as 0.101562 on one and
0.101563 on the other. Rounding first to 12 significant digits absorbs that
noise, so both give the same text; genuine differences (beyond about 1e-12
relative) still show.
"""

from __future__ import annotations

import math

#: Significant digits kept before rounding for output (float64 noise is ~1e-16).
STABLE_DIGITS = 12


def stable(x: float) -> float:
    """``x`` rounded to 12 significant digits (non-finite values unchanged)."""
    x = float(x)
    return float(f"{x:.{STABLE_DIGITS}g}") if math.isfinite(x) else x


def stable_round(x: float, digits: int) -> float:
    """``round(x, digits)`` after :func:`stable`: the same result on every machine."""
    return round(stable(x), digits)
