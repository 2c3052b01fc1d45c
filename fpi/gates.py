"""CI gates on a diagnosis summary: parse, evaluate, render as JUnit XML.

A gate is one comparison, ``KEY OP BOUND``::

    asr.estimate <= 0.06
    er.estimate <= baseline + 0.01        # baseline: the same key in --baseline's summary
    failure.high < 0.25                   # failure: any failure (1 - correct)
    nlu.change <= 0.02                    # change against the baseline night
    macro_f1 >= 0.70                      # labelled nights only
    asr.estimate <= baseline.asr.estimate * 1.25

KEY is ``<class>.<field>`` (class one of the six classes or ``failure``; field
one of :data:`FIELDS`), or one of :data:`SCALAR_KEYS`. BOUND is arithmetic
(``+ - * /``, parentheses) over numbers, ``baseline``, ``baseline.<key>`` and
other keys. A gate file (TOML) holds ``[[gate]]`` tables with ``expr`` and
optional ``name`` and ``warn`` (a stricter expression or bound: violating it
only warns).
"""

from __future__ import annotations

import ast
import math
import operator
import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from fpi.classes import CLASSES
from fpi.errors import InputError

#: Fields of ``<class>.<field>`` keys (``change*`` need a baseline).
FIELDS: tuple[str, ...] = (
    "estimate", "low", "high", "count", "count_rate", "change", "change_low", "change_high",
)
#: Keys that are not per class.
SCALAR_KEYS: tuple[str, ...] = ("turns", "macro_f1", "accuracy")
GATE_CLASSES: tuple[str, ...] = (*CLASSES, "failure")

_OPS: dict[type[ast.cmpop], tuple[str, Callable[[float, float], bool]]] = {
    ast.LtE: ("<=", operator.le),
    ast.Lt: ("<", operator.lt),
    ast.GtE: (">=", operator.ge),
    ast.Gt: (">", operator.gt),
}
_BINOPS: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
}

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = _dotted(node.value)
        return None if head is None else f"{head}.{node.attr}"
    return None


def _check_key(key: str, expr: str) -> None:
    parts = key.split(".")
    if len(parts) == 1 and parts[0] in SCALAR_KEYS:
        return
    if len(parts) == 2 and parts[0] in GATE_CLASSES and parts[1] in FIELDS:
        return
    raise InputError(
        f"gate {expr!r}: unknown key {key!r}; use <class>.<field> with class in "
        f"{', '.join(GATE_CLASSES)} and field in {', '.join(FIELDS)}, or one of "
        f"{', '.join(SCALAR_KEYS)}"
    )


#: Longest gate expression accepted (a gate is one short comparison).
MAX_EXPR_CHARS = 500


def _check_bound(node: ast.AST, expr: str) -> bool:
    """Validate a bound expression; returns whether it uses the baseline."""
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) \
            and not isinstance(node.value, bool):
        try:
            finite = math.isfinite(float(node.value))
        except OverflowError:
            finite = False
        if not finite:
            raise InputError(f"gate {expr!r}: {ast.unparse(node)} is not a finite number")
        return False
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        return _check_bound(node.operand, expr)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left = _check_bound(node.left, expr)
        return _check_bound(node.right, expr) or left
    name = _dotted(node)
    if name is not None:
        if name == "baseline":
            return True
        if name.startswith("baseline."):
            _check_key(name.removeprefix("baseline."), expr)
            return True
        _check_key(name, expr)
        return False
    raise InputError(f"gate {expr!r}: the bound may only use numbers, keys, 'baseline' and + - * /")


@dataclass(frozen=True)
class Gate:
    """One parsed gate. ``warn`` is an optional stricter gate on the same key."""

    expr: str
    key: str
    op: str
    bound: ast.expr
    name: str
    uses_baseline: bool
    warn: Gate | None = None


