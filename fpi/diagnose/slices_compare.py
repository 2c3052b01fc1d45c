"""Slices against the baseline night, and slices that select the same turns.

*Same turns.* ``domain=music`` and ``intent=PlayMusicIntent`` can be the same turns;
listing both doubles every finding. Two slices select the same turns when they have
the same count and the same sums of per-turn keys (a commutative fingerprint of the
turn set, ``hash(session, turn)``, so partitions' fingerprints add up); such slices
become one row that names all their definitions (``also``).

*Against the baseline.* Each supported slice's per-class estimate is tested against
the same slice's estimate in the baseline summary (one-sided, for an increase; each
night's interval half-width over z is its standard error, combined as independent,
which is conservative since both nights share the model). A slice the baseline did
not have (or had under the minimum support) is tested against the baseline's overall
rate and marked ``new``. P-values are Benjamini-Hochberg corrected; a slice is
*new or worse* when its q-value is at most ``alpha`` and it has more failures.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from fpi.diagnose.rates import FAILURE_KEYS, benjamini_hochberg, value_codes, z_value
from fpi.numbers import stable_round


@dataclass(frozen=True)
class Fingerprints:
    """Per value of one slice dimension: its turns and a commutative fingerprint of which
    turns they are (sums of two 31-bit pieces of each turn's stable key), so the
    fingerprints of partitions add up to the night's."""

    values: tuple[str, ...]
    turns: np.ndarray  # (v,) int64
    sums: np.ndarray  # (v, 2) int64

    @classmethod
    def of(cls, values: pl.Series, keys: np.ndarray) -> Fingerprints:
        cats, codes = value_codes(values)
        k = np.asarray(keys, np.uint64)
        pieces = np.stack([(k & np.uint64(0x7FFFFFFF)), (k >> np.uint64(33))], 1).astype(np.int64)
        sums = np.zeros((len(cats), 2), np.int64)
        np.add.at(sums, codes, pieces)
        return cls(tuple(str(c) for c in cats),
                   np.bincount(codes, minlength=len(cats)).astype(np.int64), sums)

    @staticmethod
    def merge(parts: Sequence[Fingerprints]) -> Fingerprints:
        values = tuple(sorted({v for p in parts for v in p.values}))
        index = {v: i for i, v in enumerate(values)}
        turns = np.zeros(len(values), np.int64)
        sums = np.zeros((len(values), 2), np.int64)
        for p in parts:
            at = np.array([index[v] for v in p.values], np.int64)
            turns[at] += p.turns
            sums[at] += p.sums
        return Fingerprints(values, turns, sums)


def same_turn_groups(slices: pl.DataFrame | Mapping[str, Fingerprints], min_support: int
                     ) -> list[list[dict[str, str]]]:
    """Groups (of two or more) of supported slices that select exactly the same turns:
    from each dimension's :class:`Fingerprints` (or one row per turn of slice values,
    keyed by row number)."""
    if isinstance(slices, pl.DataFrame):
        rows = np.arange(slices.height, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        slices = {dim: Fingerprints.of(slices[dim], rows) for dim in slices.columns}
    order = {d: i for i, d in enumerate(slices)}
    seen: dict[tuple[int, int, int], list[dict[str, str]]] = {}
    for dim, fp in slices.items():
        for i, value in enumerate(fp.values):
            if fp.turns[i] >= min_support:
                key = (int(fp.turns[i]), int(fp.sums[i, 0]), int(fp.sums[i, 1]))
                seen.setdefault(key, []).append({"dimension": dim, "value": value})
    groups = [sorted(g, key=lambda x: (order[x["dimension"]], x["value"]))
              for g in seen.values() if len(g) > 1]
    return sorted(groups, key=lambda g: (order[g[0]["dimension"]], g[0]["value"]))


def collapse(rows: list[dict[str, Any]], groups: list[list[dict[str, str]]]
             ) -> list[dict[str, Any]]:
    """Rows (slice findings with ``dimension``, ``value``, ``class``) with duplicates of the
    same turns and class merged into the first; it gains ``also`` (the other definitions)."""
    canon: dict[tuple[str, str], tuple[str, str]] = {}
    members: dict[tuple[str, str], list[dict[str, str]]] = {}
    for g in groups:
        head = (g[0]["dimension"], g[0]["value"])
        for d in g:
            canon[(d["dimension"], d["value"])] = head
        members[head] = g
    seen: dict[tuple[tuple[str, str], str], dict[str, Any]] = {}
    out = []
    for r in rows:
        key = (str(r["dimension"]), str(r["value"]))
        head = canon.get(key, key)
        k = (head, str(r["class"]))
        if k in seen:
            continue
        row = dict(r)
        if head in members:
            row["also"] = [d for d in members[head] if (d["dimension"], d["value"]) != key]
        seen[k] = row
        out.append(row)
    return out


def _se(r: Mapping[str, Any], z: float) -> float:
    return (float(r["high"]) - float(r["low"])) / 2 / z


def _baseline_slices(base: Mapping[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    dims = ((base.get("slices") or {}).get("dimensions") or {})
    return {(dim, str(s["value"])): s for dim, d in dims.items() for s in d.get("slices", [])}


def _overall(base: Mapping[str, Any], c: str) -> Mapping[str, Any]:
    return base["failure"] if c == "failure" else base["rates"][c]


def compare_slices(summary: Mapping[str, Any], base: Mapping[str, Any], *,
                   groups: list[list[dict[str, str]]], confidence: float = 0.95,
                   alpha: float = 0.05, top: int = 10) -> dict[str, Any]:
    """The ``slices.vs_baseline`` block: tests, and the new-or-worse slices (collapsed)."""
    z = z_value(confidence)
    old = _baseline_slices(base)
    tests: list[dict[str, Any]] = []
    for dim, d in ((summary.get("slices") or {}).get("dimensions") or {}).items():
        for s in d.get("slices", []):
            prev = old.get((dim, str(s["value"])))
            for c in FAILURE_KEYS:
                cur = s["rates"][c]
                ref = prev["rates"][c] if prev is not None else _overall(base, c)
                diff = float(cur["estimate"]) - float(ref["estimate"])
                sd = math.sqrt(max(_se(cur, z) ** 2 + _se(ref, z) ** 2, 1e-12))
                tests.append({
                    "dimension": dim, "value": s["value"], "class": c, "turns": s["turns"],
                    "new": prev is None, "rate": cur["estimate"],
                    "baseline_rate": stable_round(float(ref["estimate"]), 6),
                    "change": stable_round(diff, 6),
                    "low": stable_round(diff - z * sd, 6), "high": stable_round(diff + z * sd, 6),
                    "extra_failures": stable_round(s["turns"] * diff, 2),
                    "p_value": 0.5 * math.erfc(diff / sd / math.sqrt(2)),
                })
    q = benjamini_hochberg(np.array([t["p_value"] for t in tests]))
    for t, qv in zip(tests, q, strict=True):
        t["p_value"] = float(f"{t['p_value']:.4g}")
        t["q_value"] = float(f"{qv:.4g}")
        t["significant"] = bool(qv <= alpha and t["change"] > 0)
    flagged = sorted((t for t in tests if t["significant"] and t["class"] != "failure"),
                     key=lambda t: (-t["extra_failures"], t["dimension"], str(t["value"]),
                                    t["class"]))
    return {"correction": "benjamini-hochberg", "alpha": alpha, "tests": len(tests),
            "compared_to": "the same slice in the baseline night (its overall rate for a "
                           "slice the baseline did not have)",
            "top": collapse(flagged, groups)[:top]}
