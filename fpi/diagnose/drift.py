"""Traffic drift against a baseline night: what the model's inputs look like, and how much
of each class's change the change of traffic mix alone would produce.

Each night's summary carries a ``traffic`` block of mergeable counts: per-value counts
of the categorical inputs (device type, locale, domain) and fixed-bin histograms of
the numeric ones (ASR confidence, audio length, wake score, NLU confidence, session
length). Fixed bins make two nights' histograms comparable and any two partitions of
a night add up to the night.

Against a baseline, each input gets the Jensen-Shannon divergence (base 2, in [0, 1])
and the population stability index of the two distributions, and a chi-square test of
homogeneity; p-values are Benjamini-Hochberg corrected over the inputs. An input
*drifts* when its q-value is at most ``alpha`` and its PSI is at least ``MIN_PSI``
(with tens of thousands of turns any difference is significant; 0.1 is the usual
"moderate shift" threshold).

The mix effect of a categorical dimension on a class is the change the class's rate
would show if every value of that dimension kept its baseline rate and only the
shares moved: ``sum_v (w_now(v) - w_base(v)) * r_base(v)`` (values the baseline has no
supported slice for take the baseline's overall rate).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import polars as pl

from fpi.diagnose.rates import benjamini_hochberg
from fpi.numbers import stable_round
from fpi.schema import CLASSES

#: Categorical inputs (slice dimensions) whose mix is tracked.
CATEGORICAL: tuple[str, ...] = ("device_type", "locale", "domain")
#: Numeric inputs: name -> (struct block, field, fixed bin edges).
NUMERIC: dict[str, tuple[str, str, tuple[float, ...]]] = {
    "asr_confidence": ("asr", "confidence", tuple(np.round(np.linspace(0, 1, 11), 2))),
    "nlu_confidence": ("nlu", "confidence", tuple(np.round(np.linspace(0, 1, 11), 2))),
    "wake_score": ("wake", "score", tuple(np.round(np.linspace(0, 1, 11), 2))),
    "audio_ms": ("asr", "audio_ms", (0, 500, 1000, 1500, 2000, 3000, 4000, 6000, 8000, 12000,
                                      1e12)),
}
#: Session length in turns: bins [1, 2), [2, 3), ... [12, inf).
SESSION_EDGES: tuple[float, ...] = (1, 2, 3, 4, 5, 6, 8, 12, 1e12)
#: Minimum population stability index for an input to count as drifting.
MIN_PSI = 0.1
_EPS = 1e-4


class TrafficCounts:
    """Fixed-bin histograms of the numeric inputs and of session lengths, accumulated
    over batches of whole sessions; two partitions' counts add up (:meth:`merge`)."""

    def __init__(self) -> None:
        self.hist = {k: np.zeros(len(e) - 1, dtype=np.int64) for k, (_, _, e) in NUMERIC.items()}
        self.missing = dict.fromkeys(NUMERIC, 0)
        self.sessions = np.zeros(len(SESSION_EDGES) - 1, dtype=np.int64)

    def add(self, batch: pl.DataFrame) -> None:
        """One batch of whole sessions."""
        for name, (block, fld, edges) in NUMERIC.items():
            if block not in batch.columns:
                self.missing[name] += batch.height
                continue
            v = batch[block].struct.field(fld).cast(pl.Float64).to_numpy()
            ok = np.isfinite(v)
            self.missing[name] += int((~ok).sum())
            self.hist[name] += _bin(v[ok], edges)
        lengths = batch["session_id"].rle().struct.field("len").to_numpy()
        self.sessions += _bin(lengths[lengths > 0], SESSION_EDGES)

    def merge(self, other: TrafficCounts) -> TrafficCounts:
        """The counts of both (a new object)."""
        out = TrafficCounts()
        for name in NUMERIC:
            out.hist[name] = self.hist[name] + other.hist[name]
            out.missing[name] = self.missing[name] + other.missing[name]
        out.sessions = self.sessions + other.sessions
        return out

    def to_dict(self, categorical: Mapping[str, Mapping[str, int]]) -> dict[str, Any]:
        """The ``traffic`` block: categorical counts (turns per value of each slice
        dimension), numeric histograms, session lengths."""
        cat = {dim: {str(v): int(c) for v, c in sorted(categorical[dim].items())}
               for dim in CATEGORICAL if dim in categorical}
        num = {name: {"edges": [float(e) for e in NUMERIC[name][2]],
                      "counts": [int(c) for c in self.hist[name]],
                      "missing": int(self.missing[name])} for name in NUMERIC}
        num["session_turns"] = {"edges": list(SESSION_EDGES),
                                "counts": [int(c) for c in self.sessions], "missing": 0}
        return {"categorical": cat, "numeric": num, "min_psi": MIN_PSI}