def parse_gate(text: str, *, name: str | None = None, warn: str | float | None = None) -> Gate:
    """Parse ``'asr.estimate <= 0.06'`` into a :class:`Gate`.

    ``warn`` is either a full expression on the same key or just a bound (number
    or expression) with the same operator. Raises :class:`fpi.errors.InputError`
    with a one-line reason for anything it cannot parse.
    """
    if not isinstance(text, str):
        raise InputError(f"gate {text!r}: must be a string such as 'asr.estimate <= 0.06'")
    expr = " ".join(text.split())
    if len(expr) > MAX_EXPR_CHARS:
        raise InputError(f"gate {expr[:40]!r}...: longer than {MAX_EXPR_CHARS} characters")
    try:
        tree = ast.parse(expr, mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        # (ValueError: a NUL byte; RecursionError/MemoryError: absurd nesting)
        raise InputError(
            f"gate {expr!r}: not of the form 'KEY OP BOUND' (e.g. 'asr.estimate <= 0.06')"
        ) from None
    if not (isinstance(tree, ast.Compare) and len(tree.ops) == 1
            and type(tree.ops[0]) in _OPS):
        raise InputError(
            f"gate {expr!r}: need exactly one comparison (<=, <, >=, >), "
            "e.g. 'asr.estimate <= 0.06'"
        )
    key = _dotted(tree.left)
    if key is None:
        raise InputError(f"gate {expr!r}: the left side must be a key such as asr.estimate")
    _check_key(key, expr)
    uses = _check_bound(tree.comparators[0], expr)
    if not _has_names(tree.comparators[0]):
        # A bound of numbers only: evaluate it now, so '1/0' or '1e308 * 10' is
        # refused when the gate is read, not after a night of work.
        _eval_bound(tree.comparators[0], key, {}, None, expr)
    if key.split(".")[-1].startswith("change"):
        uses = True
    op = _OPS[type(tree.ops[0])][0]
    warn_gate = None
    if warn is not None:
        if isinstance(warn, bool) or not isinstance(warn, str | int | float):
            raise InputError(f"gate {expr!r}: warn must be a bound (a number or an expression "
                             f"such as '{key} {op} 0.05'), not {warn!r}")
        wtext = str(warn)
        if not any(o in wtext for o in ("<", ">")):
            wtext = f"{key} {op} {wtext}"
        warn_gate = parse_gate(wtext, name=f"{name or expr} (warn)")
        if warn_gate.key != key:
            raise InputError(f"gate {expr!r}: its warn bound must be on the same key ({key})")
    if name is not None and not isinstance(name, str):
        raise InputError(f"gate {expr!r}: name must be a string, not {name!r}")
    return Gate(expr=expr, key=key, op=op, bound=tree.comparators[0], name=name or expr,
                uses_baseline=uses or bool(warn_gate and warn_gate.uses_baseline),
                warn=warn_gate)


def load_gates(path: str | os.PathLike[str]) -> list[Gate]:
    """Read a TOML gate file: ``[[gate]]`` tables with ``expr``, optional ``name`` and ``warn``.

    A top-level ``gates = ["asr.estimate <= 0.06", ...]`` list is accepted too.
    """
    p = Path(path)
    try:
        # utf-8-sig: a byte-order mark (as some Windows editors write) is not an error
        data = tomllib.loads(p.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise InputError(f"{p}: gate file not found") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{p}: not a TOML file (not UTF-8 text: byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{p}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise InputError(f"{p}: cannot read the gate file: {exc.strerror or exc}") from None
    unknown_top = sorted(set(data) - {"gate", "gates"})
    if unknown_top and "gate" not in data and "gates" not in data:
        raise InputError(f"{p}: no gates found (expected [[gate]] tables with expr = ...; "
                         f"found only {unknown_top})")
    if unknown_top:
        raise InputError(f"{p}: unknown key(s) {unknown_top}: a gate file holds [[gate]] "
                         "tables (or a gates = [...] list)")
    listed = data.get("gates", [])
    if not isinstance(listed, list):
        raise InputError(f"{p}: gates must be a list of strings such as 'asr.estimate <= 0.06'")
    out: list[Gate] = []
    for i, s in enumerate(listed, start=1):
        if not isinstance(s, str):
            raise InputError(f"{p}: gates[{i}] must be a string such as 'asr.estimate <= 0.06'")
        out.append(_in_file(p, f"gates[{i}]", partial(parse_gate, s)))
    tables = data.get("gate", [])
    if not isinstance(tables, list):
        raise InputError(f"{p}: use [[gate]] tables (an array of tables)")
    for i, t in enumerate(tables, start=1):
        if not isinstance(t, dict) or not isinstance(t.get("expr"), str):
            raise InputError(f"{p}: [[gate]] number {i} needs expr = \"KEY OP BOUND\"")
        unknown = set(t) - {"expr", "name", "warn", "description"}
        if unknown:
            raise InputError(f"{p}: [[gate]] number {i}: unknown field(s) {sorted(unknown)}")
        if not isinstance(t.get("description", ""), str):
            raise InputError(f"{p}: [[gate]] number {i}: description must be a string")
        out.append(_in_file(p, f"[[gate]] number {i}",
                            partial(parse_gate, t["expr"], name=t.get("name"),
                                    warn=t.get("warn"))))
    if not out:
        raise InputError(f"{p}: no gates found (expected [[gate]] tables with expr = ...)")
    return out


def _in_file(path: Path, where: str, fn: Callable[[], Gate]) -> Gate:
    try:
        return fn()
    except InputError as exc:
        raise InputError(f"{path}: {where}: {exc}") from None


# ---------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------


def lookup(summary: Mapping[str, Any], key: str) -> tuple[float | None, float | None, float | None]:
    """``(value, low, high)`` of a gate key in a summary document (``None`` if absent)."""
    parts = key.split(".")
    if len(parts) == 1:
        if key == "turns":
            v = summary.get("turns")
            return (None if v is None else float(v)), None, None
        labels = summary.get("labels") or {}
        v = labels.get(key)
        return (None if v is None else float(v)), None, None
    cls, field = parts
    if field.startswith("change"):
        changes = ((summary.get("baseline") or {}).get("changes") or {})
        entry = changes.get(cls)
        if entry is None:
            return None, None, None
        f = {"change": "change", "change_low": "low", "change_high": "high"}[field]
        return float(entry[f]), float(entry["low"]), float(entry["high"])
    entry = (summary.get("rates") or {}).get(cls) if cls != "failure" else summary.get("failure")
    if entry is None or entry.get(field) is None:
        return None, None, None
    lo, hi = entry.get("low"), entry.get("high")
    return float(entry[field]), (None if lo is None else float(lo)), \
        (None if hi is None else float(hi))


def _has_names(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Name) for n in ast.walk(node))


def _eval_bound(node: ast.AST, key: str, summary: Mapping[str, Any],
                baseline: Mapping[str, Any] | None, expr: str) -> float:
    """The bound's value; an :class:`InputError` if it is not a finite number (a
    division by zero, an overflow), which would otherwise pass or fail every night."""
    value = _eval_node(node, key, summary, baseline, expr)
    if not math.isfinite(value):
        raise InputError(f"gate {expr!r}: the bound {ast.unparse(node)} is {value} "
                         "(not a finite number)")
    return value


def _eval_node(node: ast.AST, key: str, summary: Mapping[str, Any],
               baseline: Mapping[str, Any] | None, expr: str) -> float:
    if isinstance(node, ast.Constant):
        assert isinstance(node.value, int | float)  # checked by _check_bound
        return float(node.value)
    if isinstance(node, ast.UnaryOp):
        v = _eval_node(node.operand, key, summary, baseline, expr)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp):
        a = _eval_node(node.left, key, summary, baseline, expr)
        b = _eval_node(node.right, key, summary, baseline, expr)
        try:
            return _BINOPS[type(node.op)](a, b)
        except ZeroDivisionError:
            raise InputError(f"gate {expr!r}: the bound {ast.unparse(node)} divides by zero"
                             ) from None
    name = _dotted(node) or ""
    source, k = summary, name
    if name == "baseline" or name.startswith("baseline."):
        if baseline is None:
            raise InputError(f"gate {expr!r}: uses 'baseline' but no --baseline summary was given")
        source, k = baseline, (key if name == "baseline" else name.removeprefix("baseline."))
    found, _, _ = lookup(source, k)
    if found is None:
        where = "the baseline summary" if source is baseline else "the summary"
        raise InputError(f"gate {expr!r}: {k} is not in {where}")
    return found


@dataclass(frozen=True)
class GateResult:
    """The outcome of one gate: status PASS, WARN or FAIL and the figures behind it."""

    name: str
    expr: str
    key: str
    op: str
    value: float
    bound: float
    low: float | None
    high: float | None
    status: str
    warn_bound: float | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the summary's ``gates`` entries)."""
        return {
            "name": self.name, "expr": self.expr, "key": self.key, "op": self.op,
            "value": _r(self.value), "bound": _r(self.bound),
            "warn_bound": None if self.warn_bound is None else _r(self.warn_bound),
            "low": None if self.low is None else _r(self.low),
            "high": None if self.high is None else _r(self.high),
            "status": self.status, "message": self.message,
        }


def _r(x: float) -> float:
    return round(float(x), 6)


def _fmt(x: float | None) -> str:
    if x is None:
        return "n/a"
    if float(x).is_integer():
        return f"{int(x)}"  # counts: 10000, never 1e+04
    return f"{x:.4g}" if abs(x) >= 1 else f"{x:.4f}"


def evaluate_gates(gates: Sequence[Gate], summary: Mapping[str, Any],
                   baseline: Mapping[str, Any] | None = None) -> list[GateResult]:
    """Evaluate each gate on ``summary`` (and ``baseline`` for ``baseline`` terms)."""
    results: list[GateResult] = []
    for g in gates:
        value, lo, hi = lookup(summary, g.key)
        if value is None:
            hint = " (needs --baseline)" if g.key.split(".")[-1].startswith("change") else ""
            if g.key in ("macro_f1", "accuracy"):
                hint = " (needs labelled input)"
            raise InputError(f"gate {g.expr!r}: {g.key} is not in the summary{hint}")
        bound = _eval_bound(g.bound, g.key, summary, baseline, g.expr)
        ok = _compare(value, g.op, bound)
        warn_bound = None
        status = PASS if ok else FAIL
        if g.warn is not None:
            warn_bound = _eval_bound(g.warn.bound, g.key, summary, baseline, g.warn.expr)
            if ok and not _compare(value, g.warn.op, warn_bound):
                status = WARN
        interval = "" if lo is None or hi is None else f" [{_fmt(lo)}, {_fmt(hi)}]"
        verdict = {PASS: "ok", WARN: f"beyond warn bound {_fmt(warn_bound)}",
                   FAIL: "violated"}[status]
        msg = f"{g.key} = {_fmt(value)}{interval}, bound {g.op} {_fmt(bound)}: {verdict}"
        results.append(GateResult(g.name, g.expr, g.key, g.op, value, bound, lo, hi, status,
                                  warn_bound, msg))
    return results


def _compare(value: float, op: str, bound: float) -> bool:
    if math.isnan(bound):
        return False
    return {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt}[op](
        value, bound)


def overall_status(results: Sequence[GateResult | Mapping[str, Any]]) -> str:
    """``none`` (no gates), ``pass``, ``warn`` or ``fail``."""
    statuses = [r.status if isinstance(r, GateResult) else r["status"] for r in results]
    if not statuses:
        return "none"
    if FAIL in statuses:
        return "fail"
    return "warn" if WARN in statuses else "pass"


def junit_xml(results: Sequence[Mapping[str, Any]], *, suite: str = "fpi.gates") -> str:
    """JUnit XML with one test case per gate (FAIL -> failure; WARN passes, noted in output)."""
    from xml.sax.saxutils import escape, quoteattr  # only here: it loads urllib and email

    fails = sum(r["status"] == FAIL for r in results)
    lines = ['<?xml version="1.0" encoding="UTF-8"?>',
             f'<testsuites name={quoteattr(suite)} tests="{len(results)}" failures="{fails}">',
             f'  <testsuite name={quoteattr(suite)} tests="{len(results)}" failures="{fails}" '
             'errors="0" skipped="0">']
    for r in results:
        lines.append(f'    <testcase classname={quoteattr(suite)} name={quoteattr(r["name"])}>')
        if r["status"] == FAIL:
            lines.append(f'      <failure message={quoteattr(r["message"])} type="GateFailed">'
                         f'{escape(r["expr"])}</failure>')
        lines.append(f'      <system-out>{escape(r["status"] + ": " + r["message"])}</system-out>')
        lines.append("    </testcase>")
    lines += ["  </testsuite>", "</testsuites>", ""]
    return "\n".join(lines)
