"""Per-class failure rates that stay unbiased when a night differs from the training data.

A model calibrated on the training prior, averaged over a night whose failure
mix has shifted, is pulled back toward the training rates. Two estimators
undo that under *label shift* (class-conditional logs unchanged, class mix
changed):

* **Adjusted classify-and-count** (ACC, also known as BBSE): solve ``q = M^T pi``
  where ``q`` is the night's distribution of argmax predictions and ``M`` the
  held-out confusion matrix, row-normalised (``P(predicted | true)``). This is
  the point estimate whenever the model carries its confusion matrix: it needs
  no calibration, so it cannot amplify calibration error.
* **EM prior adjustment** (Saerens, Latinne & Decaestecker, 2002): re-weight each
  turn's calibrated posterior by ``new_prior / train_prior`` and iterate until the
  prior equals the mean adjusted posterior. The point estimate without a
  confusion matrix; with a poorly calibrated model it can run away to 0 or 1.

The interval has to cover the model's error as well as sampling noise, so it
is the union of three percentile bootstraps: EM over sessions (Poisson weights
per session: turns of a session are not independent); ACC with the held-out
confusion rows redrawn from their Dirichlet posterior (the confusion matrix was
measured on a finite held-out set) plus the same session noise; and the
unadjusted mean probability. Where the estimators disagree, which is what a
shift that is not pure label shift looks like (the logs of every class drift,
and EM over-corrects), the interval widens to span them.

Each slice with enough turns gets its own estimate (same estimator); slice tests
are one-sided tests against the rest of the night, with the estimator's own
sampling variance (ACC's is the multinomial variance pushed through ``M^-1``),
corrected for multiple comparisons with Benjamini-Hochberg.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from fpi.numbers import stable_round
from fpi.schema import CLASSES

#: Slice dimensions: summary name -> (block, field) in the canonical frame.
SLICE_DIMENSIONS: dict[str, tuple[str, str]] = {
    "domain": ("nlu", "domain"),
    "intent": ("nlu", "intent"),
    "device_type": ("device", "type"),
    "locale": ("device", "locale"),
    "app_version": ("device", "app_version"),
}

#: The classes a slice test looks for excess of (``correct`` is not a failure);
#: ``failure`` is any failure (``1 - correct``).
FAILURE_KEYS: tuple[str, ...] = (*CLASSES[1:], "failure")

_MISSING = "(missing)"


def _z(confidence: float) -> float:
    """Two-sided normal quantile for ``confidence`` (no scipy needed)."""
    # inverse of erf by bisection: 60 halvings are plenty for double precision
    target = confidence
    lo, hi = 0.0, 10.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if math.erf(mid / math.sqrt(2)) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def em_prior(
    probs: np.ndarray,
    train_prior: np.ndarray,
    *,
    weights: np.ndarray | None = None,
    init: np.ndarray | None = None,
    rows: np.ndarray | None = None,
    tol: float = 1e-7,
    max_iter: int = 500,
    chunk: int = 65_536,
) -> np.ndarray:
    """EM estimate of the class prior of ``probs``' population (Saerens et al. 2002).

    Parameters
    ----------
    probs : (n, k) calibrated posteriors under the training prior.
    train_prior : (k,) the prior the posteriors were calibrated under.
    weights : optional (n,) non-negative row weights (bootstrap).
    init : optional starting prior (defaults to the training prior).
    rows : optional row indices: estimate on ``probs[rows]`` without copying it.
    chunk : rows per step, so temporaries stay small however big ``probs`` is.

    Returns
    -------
    (k,) estimated prior, summing to 1.
    """
    base = np.clip(np.asarray(train_prior, dtype=np.float64), 1e-12, None)
    base = base / base.sum()
    prior = base.copy() if init is None else np.clip(np.asarray(init, np.float64), 1e-12, None)
    w = None if weights is None else np.asarray(weights, dtype=np.float64)
    n = len(probs) if rows is None else len(rows)
    total = float(n) if w is None else float(w.sum())
    if n == 0 or total <= 0:
        return base
    for _ in range(max_iter):
        ratio = prior / base
        new = np.zeros_like(prior)
        for start in range(0, n, chunk):
            sl = slice(start, start + chunk)
            p = probs[sl] if rows is None else probs[rows[sl]]
            adj = p * ratio
            adj /= np.clip(adj.sum(axis=1, keepdims=True), 1e-300, None)
            new += adj.sum(axis=0) if w is None else w[sl] @ adj
        new /= total
        if np.max(np.abs(new - prior)) < tol:
            prior = new
            break
        prior = new
    return prior / prior.sum()


def adjust_posteriors(probs: np.ndarray, train_prior: np.ndarray,
                      new_prior: np.ndarray) -> np.ndarray:
    """Posteriors re-weighted from ``train_prior`` to ``new_prior`` (Bayes' rule)."""
    base = np.clip(np.asarray(train_prior, np.float64), 1e-12, None)
    adj = np.asarray(probs, np.float64) * (np.asarray(new_prior, np.float64) / base)
    return adj / np.clip(adj.sum(axis=1, keepdims=True), 1e-300, None)


def acc_prior(pred_dist: np.ndarray, confusion: np.ndarray) -> np.ndarray:
    """Adjusted classify-and-count: the prior ``pi`` with ``M^T pi = pred_dist``.

    ``confusion`` has true classes in rows and predicted classes in columns
    (counts or row-normalised). Solved by least squares, then projected onto
    the simplex (clip at 0, renormalise), since a noisy ``M`` can give small
    negative solutions.
    """
    m = np.asarray(confusion, np.float64)
    m = m / np.clip(m.sum(axis=1, keepdims=True), 1e-300, None)
    # Append the sum-to-one constraint as an extra (heavily weighted) equation.
    k = m.shape[0]
    a = np.vstack([m.T, 10.0 * np.ones((1, k))])
    b = np.concatenate([np.asarray(pred_dist, np.float64), [10.0]])
    sol, *_ = np.linalg.lstsq(a, b, rcond=None)
    sol = np.clip(sol, 0.0, None)
    s = sol.sum()
    return sol / s if s > 0 else np.full(k, 1.0 / k)


@dataclass(frozen=True)
class RateTable:
    """Per-class rate estimates of one night.

    ``estimate``/``low``/``high``/``em``/``acc``/``count_rate``/``mean_probability``
    are (k,) arrays in class order; ``count`` the argmax counts.
    """

    classes: tuple[str, ...]
    turns: int
    estimate: np.ndarray
    low: np.ndarray
    high: np.ndarray
    count: np.ndarray
    count_rate: np.ndarray
    mean_probability: np.ndarray
    em: np.ndarray
    acc: np.ndarray | None
    confidence: float
    n_boot: int
    #: which estimator ``estimate`` is: ``acc`` (with a confusion matrix) or ``em``
    estimator: str = "acc"

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """``{class: {estimate, low, high, count, count_rate, mean_probability, em, acc}}``."""
        out: dict[str, dict[str, Any]] = {}
        for i, c in enumerate(self.classes):
            out[c] = {
                "estimate": _r(self.estimate[i]),
                "low": _r(self.low[i]),
                "high": _r(self.high[i]),
                "count": int(self.count[i]),
                "count_rate": _r(self.count_rate[i]),
                "mean_probability": _r(self.mean_probability[i]),
                "em": _r(self.em[i]),
                "acc": None if self.acc is None else _r(self.acc[i]),
            }
        return out


def _r(x: float, nd: int = 6) -> float:
    """Round for the summary: stable text, no float noise in golden files."""
    return stable_round(x, nd)


def _session_codes(groups: np.ndarray | Sequence[Any] | None, n: int) -> np.ndarray:
    if groups is None:
        return np.arange(n)
    arr = np.asarray(groups)
    if np.issubdtype(arr.dtype, np.integer):
        return np.unique(arr, return_inverse=True)[1].reshape(-1)
    # rank-dense codes of strings without a Python loop
    return pl.Series(groups).cast(pl.String).rank("dense").cast(pl.Int64).to_numpy() - 1


def estimate_rates(
    probs: np.ndarray,
    *,
    train_prior: np.ndarray,
    confusion: np.ndarray | None = None,
    groups: np.ndarray | Sequence[Any] | None = None,
    confidence: float = 0.95,
    n_boot: int = 200,
    max_boot_rows: int = 20_000,
    seed: int = 0,
    classes: tuple[str, ...] = CLASSES,
    include_unadjusted: bool = True,
) -> RateTable:
    """Estimate each class's rate in a night, with an interval.

    Parameters
    ----------
    probs : (n, k) calibrated probabilities (training prior).
    train_prior : (k,) training class prior (manifest ``training.class_prior``).
    confusion : (k, k) held-out confusion counts (rows true, columns predicted),
        or ``None`` to skip ACC (the interval then covers sampling noise only).
    groups : (n,) session ids: the bootstrap resamples whole sessions.
    confidence : interval level.
    n_boot : bootstrap replicates.
    max_boot_rows : above this many turns, the bootstrap runs on a random subset
        of sessions and its deviations are scaled by ``sqrt(subset / n)``
        (standard errors of a mean shrink as ``1/sqrt(n)``), so its cost is flat.
    seed : bootstrap seed: same inputs and seed give the same interval.
    include_unadjusted : also span the unadjusted mean probability's bootstrap band
        (model error under drift that is not label shift; see the module docstring).
    """
    p = np.asarray(probs, np.float64)
    n, k = p.shape
    base = np.asarray(train_prior, np.float64)
    argmax = p.argmax(axis=1) if n else np.zeros(0, dtype=np.int64)
    count = np.bincount(argmax, minlength=k)[:k]
    count_rate = count / max(n, 1)
    mean_prob = p.mean(axis=0) if n else np.zeros(k)
    em = em_prior(p, base)
    acc = acc_prior(count_rate, confusion) if confusion is not None and n else None
    alpha = 1.0 - confidence
    if n == 0:
        z = np.zeros(k)
        return RateTable(classes, 0, em, z, np.ones(k), count, count_rate, mean_prob, em, acc,
                         confidence, 0, "em" if acc is None else "acc")

    rng = np.random.default_rng(seed)
    codes = _session_codes(groups, n)
    n_sessions = int(codes.max()) + 1
    # Subset of sessions for the bootstrap (keeps its cost flat in n).
    if n > max_boot_rows:
        frac = max_boot_rows / n
        keep_sessions = rng.random(n_sessions) < frac
        rows = np.flatnonzero(keep_sessions[codes])
        if len(rows) == 0:
            rows = np.arange(min(n, max_boot_rows))
    else:
        rows = np.arange(n)
    ps = p[rows]
    sc = pl.Series(codes[rows]).rank("dense").cast(pl.Int64).to_numpy() - 1
    ns = int(sc.max()) + 1
    scale = math.sqrt(len(rows) / n)
    em_sub = em_prior(ps, base, init=em)
    arg_sub = argmax[rows]
    onehot_counts = np.zeros((len(rows), k))
    onehot_counts[np.arange(len(rows)), arg_sub] = 1.0

    em_dev = np.empty((n_boot, k))
    q_dev = np.empty((n_boot, k))
    mean_dev = np.empty((n_boot, k))
    q_sub = onehot_counts.mean(axis=0)
    mean_sub = ps.mean(axis=0)
    for b in range(n_boot):
        w = rng.poisson(1.0, ns).astype(np.float64)[sc]
        if w.sum() == 0:
            w = np.ones(len(rows))
        em_dev[b] = em_prior(ps, base, weights=w, init=em_sub, tol=1e-6) - em_sub
        q_dev[b] = (w @ onehot_counts) / w.sum() - q_sub
        mean_dev[b] = (w @ ps) / w.sum() - mean_sub
    em_boot = em + scale * em_dev
    lows = np.quantile(em_boot, alpha / 2, axis=0)
    highs = np.quantile(em_boot, 1 - alpha / 2, axis=0)
    if include_unadjusted:
        # The unadjusted calibrated mean is biased toward the training mix under pure
        # label shift, but EM over-corrects when the logs themselves drift (p(x|y)
        # changes, e.g. lower ASR confidence everywhere). The truth lies between, so
        # the interval spans both: it widens exactly when the two disagree.
        mean_boot = mean_prob + scale * mean_dev
        lows = np.minimum(lows, np.quantile(mean_boot, alpha / 2, axis=0))
        highs = np.maximum(highs, np.quantile(mean_boot, 1 - alpha / 2, axis=0))
    if acc is not None and confusion is not None:
        conf = np.asarray(confusion, np.float64)
        acc_boot = np.empty((n_boot, k))
        for b in range(n_boot):
            # Dirichlet posterior of each confusion row (Jeffreys-like prior 0.5).
            m_b = np.vstack([rng.dirichlet(row + 0.5) for row in conf])
            acc_boot[b] = acc_prior(np.clip(count_rate + scale * q_dev[b], 0, None), m_b)
        lows = np.minimum(lows, np.quantile(acc_boot, alpha / 2, axis=0))
        highs = np.maximum(highs, np.quantile(acc_boot, 1 - alpha / 2, axis=0))
    # The point estimate is ACC when a confusion matrix is known: it is unbiased
    # under label shift and, unlike EM, does not amplify calibration error (EM can
    # run away to 0 or 1 with a poorly calibrated model); EM otherwise.
    point = em if acc is None else acc
    lows = np.clip(np.minimum(lows, point), 0.0, 1.0)
    highs = np.clip(np.maximum(highs, point), 0.0, 1.0)
    return RateTable(classes, n, point, lows, highs, count, count_rate, mean_prob, em, acc,
                     confidence, n_boot, "em" if acc is None else "acc")


# ---------------------------------------------------------------------------
# Slices
# ---------------------------------------------------------------------------


def slice_columns(turns: pl.DataFrame) -> pl.DataFrame:
    """The slice dimensions of a canonical frame, as strings (null -> ``(missing)``)."""
    exprs = []
    for name, (block, field) in SLICE_DIMENSIONS.items():
        if block in turns.columns:
            e = pl.col(block).struct.field(field).cast(pl.String)
        else:
            e = pl.lit(None, dtype=pl.String)
        exprs.append(e.fill_null(_MISSING).alias(name))
    return turns.select(exprs)


def _bh(pvalues: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values)."""
    m = len(pvalues)
    if m == 0:
        return pvalues
    order = np.argsort(pvalues)
    ranked = pvalues[order] * m / np.arange(1, m + 1)
    q = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.clip(q, 0, 1)
    return out


def slice_rates(
    slices: pl.DataFrame,
    probs: np.ndarray,
    rates: RateTable,
    *,
    train_prior: np.ndarray,
    confusion: np.ndarray | None = None,
    min_support: int = 50,
    alpha: float = 0.05,
    max_slices: int = 30,
    top: int = 10,
) -> dict[str, Any]:
    """Per-slice rates with intervals, and the slices carrying the most excess failures.

    Parameters
    ----------
    slices : one row per turn, one String column per dimension (:func:`slice_columns`).
    probs : (n, k) calibrated posteriors (training prior). Each supported slice
        gets its own estimate, with the overall estimator (ACC on the slice's argmax
        distribution, or EM warm-started from the overall prior): a slice whose
        failure mix differs from the night's would otherwise be shrunk toward the
        night's rates.
    rates : the overall :class:`RateTable` (its interval's model-error share is
        carried over to slices in relative terms).
    train_prior : (k,) the training prior.
    confusion : (k, k) held-out confusion counts, for ACC (``rates.estimator == "acc"``).
    min_support : slices with fewer turns are neither reported nor tested
        (tiny slices give extreme rates by chance).
    alpha : false discovery rate for the Benjamini-Hochberg correction.
    max_slices : at most this many slices per dimension, largest first.
    top : how many excess-failure slices to list.
    """
    classes = rates.classes
    n = len(probs)
    z = _z(rates.confidence)
    est = rates.estimate
    # Relative model-error share of the overall interval, beyond sampling noise.
    half = (rates.high - rates.low) / 2 / z
    samp = np.sqrt(np.clip(est * (1 - est), 0, None) / max(n, 1))
    rel_model = np.minimum(
        np.sqrt(np.clip(half**2 - samp**2, 0, None)) / np.clip(est, 1e-9, None), 1.0
    )
    keys = [*classes, "failure"]
    overall = {c: float(est[i]) for i, c in enumerate(classes)}
    overall["failure"] = float(1.0 - est[0])
    rel_model_map = {c: float(rel_model[i]) for i, c in enumerate(classes)}
    rel_model_map["failure"] = float(rel_model[0] * est[0] / max(1 - est[0], 1e-9))

    dims: dict[str, Any] = {}
    tests: list[dict[str, Any]] = []
    use_acc = rates.estimator == "acc" and confusion is not None
    pred = probs.argmax(axis=1).astype(np.int8) if use_acc else None
    k = len(classes)
    if use_acc:
        assert pred is not None and confusion is not None
        m = np.asarray(confusion, np.float64)
        m = m / np.clip(m.sum(axis=1, keepdims=True), 1e-300, None)
        minv = np.linalg.pinv(m.T)
        q_all = np.bincount(pred, minlength=k)[:k] / max(n, 1)

    def sampling_var(dist: np.ndarray | None, ests: np.ndarray, size: int) -> np.ndarray:
        """Per-class sampling variance of a slice estimate (plus ``failure``).

        ACC inverts the confusion matrix, which inflates the multinomial noise of
        the argmax counts: the variance is ``Minv Cov(q) Minv^T``, not ``p(1-p)/n``
        (using the latter would flag slices by chance).
        """
        if use_acc and dist is not None:
            cov = (np.diag(dist) - np.outer(dist, dist)) / max(size, 1)
            v = np.clip(np.diag(minv @ cov @ minv.T), 0, None)
        else:
            v = np.clip(ests * (1 - ests), 0, None) / max(size, 1)
        return np.append(v, v[0])  # failure = 1 - correct
    indexed = slices.with_row_index("_row")
    for dim in slices.columns:
        g = (
            indexed.group_by(dim)
            .agg(pl.len().alias("turns"), pl.col("_row"))
            .with_columns(pl.col(dim).cast(pl.String))  # lexical ties, whatever the dtype
            .sort(["turns", dim], descending=[True, False])
        )
        supported = g.filter(pl.col("turns") >= min_support)
        small = g.filter(pl.col("turns") < min_support)
        rows_out = []
        for value, nt, idx in supported.select(dim, "turns", "_row").iter_rows():
            rows_idx = np.asarray(idx)
            dist = rest_dist = None
            if use_acc:
                assert pred is not None and confusion is not None
                dist = np.bincount(pred[rows_idx], minlength=k)[:k] / len(rows_idx)
                rest_dist = np.clip((q_all * n - dist * nt) / max(n - nt, 1), 0, None)
                sl = acc_prior(dist, confusion)
            else:
                sl = em_prior(probs, train_prior, rows=rows_idx, init=est, tol=1e-6)
            srates = {c: float(sl[i]) for i, c in enumerate(classes)}
            srates["failure"] = float(1.0 - sl[0])
            var_s = sampling_var(dist, sl, nt)
            var_rest = sampling_var(rest_dist, est, n - nt)
            entry: dict[str, Any] = {"value": value, "turns": int(nt), "rates": {}}
            for j, c in enumerate(keys):
                ps = srates[c]
                se = math.sqrt(var_s[j] + (rel_model_map[c] * ps) ** 2)
                entry["rates"][c] = {"estimate": _r(ps), "low": _r(max(ps - z * se, 0)),
                                     "high": _r(min(ps + z * se, 1))}
                rest_n = n - nt
                if c == "correct" or rest_n <= 0:
                    continue
                rest_p = min(max((overall[c] * n - ps * nt) / rest_n, 0.0), 1.0)
                sd = math.sqrt(max(var_s[j] + var_rest[j], 1e-12))
                pval = 0.5 * math.erfc((ps - rest_p) / sd / math.sqrt(2))
                tests.append({
                    "dimension": dim, "value": value, "class": c, "turns": int(nt),
                    "rate": _r(ps), "rest_rate": _r(rest_p), "overall_rate": _r(overall[c]),
                    "excess_failures": stable_round(nt * (ps - overall[c]), 2),
                    "p_value": pval,
                })
            rows_out.append(entry)
        dims[dim] = {
            "slices": rows_out[:max_slices],
            "omitted": {
                "small": {"slices": small.height, "turns": int(small["turns"].sum() or 0)},
                "beyond_max": max(0, len(rows_out) - max_slices),
            },
        }
    qvals = _bh(np.array([t["p_value"] for t in tests]))
    for t, q in zip(tests, qvals, strict=True):
        t["p_value"] = float(f"{t['p_value']:.4g}")
        t["q_value"] = float(f"{q:.4g}")
        t["significant"] = bool(q <= alpha and t["excess_failures"] > 0)
    flagged = sorted(
        (t for t in tests if t["significant"] and t["class"] != "failure"),
        key=lambda t: (-t["excess_failures"], t["dimension"], str(t["value"]), t["class"]),
    )
    return {
        "min_support": min_support,
        "correction": "benjamini-hochberg",
        "alpha": alpha,
        "tests": len(tests),
        "dimensions": dims,
        "top": flagged[:top],
    }


# ---------------------------------------------------------------------------
# Baseline comparison
# ---------------------------------------------------------------------------


def compare_rates(
    current: Mapping[str, Mapping[str, Any]],
    baseline: Mapping[str, Mapping[str, Any]],
    *,
    confidence: float = 0.95,
) -> dict[str, dict[str, Any]]:
    """Change per class between two ``rates`` dicts, with an interval.

    Each night's interval is turned into a standard error (half-width / z) and
    the two are combined as independent, which is conservative: both nights
    share the model, so part of its error cancels in the difference.
    """
    z = _z(confidence)
    out: dict[str, dict[str, Any]] = {}
    for c in CLASSES:
        if c not in current or c not in baseline:
            continue
        cur, base = current[c], baseline[c]
        d = float(cur["estimate"]) - float(base["estimate"])
        se_c = (float(cur["high"]) - float(cur["low"])) / 2 / z
        se_b = (float(base["high"]) - float(base["low"])) / 2 / z
        se = math.sqrt(se_c**2 + se_b**2)
        lo, hi = d - z * se, d + z * se
        out[c] = {
            "baseline": _r(base["estimate"]),
            "current": _r(cur["estimate"]),
            "change": _r(d),
            "low": _r(lo),
            "high": _r(hi),
            "relative": None if float(base["estimate"]) == 0 else _r(d / float(base["estimate"])),
            "significant": bool(lo > 0 or hi < 0),
        }
    return out
