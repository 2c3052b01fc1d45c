"""Golden files compared by structure, with numbers under a tolerance.

A figure can differ in its last bits between machines (BLAS kernels, CPU
instruction sets): a value on a rounding tie then prints one unit apart
(``0.101563`` vs ``0.101562``). So:

- JSON: same keys, same strings, booleans and nulls, same list lengths and
  integers; floats equal within ``abs_tol`` (2e-6: the summary rounds to 6
  decimals, so a tie moves a value by one unit) or ``rel_tol`` (1e-6).
- Markdown (and any text): the same text once every number is cut out, and each
  number within one unit of its last printed digit (``14.32`` vs ``14.33``).

Golden files are written only on request (``pytest --update-golden`` or
``FPI_UPDATE_GOLDEN=1``), never because one is missing.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path
from typing import Any

ABS_TOL = 2e-6
REL_TOL = 1e-6
UPDATE_HINT = ("if the change is intended, regenerate with "
               "`python -m pytest {test} --update-golden` (or FPI_UPDATE_GOLDEN=1) "
               "and review the diff")

# A number as the renderers print it: optional sign, digits (with thousands
# separators), decimals, exponent; not part of a word, hex id or version (4.2.1).
_NUM = re.compile(r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?"
                  r"(?!\w)(?!\.\d)")


def compare_json(expected: Any, got: Any, *, abs_tol: float = ABS_TOL,
                 rel_tol: float = REL_TOL, path: str = "$",
                 ignore: frozenset[str] = frozenset()) -> list[str]:
    """Differences between two JSON documents (empty: they match); paths in ``ignore``
    (``$.model.fingerprint``) may differ."""
    if path in ignore:
        return []
    if isinstance(expected, bool) or isinstance(got, bool) or expected is None or got is None:
        return [] if expected is got or (expected == got and type(expected) is type(got)) else [
            f"{path}: {expected!r} != {got!r}"]
    if isinstance(expected, int | float) and isinstance(got, int | float):
        if isinstance(expected, int) or isinstance(got, int):
            # counts are exact, and a count never turns into a float or back
            same = type(expected) is type(got) and expected == got
            return [] if same else [f"{path}: {expected!r} != {got!r} (integers)"]
        if math.isclose(expected, got, rel_tol=rel_tol, abs_tol=abs_tol):
            return []
        return [f"{path}: {expected!r} != {got!r} (beyond {abs_tol:g} abs / {rel_tol:g} rel)"]
    if type(expected) is not type(got):
        return [f"{path}: {type(expected).__name__} {expected!r} != "
                f"{type(got).__name__} {got!r}"]
    if isinstance(expected, dict):
        out = [f"{path}: key {k!r} {'missing' if k in expected else 'unexpected'}"
               for k in sorted(set(expected) ^ set(got))]
        for k in sorted(set(expected) & set(got)):
            out += compare_json(expected[k], got[k], abs_tol=abs_tol, rel_tol=rel_tol,
                                path=f"{path}.{k}", ignore=ignore)
        return out
    if isinstance(expected, list):
        if len(expected) != len(got):
            return [f"{path}: {len(expected)} items != {len(got)}"]
        out = []
        for i, (a, b) in enumerate(zip(expected, got, strict=True)):
            out += compare_json(a, b, abs_tol=abs_tol, rel_tol=rel_tol, path=f"{path}[{i}]",
                                ignore=ignore)
        return out
    return [] if expected == got else [f"{path}: {expected!r} != {got!r}"]


def _unit(token: str) -> float:
    """One unit of a printed number's last digit (``14.32`` -> 0.01, ``1.2e-05`` -> 1e-06)."""
    mantissa, _, exp = token.lower().partition("e")
    decimals = len(mantissa.partition(".")[2])
    return 10.0 ** (int(exp or 0) - decimals)


def _value(token: str) -> float:
    return float(token.replace(",", ""))


def compare_text(expected: str, got: str, *, rel_tol: float = REL_TOL,
                 ignore: tuple[str, ...] = ()) -> list[str]:
    """Differences between two rendered texts, numbers within a unit of their last digit;
    text matching a regular expression in ``ignore`` may differ."""
    for pattern in ignore:
        expected, got = re.sub(pattern, "<ignored>", expected), re.sub(pattern, "<ignored>", got)
    out: list[str] = []
    exp_lines, got_lines = expected.splitlines(), got.splitlines()
    if len(exp_lines) != len(got_lines):
        out.append(f"{len(exp_lines)} lines != {len(got_lines)}")
    for n, (a, b) in enumerate(zip(exp_lines, got_lines, strict=False), start=1):
        if _NUM.sub("#", a) != _NUM.sub("#", b):
            out.append(f"line {n}: text differs:\n  - {a}\n  + {b}")
            continue
        for x, y in zip(_NUM.findall(a), _NUM.findall(b), strict=True):
            tol = max(_unit(x), _unit(y)) * (1 + 1e-9)
            if not math.isclose(_value(x), _value(y), rel_tol=rel_tol, abs_tol=tol):
                out.append(f"line {n}: {x} != {y} (beyond one unit of the last digit)\n"
                           f"  - {a}\n  + {b}")
    return out


def check_golden(golden: Path, got: str, *, update: bool, test: str = "",
                 ignore: tuple[str, ...] = ()) -> None:
    """Compare ``got`` with the golden file (JSON by structure, else as text); with
    ``update`` rewrite the golden file instead. A missing golden file is a failure.
    ``ignore``: JSON paths (``$.a.b``) or, for text, regular expressions that may differ."""
    hint = UPDATE_HINT.format(test=test or "tests/")
    if update:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(got, encoding="utf-8")
        warnings.warn(f"golden file {golden} rewritten: review and commit it", stacklevel=2)
        return
    if not golden.is_file():
        raise AssertionError(f"golden file {golden} is missing; {hint}")
    expected = golden.read_text(encoding="utf-8")
    if golden.suffix == ".json":
        diffs = compare_json(json.loads(expected), json.loads(got), ignore=frozenset(ignore))
    else:
        diffs = compare_text(expected, got, ignore=ignore)
    if diffs:
        shown = "\n".join(diffs[:20]) + (f"\n... and {len(diffs) - 20} more"
                                         if len(diffs) > 20 else "")
        raise AssertionError(f"{golden.name} differs from the golden file:\n{shown}\n{hint}")