def _bin(values: np.ndarray, edges: tuple[float, ...]) -> np.ndarray:
    idx = np.clip(np.searchsorted(np.asarray(edges), values, side="right") - 1, 0,
                  len(edges) - 2)
    return np.bincount(idx, minlength=len(edges) - 1).astype(np.int64)


def _divergences(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """JSD (base 2), PSI and the chi-square p-value of two count vectors."""
    pa = (a + _EPS) / (a.sum() + _EPS * len(a))
    pb = (b + _EPS) / (b.sum() + _EPS * len(b))
    m = (pa + pb) / 2
    jsd = 0.5 * float(np.sum(pa * np.log2(pa / m)) + np.sum(pb * np.log2(pb / m)))
    psi = float(np.sum((pa - pb) * np.log(pa / pb)))
    keep = (a + b) > 0
    if keep.sum() < 2 or a.sum() == 0 or b.sum() == 0:
        return max(jsd, 0.0), psi, 1.0
    table = np.vstack([a[keep], b[keep]])
    p = _chi2_p_value(table)
    return max(jsd, 0.0), psi, p if math.isfinite(p) else 1.0


def _chi2_p_value(table: np.ndarray) -> float:
    """Pearson's chi-square test of independence on a table with no empty row or column:
    ``scipy.stats.chi2_contingency(table, correction=False)``'s p-value, bit for bit,
    without importing ``scipy.stats`` (about 1 CPU-s per process); ``scipy.special`` only
    when a baseline is compared (0.1 CPU-s that a night without one does not pay)."""
    from scipy.special import chdtrc

    expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / table.sum()
    statistic = float(np.sum((table - expected) ** 2 / expected))
    return float(chdtrc((table.shape[0] - 1) * (table.shape[1] - 1), statistic))


def _pairs(now: Mapping[str, Any], base: Mapping[str, Any]
           ) -> list[tuple[str, str, np.ndarray, np.ndarray, list[str]]]:
    """(input, kind, tonight's counts, baseline counts, bin labels) for every shared input."""
    out = []
    for dim, cur in (now.get("categorical") or {}).items():
        old = (base.get("categorical") or {}).get(dim)
        if old is None:
            continue
        keys = sorted(set(cur) | set(old))
        out.append((dim, "categorical", np.array([cur.get(k, 0) for k in keys], float),
                    np.array([old.get(k, 0) for k in keys], float), keys))
    for name, cur in (now.get("numeric") or {}).items():
        old = (base.get("numeric") or {}).get(name)
        if old is None or old.get("edges") != cur.get("edges"):
            continue
        e = cur["edges"]
        labels = [f"[{e[i]:g}, {e[i + 1]:g})" for i in range(len(e) - 1)]
        out.append((name, "numeric", np.asarray(cur["counts"], float),
                    np.asarray(old["counts"], float), labels))
    return out


def drift_table(now: Mapping[str, Any], base: Mapping[str, Any], *, alpha: float = 0.05
                ) -> list[dict[str, Any]]:
    """One row per input shared by both nights: divergences, test, BH q-value, the flag,
    and the bin whose share moved most."""
    rows: list[dict[str, Any]] = []
    for name, kind, a, b, labels in _pairs(now, base):
        jsd, psi, p = _divergences(a, b)
        sa, sb = a / max(a.sum(), 1), b / max(b.sum(), 1)
        j = int(np.argmax(np.abs(sa - sb)))
        rows.append({"input": name, "kind": kind, "jsd": stable_round(jsd, 6),
                     "psi": stable_round(psi, 6), "p_value": p,
                     "largest_move": {"bin": labels[j], "baseline_share": stable_round(sb[j], 4),
                                      "share": stable_round(sa[j], 4)}})
    q = benjamini_hochberg(np.array([r["p_value"] for r in rows]))
    for r, qv in zip(rows, q, strict=True):
        r["p_value"] = float(f"{r['p_value']:.4g}")
        r["q_value"] = float(f"{qv:.4g}")
        r["drifting"] = bool(qv <= alpha and r["psi"] >= MIN_PSI)
    return sorted(rows, key=lambda r: (not r["drifting"], -r["psi"], r["input"]))


def _slice_rates(summary: Mapping[str, Any], dim: str) -> dict[str, dict[str, float]]:
    d = ((summary.get("slices") or {}).get("dimensions") or {}).get(dim) or {}
    return {str(s["value"]): {c: float(v["estimate"]) for c, v in s["rates"].items()}
            for s in d.get("slices", [])}


def mix_effects(now: Mapping[str, Any], base: Mapping[str, Any], dims: list[str],
                classes: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """class -> dimension -> the change in the class's rate the mix shift alone produces."""
    out: dict[str, dict[str, float]] = {c: {} for c in classes}
    for dim in dims:
        cur = ((now.get("traffic") or {}).get("categorical") or {}).get(dim)
        old = ((base.get("traffic") or {}).get("categorical") or {}).get(dim)
        if not cur or not old:
            continue
        rates = _slice_rates(base, dim)
        keys = sorted(set(cur) | set(old))
        wn = np.array([cur.get(k, 0) for k in keys], float)
        wb = np.array([old.get(k, 0) for k in keys], float)
        wn, wb = wn / max(wn.sum(), 1), wb / max(wb.sum(), 1)
        for c in classes:
            overall = _overall(base, c)
            r = np.array([rates.get(k, {}).get(c, overall) for k in keys])
            out[c][dim] = stable_round(float(np.sum((wn - wb) * r)), 6)
    return out


def _overall(summary: Mapping[str, Any], c: str) -> float:
    if c == "failure":
        return float((summary.get("failure") or {}).get("estimate", 0.0))
    return float(summary["rates"][c]["estimate"])


def explain_share(change: float, mix: float) -> tuple[float | None, str]:
    """The share of a change the mix shift explains, and the verdict ``traffic``,
    ``component`` or ``both``."""
    if change == 0:
        return None, "component"
    share = mix / change
    if share >= 2 / 3:
        return stable_round(min(share, 9.99), 3), "traffic"
    if share <= 1 / 3:
        return stable_round(max(share, -9.99), 3), "component"
    return stable_round(share, 3), "both"


def drift_doc(summary: Mapping[str, Any], base: Mapping[str, Any], *, alpha: float = 0.05
              ) -> dict[str, Any] | None:
    """The ``drift`` block of a summary against its baseline (``None`` without traffic)."""
    now_t, base_t = summary.get("traffic"), base.get("traffic")
    if not now_t or not base_t:
        return None
    table = drift_table(now_t, base_t, alpha=alpha)
    drifting = [r["input"] for r in table if r["drifting"] and r["kind"] == "categorical"]
    changes = (summary.get("baseline") or {}).get("changes") or {}
    classes = tuple(c for c in CLASSES[1:] if c in changes)
    effects = mix_effects(summary, base, list(CATEGORICAL), classes)
    by_class = {}
    for c in classes:
        eff = effects.get(c, {})
        cand = {d: v for d, v in eff.items() if d in drifting}
        dim = max(sorted(cand), key=lambda d: abs(cand[d]), default=None)
        mix = cand[dim] if dim is not None else 0.0
        share, verdict = explain_share(float(changes[c]["change"]), mix)
        by_class[c] = {"change": changes[c]["change"], "mix_effect": stable_round(mix, 6),
                       "dimension": dim, "explained_share": share,
                       "explained_by": verdict if changes[c]["significant"] else None,
                       "by_dimension": eff}
    return {"method": "jensen-shannon divergence (base 2) and PSI; chi-square test; "
                      "benjamini-hochberg", "alpha": alpha, "min_psi": MIN_PSI,
            "inputs": table, "drifting": [r["input"] for r in table if r["drifting"]],
            "mix": by_class}
