"""Per-class failure rates that hold when a night differs from the training data.

No estimator without labels is unbiased under every shift. The headline of a bundle
with per-stratum matrices is ``spacc`` (:class:`Strata`): PACC with one held-out soft
confusion matrix per bin of the ASR confidence. New speakers or devices change what a
confidence means (conditional shift); within a bin of it the rest of each class's logs
look as before, so there the night differs by its class mix, which PACC corrects. Its
interval is the union of its own (session bootstrap, every stratum's rows redrawn) and
PCC's. A bundle without strata gets ``blend``, which hedges between the two estimators
unbiased under the two shifts nights typically show:

* **PCC** (probabilistic classify-and-count): the mean calibrated probability.
  Unbiased under *covariate shift* (other turns arrive, ``P(class | logs)``
  unchanged: outages, another device mix); pulled toward the training rates under
  a pure class-mix change.
* **PACC** (probabilistic adjusted classify-and-count): the mean probability ``m``
  solved against the held-out *soft confusion matrix* ``S`` (mean calibrated
  probabilities per true class): ``m = S^T pi``. Unbiased under *label shift*
  (``P(logs | class)`` unchanged); when the logs of a class drift (new voices: a
  confidence means something else: *conditional shift*) it amplifies the drift
  by ``S^-1`` and overshoots. PCC is PACC with ``S`` re-estimated on the night's
  own probabilities: the two differ only in which confusion matrix they trust.

``blend = w PCC + (1 - w) PACC`` with one weight ``w = var(PACC) / (var(PCC) +
var(PACC))`` from the session bootstrap (PACC's variance includes the held-out
matrix's noise, each row redrawn from a Dirichlet posterior, and grows with the
same ``S^-1`` amplification that turns a drift into bias), clamped to
[1/4, 3/4] so neither shift model is trusted more than 3:1. The interval is the
union of PCC's, PACC's and the blend's percentile intervals: it spans both
assumptions and widens when they disagree. ``benchmarks/bench_rates.py``
measures all of them on simulated nights (docs/reports.md has the table).
Beside it: CC (argmax count), ACC (Forman's adjusted count; BBSE), and EM prior
adjustment (Saerens, Latinne & Decaestecker, 2002), the point estimate for a
model without any confusion matrix. A bundle without ``soft_confusion`` gets the
same blend of CC and ACC (``blend_counts``).

Everything but EM is a function of per-session sums (:class:`SessionSums`:
turns, argmax counts, summed probabilities; for ``spacc`` also the summed corrected
probabilities and the probability sums per stratum), so partitions of a night that
keep sessions whole merge by adding, point estimate and bootstrap alike.

Each slice with enough turns gets its own estimate (the night's estimator and
weight on the slice's means); slice tests are one-sided tests against the rest
of the night, with the estimator's own sampling variance (the delta method
through ``w I + (1 - w) S^-T``), corrected for multiple comparisons with
Benjamini-Hochberg.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import polars as pl

from fpi.metrics import stratum_codes
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


def z_value(confidence: float) -> float:
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


#: Estimators :func:`estimate_rates` can use for the point estimate.
METHODS: tuple[str, ...] = ("blend", "cc", "pcc", "acc", "pacc", "em", "spacc")


@dataclass(frozen=True)
class RateTable:
    """Per-class rate estimates of one night.

    ``estimate``/``low``/``high`` are the chosen estimator's, (k,) arrays in class
    order; beside them every other estimator's point, for transparency:
    ``count_rate`` (CC), ``mean_probability`` (PCC), ``acc``, ``pacc``, ``em``;
    ``count`` the argmax counts. ``estimator`` names the method of ``estimate``.
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
    estimator: str = "acc"
    pacc: np.ndarray | None = None
    #: for ``blend``: each class's weight of the unadjusted estimator (PCC, or CC)
    weight: np.ndarray | None = None
    #: PACC with one soft confusion matrix per stratum (:class:`Strata`), when the
    #: bundle has them
    spacc: np.ndarray | None = None

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """``{class: {estimate, low, high, count, count_rate, mean_probability, em, acc,
        pacc, spacc}}``."""
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
                "pacc": None if self.pacc is None else _r(self.pacc[i]),
                "spacc": None if self.spacc is None else _r(self.spacc[i]),
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


@dataclass(frozen=True)
class SessionSums:
    """Per-session sufficient statistics of a night: the estimators are functions of sums.

    ``turns`` (s,), ``counts`` (s, k) argmax counts, ``probs`` (s, k) summed calibrated
    probabilities. Sums over disjoint partitions add, so a night split across
    workers merges exactly (concatenate the session rows; a session must not span
    partitions, or its rows are summed first).
    """

    turns: np.ndarray
    counts: np.ndarray
    probs: np.ndarray

    @classmethod
    def of(cls, probs: np.ndarray, codes: np.ndarray) -> SessionSums:
        """Sums of ``probs`` rows grouped by session code (0..s-1)."""
        n, k = probs.shape
        s = int(codes.max()) + 1 if n else 0
        arg = probs.argmax(axis=1) if n else np.zeros(0, np.int64)
        counts = np.bincount(codes * k + arg, minlength=s * k).reshape(s, k).astype(np.float64)
        psum = np.column_stack([np.bincount(codes, weights=probs[:, j], minlength=s)
                                for j in range(k)]) if n else np.zeros((0, k))
        return cls(np.bincount(codes, minlength=s).astype(np.float64), counts, psum)

    def replicates(self, rng: np.random.Generator, n_boot: int,
                   extra: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        """Poisson(1) session-bootstrap replicates of the (CC, PCC) rates, (b, k) each, and
        with ``extra`` (s, k) per-session sums, the same replicates' means of it."""
        w = rng.poisson(1.0, (n_boot, len(self.turns))).astype(np.float64)
        w[w.sum(axis=1) == 0] = 1.0  # a replicate that drew no session: the night itself
        tot = np.clip(w @ self.turns, 1e-12, None)[:, None]
        out = (w @ self.counts) / tot, (w @ self.probs) / tot
        return out if extra is None else (*out, (w @ extra) / tot)


def _row_dirichlet(rng: np.random.Generator, matrix: np.ndarray, counts: np.ndarray,
                   n_boot: int) -> np.ndarray:
    """(b, k, k) draws of a row-normalised matrix, rows ~ Dirichlet(count * row + 0.5)."""
    m = matrix / np.clip(matrix.sum(axis=1, keepdims=True), 1e-300, None)
    alpha = m * counts[:, None] + 0.5
    g = rng.standard_gamma(np.broadcast_to(alpha, (n_boot, *alpha.shape)))
    return g / g.sum(axis=2, keepdims=True)


#: Pseudo-turns of the overall soft-confusion row each stratum's row is shrunk toward
#: (a stratum with few turns of a class borrows that class's overall row).
STRATA_PRIOR = 10.0


@dataclass(frozen=True)
class Strata:
    """One held-out soft confusion matrix per stratum of the ASR confidence (the
    manifest's ``heldout.soft_confusion_strata``; :func:`fpi.metrics.stratified_soft_confusion`).

    A new speaker population changes what a confidence means (conditional shift); within
    a bin of the confidence the rest of a class's logs look as before, so there the shift
    is a change of the class mix, which PACC corrects. ``spacc`` corrects each turn's
    probabilities with its stratum's matrix: ``q = S_j^-T p``. Rows of ``S_j`` sum to 1, so
    ``q`` sums to 1 and the estimate, the mean of ``q``, is linear in the turns: sums over
    partitions merge it, and its session bootstrap is PCC's on ``q``.
    """

    edges: np.ndarray  # (B - 1,) inner bin edges of the confidence
    sums: np.ndarray  # (B + 1, k, k) stratum 0: no confidence logged
    overall: np.ndarray  # (k, k) the overall soft confusion sums

    @classmethod
    def of(cls, block: Mapping[str, Any] | None, overall: np.ndarray | None) -> Strata | None:
        """From the manifest block (``None`` for a bundle without it)."""
        if not block or overall is None:
            return None
        return cls(np.asarray(block["edges"], np.float64),
                   np.asarray(block["soft_confusion"], np.float64),
                   np.asarray(overall, np.float64))

    @classmethod
    def of_manifest(cls, manifest: Mapping[str, Any]) -> Strata | None:
        """A bundle manifest's strata (``None`` for a bundle trained before them)."""
        heldout = manifest.get("heldout") or {}
        return cls.of(heldout.get("soft_confusion_strata"), heldout.get("soft_confusion"))

    def codes(self, values: np.ndarray) -> np.ndarray:
        """Each turn's stratum from its ASR confidence (NaN: not logged)."""
        return stratum_codes(values, self.edges)

    def row_counts(self) -> np.ndarray:
        """(B + 1, k) held-out turns per stratum and true class, plus the prior's."""
        return self.sums.sum(axis=2) + STRATA_PRIOR

    def matrices(self) -> np.ndarray:
        """(B + 1, k, k) row-normalised matrices, each row shrunk toward the overall one."""
        s = self.overall / np.clip(self.overall.sum(axis=1, keepdims=True), 1e-300, None)
        return (self.sums + STRATA_PRIOR * s) / self.row_counts()[:, :, None]

    def adjusted(self, probs: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """(n, k) each turn's probabilities corrected by its stratum's matrix."""
        corr = _corrections(self.matrices())
        out = np.zeros_like(np.asarray(probs, np.float64))
        for j in range(len(corr)):
            sel = codes == j
            out[sel] = probs[sel] @ corr[j].T
        return out

    def replicates(self, rng: np.random.Generator, n_boot: int, stratum_probs: np.ndarray,
                   turns: int) -> np.ndarray:
        """(b, k) deviations of ``spacc`` when each matrix's rows are redrawn from their
        Dirichlet posterior, given the night's probability sums per stratum (B + 1, k)."""
        m = self.matrices()
        alpha = m * self.row_counts()[:, :, None] + 0.5
        g = rng.standard_gamma(np.broadcast_to(alpha, (n_boot, *alpha.shape)))
        draws = _corrections(g / g.sum(axis=3, keepdims=True))  # (b, B + 1, k, k)
        base = _corrections(m)
        return np.einsum("bsij,sj->bi", draws - base[None], stratum_probs) / max(turns, 1)


def _corrections(matrices: np.ndarray) -> np.ndarray:
    """``S^-T`` of each (..., k, k) row-normalised matrix (pseudo-inverse if singular)."""
    return np.linalg.pinv(np.swapaxes(matrices, -1, -2))


def _simplex(x: np.ndarray) -> np.ndarray:
    """Clip at 0 and renormalise each row (as :func:`acc_prior` projects its solution)."""
    c = np.clip(x, 0.0, None)
    tot = c.sum(axis=-1, keepdims=True)
    return np.where(tot > 0, c / np.where(tot > 0, tot, 1.0), 1.0 / x.shape[-1])


def stratum_sums(probs: np.ndarray, codes: np.ndarray, strata: int) -> np.ndarray:
    """(strata, k) sums of ``probs`` per stratum code."""
    p = np.asarray(probs, np.float64)
    return np.stack([np.bincount(codes, p[:, j], minlength=strata)
                     for j in range(p.shape[1])], 1)


def _spacc(strata: Strata, stratum_probs: np.ndarray, turns: int, sampling: np.ndarray,
           seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``spacc``'s point and (b, k) replicates: the mean corrected probability, plus the
    session bootstrap's deviations of it (``sampling``) and the deviations from redrawn
    stratum matrices (their own generator, so the other estimators' draws do not move)."""
    raw = np.einsum("sij,sj->i", _corrections(strata.matrices()), stratum_probs) / max(turns, 1)
    rng = np.random.default_rng([seed, 13])
    reps = raw + sampling + strata.replicates(rng, len(sampling), stratum_probs, turns)
    return _simplex(raw), _simplex(reps)


def _points(turns: int, count_rate: np.ndarray, mean_prob: np.ndarray, em: np.ndarray,
            conf: np.ndarray | None, soft: np.ndarray | None) -> dict[str, np.ndarray | None]:
    """The point estimates every rate table has, from the night's argmax rate, mean
    probability and EM prior (ACC and PACC ``None`` without their matrix or turns)."""
    acc = acc_prior(count_rate, conf) if conf is not None and turns else None
    pacc = acc_prior(mean_prob, soft) if soft is not None and turns else None
    return {"cc": count_rate, "pcc": mean_prob, "acc": acc, "pacc": pacc, "em": em}


def estimate_rates(
    probs: np.ndarray,
    *,
    train_prior: np.ndarray,
    confusion: np.ndarray | None = None,
    soft_confusion: np.ndarray | None = None,
    groups: np.ndarray | Sequence[Any] | None = None,
    confidence: float = 0.95,
    n_boot: int = 200,
    max_boot_rows: int = 20_000,
    seed: int = 0,
    classes: tuple[str, ...] = CLASSES,
    method: str = "auto",
    strata: Strata | None = None,
    strata_values: np.ndarray | None = None,
) -> RateTable:
    """Estimate each class's rate in a night, with an interval.

    Parameters
    ----------
    probs : (n, k) calibrated probabilities (training prior).
    train_prior : (k,) training class prior (manifest ``training.class_prior``).
    confusion : (k, k) held-out confusion counts (rows true, columns predicted),
        or ``None`` (ACC is then not computed).
    soft_confusion : (k, k) held-out sums of calibrated probabilities per true class
        (:func:`fpi.model.soft_confusion`), or ``None`` (PACC is then not computed).
    groups : (n,) session ids: the bootstrap resamples whole sessions.
    confidence : interval level.
    n_boot : bootstrap replicates.
    max_boot_rows : above this many turns, the bootstrap runs on a random subset
        of sessions and its deviations are scaled by ``sqrt(subset / n)``
        (standard errors of a mean shrink as ``1/sqrt(n)``), so its cost is flat.
    seed : bootstrap seed: same inputs and seed give the same interval.
    method : the point estimator, one of :data:`METHODS`, or ``auto`` (the headline:
        see the module docstring).
    strata, strata_values : the bundle's per-stratum matrices (:class:`Strata`) and each
        turn's ASR confidence (NaN: not logged); ``spacc`` needs both.
    """
    p = np.asarray(probs, np.float64)
    n, k = p.shape
    base = np.asarray(train_prior, np.float64)
    conf = None if confusion is None else np.asarray(confusion, np.float64)
    soft = None if soft_confusion is None else np.asarray(soft_confusion, np.float64)
    use_strata = strata is not None and strata_values is not None
    method, pair = _resolve_method(method, conf, soft, use_strata)
    codes = _session_codes(groups, n)
    sums = SessionSums.of(p, codes)
    count = sums.counts.sum(axis=0).astype(np.int64)
    count_rate = count / max(n, 1)
    mean_prob = sums.probs.sum(axis=0) / max(n, 1)
    em = em_prior(p, base)
    points = _points(n, count_rate, mean_prob, em, conf, soft)
    acc, pacc = points["acc"], points["pacc"]
    if n == 0:
        return RateTable(classes, 0, em, np.zeros(k), np.ones(k), count, count_rate, mean_prob,
                         em, acc, confidence, 0, method, pacc)

    rng = np.random.default_rng(seed)
    rows, scale = _boot_rows(rng, codes, n, max_boot_rows)
    sub = sums if rows is None else SessionSums.of(p[rows], _dense(codes[rows]))
    adj = None
    if use_strata:
        assert strata is not None and strata_values is not None
        st = strata.codes(np.asarray(strata_values))
        q = strata.adjusted(p, st)
        adj = SessionSums.of(q if rows is None else q[rows], _sub_codes(codes, rows)).probs
    q_b, m_b, *a_b = sub.replicates(rng, n_boot, adj)
    devs = {"cc": scale * (q_b - sub.counts.sum(axis=0) / sub.turns.sum()),
            "pcc": scale * (m_b - sub.probs.sum(axis=0) / sub.turns.sum())}
    if use_strata and adj is not None:
        assert strata is not None
        points["spacc"], devs["spacc"] = _spacc(
            strata, stratum_sums(p, st, len(strata.sums)), n,
            scale * (a_b[0] - adj.sum(axis=0) / sub.turns.sum()), seed)

    em_boot = partial(_em_replicates, p, base, codes, rows, rng, n_boot)
    weight, point, lows, highs = _interval(method, pair, points, devs, rng, conf, soft,
                                           em_boot, 1.0 - confidence)
    if method == "blend" and pair == ("cc", "acc"):
        method = "blend_counts"  # a bundle without a soft confusion matrix
    return RateTable(classes, n, point, lows, highs, count, count_rate, mean_prob, em, acc,
                     confidence, n_boot, method, pacc, weight, points.get("spacc"))


def _em_replicates(p: np.ndarray, base: np.ndarray, codes: np.ndarray, rows: np.ndarray | None,
                   rng: np.random.Generator, n_boot: int, point: np.ndarray) -> np.ndarray:
    """(b, k) EM replicates around ``point``: EM re-run on Poisson-weighted sessions (the
    costly one) of the bootstrap subset ``rows`` (None: every turn), deviations scaled
    by ``sqrt(subset / n)``."""
    n, k = p.shape
    sel = np.arange(n) if rows is None else rows
    sc = _dense(codes[sel])
    em_scale = math.sqrt(len(sel) / n)
    ps = p[sel]
    em_sub = em_prior(ps, base, init=point)
    out = np.empty((n_boot, k))
    for b in range(n_boot):
        w = rng.poisson(1.0, int(sc.max()) + 1).astype(np.float64)[sc]
        if w.sum() == 0:
            w = np.ones(len(sel))
        out[b] = point + em_scale * (
            em_prior(ps, base, weights=w, init=em_sub, tol=1e-6) - em_sub)
    return out


def _sub_codes(codes: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
    """Session codes of the bootstrap's rows (all, or a subset made dense)."""
    return codes if rows is None else _dense(codes[rows])


def _resolve_method(method: str, conf: np.ndarray | None, soft: np.ndarray | None,
                    strata: bool = False) -> tuple[str, tuple[str, str] | None]:
    """The estimator to use (``auto``: ``spacc`` with strata, else the blend; EM when a
    matrix is missing) and, for the blend, its (unadjusted, adjusted) pair."""
    if method == "auto":
        method = "spacc" if strata else HEADLINE
    if method == "spacc" and not strata:
        method = HEADLINE
    if method not in METHODS:
        raise ValueError(f"unknown rate estimator {method!r}; known: {', '.join(METHODS)}")
    pair: tuple[str, str] | None = None
    if method == "blend":
        pair = ("pcc", "pacc") if soft is not None else ("cc", "acc") if conf is not None else None
    if ((method == "acc" and conf is None) or (method == "pacc" and soft is None)
            or (method == "blend" and pair is None)):
        method = "em"
    return method, pair


def _interval(method: str, pair: tuple[str, str] | None,
              points: Mapping[str, np.ndarray | None], devs: Mapping[str, np.ndarray],
              rng: np.random.Generator, conf: np.ndarray | None, soft: np.ndarray | None,
              em_boot: Callable[[np.ndarray], np.ndarray], alpha: float
              ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray, np.ndarray]:
    """The blend weight (or None), point and percentile interval of ``method``."""
    weight = None
    if method == "blend" and pair is not None:
        un, adj = pair
        un_p, adj_p = points[un], points[adj]
        assert un_p is not None and adj_p is not None
        weight, point, lows, highs = _blend(
            un_p, adj_p, _replicates(un, points, rng, devs, conf, soft, em_boot),
            _replicates(adj, points, rng, devs, conf, soft, em_boot), alpha)
    else:
        point_m = points[method]
        assert point_m is not None
        point = point_m
        boot = _replicates(method, points, rng, devs, conf, soft, em_boot)
        reps = [boot]
        if method == "spacc":  # spans PCC's too: the night may be a covariate shift
            reps.append(_replicates("pcc", points, rng, devs, conf, soft, em_boot))
        lows = np.minimum.reduce([np.quantile(x, alpha / 2, axis=0) for x in reps])
        highs = np.maximum.reduce([np.quantile(x, 1 - alpha / 2, axis=0) for x in reps])
    lows = np.clip(np.minimum(lows, point), 0.0, 1.0)
    highs = np.clip(np.maximum(highs, point), 0.0, 1.0)
    return weight, point, lows, highs


def rates_from_sums(
    *,
    turns: int,
    counts: np.ndarray,
    prob_sums: np.ndarray,
    boot_turns: np.ndarray,
    boot_counts: np.ndarray,
    boot_probs: np.ndarray,
    em: np.ndarray,
    confusion: np.ndarray | None = None,
    soft_confusion: np.ndarray | None = None,
    em_replicates: Callable[[np.ndarray], np.ndarray] | None = None,
    confidence: float = 0.95,
    seed: int = 0,
    classes: tuple[str, ...] = CLASSES,
    method: str = "auto",
    strata: Strata | None = None,
    stratum_probs: np.ndarray | None = None,
    boot_adjusted: np.ndarray | None = None,
) -> RateTable:
    """:func:`estimate_rates` from sums merged over partitions of whole sessions.

    ``counts``/``prob_sums`` (k,) the night's argmax counts and probability sums;
    ``boot_*`` the session bootstrap's per-replicate Poisson-weighted turns (b,), counts
    and probability sums (b, k); ``em`` the night's EM prior; ``em_replicates(init)``
    the (b, k) EM priors of the replicates (only called when EM is the estimator).
    ``seed`` drives the Dirichlet redraws of the held-out matrices. ``spacc`` needs
    ``strata``, the night's probability sums per stratum ``stratum_probs`` (B + 1, k) and
    the replicates' Poisson-weighted sums of the corrected probabilities ``boot_adjusted``
    (b, k) (:meth:`Strata.adjusted`).
    """
    conf = None if confusion is None else np.asarray(confusion, np.float64)
    soft = None if soft_confusion is None else np.asarray(soft_confusion, np.float64)
    use_strata = strata is not None and stratum_probs is not None and boot_adjusted is not None
    method, pair = _resolve_method(method, conf, soft, use_strata)
    n, k, n_boot = turns, len(classes), len(boot_turns)
    count = np.asarray(counts).astype(np.int64)
    count_rate = count / max(n, 1)
    mean_prob = np.asarray(prob_sums, np.float64) / max(n, 1)
    points = _points(n, count_rate, mean_prob, em, conf, soft)
    acc, pacc = points["acc"], points["pacc"]
    if n == 0:
        return RateTable(classes, 0, em, np.zeros(k), np.ones(k), count, count_rate, mean_prob,
                         em, acc, confidence, 0, method, pacc)
    tot = np.clip(np.asarray(boot_turns, np.float64), 1e-12, None)[:, None]
    empty = np.asarray(boot_turns) <= 0  # a replicate that drew no session: the night
    q_b = np.where(empty[:, None], count_rate, np.asarray(boot_counts) / tot)
    m_b = np.where(empty[:, None], mean_prob, np.asarray(boot_probs) / tot)
    devs = {"cc": q_b - count_rate, "pcc": m_b - mean_prob}
    if use_strata:
        assert strata is not None and stratum_probs is not None and boot_adjusted is not None
        sp = np.asarray(stratum_probs, np.float64)
        adj_mean = np.einsum("sij,sj->i", _corrections(strata.matrices()), sp) / n
        a_b = np.where(empty[:, None], adj_mean, np.asarray(boot_adjusted) / tot)
        points["spacc"], devs["spacc"] = _spacc(strata, sp, n, a_b - adj_mean, seed)

    def em_boot(point: np.ndarray) -> np.ndarray:
        if em_replicates is None:
            raise ValueError("the EM estimator's interval needs em_replicates")
        return point + (em_replicates(point) - em)

    weight, point, lows, highs = _interval(method, pair, points, devs,
                                           np.random.default_rng(seed), conf, soft, em_boot,
                                           1.0 - confidence)
    if method == "blend" and pair == ("cc", "acc"):
        method = "blend_counts"
    return RateTable(classes, n, point, lows, highs, count, count_rate, mean_prob, em, acc,
                     confidence, n_boot, method, pacc, weight, points.get("spacc"))


def _blend(un: np.ndarray, adj: np.ndarray, b_un: np.ndarray, b_adj: np.ndarray,
           alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Weight, point and interval of the blend of an unadjusted and an adjusted estimate.

    One weight (so the rates still sum to 1): the correction is trusted in
    proportion to its precision, from the replicates' variances summed over the
    classes (they include the held-out matrix's own noise), clamped to
    :data:`WEIGHT_BOUNDS` so neither shift model is trusted more than 3:1 and the
    bias is at most 3/4 of the gap whichever holds (precision says nothing about
    bias: a weak model's correction is noisy *and* needed). The interval spans
    both estimators' and the blend's: the truth lies between a covariate shift
    (no correction) and a label shift (full correction), and it widens when they
    disagree.
    """
    v_un, v_adj = float(b_un.var(axis=0).sum()), float(b_adj.var(axis=0).sum())
    w_un = v_adj / (v_un + v_adj) if v_un + v_adj > 0 else 0.5
    weight = np.full(len(un), min(max(w_un, WEIGHT_BOUNDS[0]), WEIGHT_BOUNDS[1]))
    boot = weight * b_un + (1 - weight) * b_adj
    reps = (b_un, b_adj, boot)
    lows = np.minimum.reduce([np.quantile(x, alpha / 2, axis=0) for x in reps])
    highs = np.maximum.reduce([np.quantile(x, 1 - alpha / 2, axis=0) for x in reps])
    return weight, weight * un + (1 - weight) * adj, lows, highs


def _dense(codes: np.ndarray) -> np.ndarray:
    return np.unique(codes, return_inverse=True)[1].reshape(-1)


def _boot_rows(rng: np.random.Generator, codes: np.ndarray, n: int,
               max_rows: int) -> tuple[np.ndarray | None, float]:
    """Rows of a random subset of sessions when ``n > max_rows`` (None: all), and the
    factor ``sqrt(subset / n)`` that scales the subset's bootstrap deviations."""
    if n <= max_rows:
        return None, 1.0
    keep = rng.random(int(codes.max()) + 1) < max_rows / n
    rows = np.flatnonzero(keep[codes])
    if len(rows) == 0:
        rows = np.arange(min(n, max_rows))
    return rows, math.sqrt(len(rows) / n)


def _replicates(method: str, points: Mapping[str, np.ndarray | None],
                rng: np.random.Generator, devs: Mapping[str, np.ndarray],
                conf: np.ndarray | None, soft: np.ndarray | None,
                em_boot: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """(b, k) session-bootstrap replicates of one estimator.

    ``devs`` holds the replicates' deviations of the argmax distribution (``cc``)
    and of the mean probability (``pcc``) from the night's. ACC and PACC redraw
    their held-out matrix's rows from a Dirichlet posterior in every replicate;
    ``em_boot(point)`` gives EM's replicates.
    """
    n_boot = len(devs["cc"])
    point = points[method]
    assert point is not None
    if method == "spacc":  # made whole by the caller (they need the strata)
        return devs["spacc"]
    if method in ("cc", "pcc"):
        return point + devs[method]
    if method in ("acc", "pacc"):
        mat = conf if method == "acc" else soft
        dist = points["cc" if method == "acc" else "pcc"]
        assert mat is not None and dist is not None
        dev = devs["cc" if method == "acc" else "pcc"]
        draws = _row_dirichlet(rng, mat, mat.sum(axis=1), n_boot)
        return np.stack([acc_prior(np.clip(dist + dev[b], 0, None), draws[b])
                         for b in range(n_boot)])
    return em_boot(point)


#: Bounds of the blend's weight of the unadjusted estimator.
WEIGHT_BOUNDS: tuple[float, float] = (0.25, 0.75)

#: The headline estimator (``method="auto"``).
HEADLINE = "blend"

#: Long names of the estimators, for the summary's ``method`` block.
ESTIMATOR_NAMES: dict[str, str] = {
    "blend": "precision-weighted-blend-of-pcc-and-pacc",
    "blend_counts": "precision-weighted-blend-of-cc-and-acc",
    "cc": "classify-and-count",
    "pcc": "probabilistic-classify-and-count",
    "acc": "adjusted-classify-and-count",
    "pacc": "probabilistic-adjusted-classify-and-count",
    "em": "em-prior-adjustment",
    "spacc": "pacc-per-asr-confidence-stratum",
}

#: How each estimator's interval is made.
INTERVAL_NAMES: dict[str, str] = {
    "blend": "union of the session-bootstrap percentiles of PCC, PACC (Dirichlet-redrawn "
             "soft-confusion rows) and their blend",
    "blend_counts": "union of the session-bootstrap percentiles of CC, ACC (Dirichlet-redrawn "
                    "confusion rows) and their blend",
    "cc": "session-bootstrap percentiles",
    "pcc": "session-bootstrap percentiles",
    "acc": "session-bootstrap percentiles with Dirichlet-redrawn confusion rows",
    "pacc": "session-bootstrap percentiles with Dirichlet-redrawn soft-confusion rows",
    "em": "session-bootstrap percentiles",
    "spacc": "union of the session-bootstrap percentiles of PCC and of the stratified PACC "
             "(Dirichlet-redrawn soft-confusion rows of every stratum)",
}


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


def benjamini_hochberg(pvalues: np.ndarray) -> np.ndarray:
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


@dataclass(frozen=True)
class _SliceEstimator:
    """The overall estimator, linearised, applied to any subset of the night's turns.

    A slice's estimate is ``weight * d + (1 - weight) * acc_prior(d, matrix)`` where
    ``d`` is the slice's mean of ``rows`` (calibrated probabilities, or one-hot
    argmax for the count-based estimators); its sampling variance is the delta
    method through ``b = diag(weight) + diag(1 - weight) M^-T``: ``b Cov(d) b^T``
    (an adjusted estimator inflates the noise of ``d``; ``p(1-p)/n`` would flag
    slices by chance). Everything is a function of per-slice sums of ``rows`` and
    of ``rows^T rows`` (:class:`SliceSums`), so slices of partitions merge by adding.
    """

    matrix: np.ndarray | None
    weight: np.ndarray
    b: np.ndarray
    #: rows are calibrated probabilities (else one-hot argmax)
    probabilistic: bool = True

    @classmethod
    def of(cls, rates: RateTable, confusion: np.ndarray | None,
           soft_confusion: np.ndarray | None) -> _SliceEstimator | None:
        """``None`` for EM (no linear form; slices then re-run EM). ``spacc`` is PCC of
        the corrected probabilities (:meth:`Strata.adjusted`), summed in the slices."""
        k = len(rates.classes)
        est = "pcc" if rates.estimator == "spacc" else rates.estimator
        probabilistic = est in ("blend", "pcc", "pacc")
        if est == "em" or (est in ("acc", "blend_counts") and confusion is None) or (
                est in ("pacc", "blend") and soft_confusion is None):
            return None
        weight = (np.ones(k) if est in ("cc", "pcc") else np.zeros(k) if est in ("acc", "pacc")
                  else np.asarray(rates.weight, np.float64))
        matrix = soft_confusion if probabilistic else confusion
        if est in ("cc", "pcc"):
            return cls(None, weight, np.eye(k), probabilistic)
        assert matrix is not None
        m = np.asarray(matrix, np.float64)
        m = m / np.clip(m.sum(axis=1, keepdims=True), 1e-300, None)
        b = np.diag(weight) + np.diag(1 - weight) @ np.linalg.pinv(m.T)
        return cls(m, weight, b, probabilistic)

    def estimate(self, d: np.ndarray) -> np.ndarray:
        if self.matrix is None:
            return d
        return self.weight * d + (1 - self.weight) * acc_prior(d, self.matrix)

    def variance(self, d: np.ndarray, second: np.ndarray, size: int) -> np.ndarray:
        """Sampling variance of the estimate from a mean ``d`` and mean outer product."""
        cov = (second - np.outer(d, d)) / max(size, 1)
        return np.clip(np.diag(self.b @ cov @ self.b.T), 0, None)


@dataclass(frozen=True)
class _SliceContext:
    """What every slice of a night is estimated and tested against."""

    rates: RateTable
    n: int
    z: float
    #: the overall rates and their relative model-error share, per class and ``failure``
    overall: dict[str, float]
    rel_model: dict[str, float]
    lin: _SliceEstimator | None
    #: sums over the night of the linear estimator's rows and of their outer products
    d_all: np.ndarray | None
    s_all: np.ndarray | None

    @classmethod
    def of(cls, rates: RateTable, lin: _SliceEstimator | None, turns: int,
           totals: tuple[np.ndarray, np.ndarray] | None) -> _SliceContext:
        """From the night's ``turns`` and the ``totals`` (sum of rows, sum of outer
        products) of the linear estimator ``lin``."""
        classes = rates.classes
        n = turns
        z = z_value(rates.confidence)
        est = rates.estimate
        # Relative model-error share of the overall interval, beyond sampling noise.
        half = (rates.high - rates.low) / 2 / z
        samp = np.sqrt(np.clip(est * (1 - est), 0, None) / max(n, 1))
        rel_model = np.minimum(
            np.sqrt(np.clip(half**2 - samp**2, 0, None)) / np.clip(est, 1e-9, None), 1.0
        )
        overall = {c: float(est[i]) for i, c in enumerate(classes)}
        overall["failure"] = float(1.0 - est[0])
        rel_model_map = {c: float(rel_model[i]) for i, c in enumerate(classes)}
        rel_model_map["failure"] = float(rel_model[0] * est[0] / max(1 - est[0], 1e-9))
        d_all, s_all = (None, None) if lin is None or totals is None else totals
        return cls(rates, n, z, overall, rel_model_map, lin, d_all, s_all)

    def sampling_var(self, d: np.ndarray | None, second: np.ndarray | None, ests: np.ndarray,
                     size: int) -> np.ndarray:
        """Per-class sampling variance of a slice estimate (plus ``failure``)."""
        if self.lin is not None and d is not None and second is not None:
            v = self.lin.variance(d, second, size)
        else:
            v = np.clip(ests * (1 - ests), 0, None) / max(size, 1)
        return np.append(v, v[0])  # failure = 1 - correct

    def slice_entry(self, dim: str, value: Any, nt: int, dsum: np.ndarray | None,
                    osum: np.ndarray | None, em: np.ndarray | None = None
                    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """One supported slice's entry, and its tests against the rest of the night, from
        the slice's sums of the linear estimator's rows and outer products (EM: the
        slice's EM prior ``em``, fitted on its turns)."""
        classes, est, n, z = self.rates.classes, self.rates.estimate, self.n, self.z
        lin = self.lin
        d = second = d_rest = s_rest = None
        if lin is not None:
            assert self.d_all is not None and self.s_all is not None
            assert dsum is not None and osum is not None
            d, second = dsum / nt, osum / nt
            rest_n = max(n - nt, 1)
            d_rest = (self.d_all - dsum) / rest_n
            s_rest = (self.s_all - osum) / rest_n
            sl = lin.estimate(d)
        elif em is not None:
            sl = em
        else:
            raise ValueError("slices of the EM estimator need each slice's EM prior")
        srates = {c: float(sl[i]) for i, c in enumerate(classes)}
        srates["failure"] = float(1.0 - sl[0])
        var_s = self.sampling_var(d, second, sl, nt)
        var_rest = self.sampling_var(d_rest, s_rest, est, n - nt)
        entry: dict[str, Any] = {"value": value, "turns": int(nt), "rates": {}}
        tests = []
        for j, c in enumerate([*classes, "failure"]):
            ps = srates[c]
            se = math.sqrt(var_s[j] + (self.rel_model[c] * ps) ** 2)
            entry["rates"][c] = {"estimate": _r(ps), "low": _r(max(ps - z * se, 0)),
                                 "high": _r(min(ps + z * se, 1))}
            rest_n = n - nt
            if c == "correct" or rest_n <= 0:
                continue
            rest_p = min(max((self.overall[c] * n - ps * nt) / rest_n, 0.0), 1.0)
            sd = math.sqrt(max(var_s[j] + var_rest[j], 1e-12))
            pval = 0.5 * math.erfc((ps - rest_p) / sd / math.sqrt(2))
            tests.append({
                "dimension": dim, "value": value, "class": c, "turns": int(nt),
                "rate": _r(ps), "rest_rate": _r(rest_p), "overall_rate": _r(self.overall[c]),
                "excess_failures": stable_round(nt * (ps - self.overall[c]), 2),
                "p_value": pval,
            })
        return entry, tests


def value_codes(values: pl.Series) -> tuple[list[str], np.ndarray]:
    """The sorted distinct values (as strings) and each row's index among them: what
    ``np.unique(values.to_numpy().astype(str), return_inverse=True)`` gives (a null reads
    as ``"None"``; code-point order is UTF-8 byte order), without sorting the rows."""
    s = values.cast(pl.String).fill_null("None")
    cats = s.unique().sort()
    if cats.len() == 0:
        return [], np.zeros(0, np.int64)
    return cats.to_list(), s.cast(pl.Enum(cats)).to_physical().to_numpy().astype(np.int64)


@dataclass(frozen=True)
class SliceSums:
    """Per value of one slice dimension: turns, argmax counts, probability sums and sums of
    the probabilities' outer products (the linearised slice estimators need no more)."""

    values: tuple[str, ...]
    turns: np.ndarray  # (v,) int64
    counts: np.ndarray  # (v, k) int64
    probs: np.ndarray  # (v, k)
    outer: np.ndarray  # (v, k, k)

    @classmethod
    def of(cls, values: pl.Series, probs: np.ndarray, pred: np.ndarray) -> SliceSums:
        cats, codes = value_codes(values)
        v, k = len(cats), probs.shape[1]
        counts = np.bincount(codes * k + pred, minlength=v * k).reshape(v, k)
        psum = np.stack([np.bincount(codes, probs[:, j], minlength=v) for j in range(k)], 1)
        # symmetric (p_i * p_j == p_j * p_i exactly): the upper triangle, mirrored
        outer = np.zeros((v, k, k))
        for i in range(k):
            for j in range(i, k):
                outer[:, i, j] = outer[:, j, i] = np.bincount(codes, probs[:, i] * probs[:, j],
                                                              minlength=v)
        return cls(tuple(str(c) for c in cats), np.bincount(codes, minlength=v),
                   counts.astype(np.int64), psum.reshape(v, k), outer)

    def row_sums(self, i: int, probabilistic: bool) -> tuple[np.ndarray, np.ndarray]:
        """Value ``i``'s sums of the linear slice estimator's rows and outer products:
        probabilities, or one-hot argmax (whose outer products are the diagonal counts)."""
        if probabilistic:
            return self.probs[i], self.outer[i]
        counts = self.counts[i].astype(np.float64)
        return counts, np.diag(counts)

    def totals(self, probabilistic: bool) -> tuple[np.ndarray, np.ndarray]:
        """The night's sums (every dimension's values cover every turn once)."""
        if probabilistic:
            return self.probs.sum(axis=0), self.outer.sum(axis=0)
        counts = self.counts.sum(axis=0).astype(np.float64)
        return counts, np.diag(counts)

    @staticmethod
    def merge(parts: Sequence[SliceSums]) -> SliceSums:
        values = tuple(sorted({v for p in parts for v in p.values}))
        index = {v: i for i, v in enumerate(values)}
        k = parts[0].counts.shape[1]
        turns = np.zeros(len(values), np.int64)
        counts = np.zeros((len(values), k), np.int64)
        probs = np.zeros((len(values), k))
        outer = np.zeros((len(values), k, k))
        for p in parts:
            at = np.array([index[v] for v in p.values], dtype=np.int64)
            turns[at] += p.turns
            counts[at] += p.counts
            probs[at] += p.probs
            outer[at] += p.outer
        return SliceSums(values, turns, counts, probs, outer)


def slice_rates_from_sums(
    sums: Mapping[str, SliceSums],
    rates: RateTable,
    *,
    confusion: np.ndarray | None = None,
    soft_confusion: np.ndarray | None = None,
    min_support: int = 50,
    alpha: float = 0.05,
    max_slices: int = 30,
    top: int = 10,
    em_slices: Callable[[str, list[str]], np.ndarray] | None = None,
) -> dict[str, Any]:
    """:func:`slice_rates` from per-slice sums (of one frame, or merged over partitions).
    The EM estimator has no linear form: its slices re-run EM on each slice's turns,
    ``em_slices(dimension, values)`` giving the (v, k) priors
    (:func:`fpi.diagnose.partition.fit_slice_em`; without it, ValueError)."""
    turns = int(next(iter(sums.values())).turns.sum()) if sums else 0
    lin = _SliceEstimator.of(rates, confusion, soft_confusion)
    totals = None
    if lin is not None and sums:
        first = next(iter(sums.values()))
        totals = first.totals(lin.probabilistic)
    ctx = _SliceContext.of(rates, lin, turns, totals)
    dims: dict[str, Any] = {}
    tests: list[dict[str, Any]] = []
    if lin is None and em_slices is None:
        raise ValueError("slices of the EM estimator need em_slices")
    for dim, ss in sums.items():
        order = sorted(range(len(ss.values)), key=lambda i: (-int(ss.turns[i]), ss.values[i]))
        supported = [i for i in order if int(ss.turns[i]) >= min_support]
        ems = (em_slices(dim, [ss.values[i] for i in supported])
               if lin is None and em_slices is not None and supported else None)
        rows_out = []
        small_n = small_turns = 0
        for i in order:
            nt = int(ss.turns[i])
            if nt < min_support:
                small_n, small_turns = small_n + 1, small_turns + nt
                continue
            dsum, osum = (None, None) if lin is None else ss.row_sums(i, lin.probabilistic)
            em = None if ems is None else ems[supported.index(i)]
            entry, slice_tests = ctx.slice_entry(dim, ss.values[i], nt, dsum, osum, em)
            rows_out.append(entry)
            tests += slice_tests
        dims[dim] = {
            "slices": rows_out[:max_slices],
            "omitted": {"small": {"slices": small_n, "turns": small_turns},
                        "beyond_max": max(0, len(rows_out) - max_slices)},
        }
    return _slice_doc(dims, tests, min_support=min_support, alpha=alpha, top=top)


def slice_rates(
    slices: pl.DataFrame,
    probs: np.ndarray,
    rates: RateTable,
    *,
    train_prior: np.ndarray,
    confusion: np.ndarray | None = None,
    soft_confusion: np.ndarray | None = None,
    min_support: int = 50,
    alpha: float = 0.05,
    max_slices: int = 30,
    top: int = 10,
) -> dict[str, Any]:
    """Per-slice rates with intervals, and the slices carrying the most excess failures.

    The turns' :class:`SliceSums` through :func:`slice_rates_from_sums` (the one
    estimator of slices; ``fpi diagnose`` merges the sums over partitions).

    Parameters
    ----------
    slices : one row per turn, one String column per dimension (:func:`slice_columns`).
    probs : (n, k) calibrated posteriors (training prior). Each supported slice
        gets its own estimate, with the overall estimator (for the blend, its
        per-class weights, on the slice's mean probabilities; EM warm-started from
        the overall prior): a slice whose failure mix differs from the night's
        would otherwise be shrunk toward the night's rates.
    rates : the overall :class:`RateTable` (its interval's model-error share is
        carried over to slices in relative terms).
    train_prior : (k,) the training prior.
    confusion, soft_confusion : (k, k) the held-out matrices the overall estimate used.
    min_support : slices with fewer turns are neither reported nor tested
        (tiny slices give extreme rates by chance).
    alpha : false discovery rate for the Benjamini-Hochberg correction.
    max_slices : at most this many slices per dimension, largest first.
    top : how many excess-failure slices to list.
    """
    p = np.asarray(probs, np.float64)
    pred = p.argmax(axis=1) if len(p) else np.zeros(0, np.int64)
    sums = {dim: SliceSums.of(slices[dim], p, pred) for dim in slices.columns}

    def em_slices(dim: str, values: list[str]) -> np.ndarray:
        col = slices[dim].to_numpy().astype(str)  # as SliceSums.of names the values
        return np.stack([em_prior(p, train_prior, rows=np.flatnonzero(col == v),
                                  init=rates.estimate, tol=1e-6) for v in values])

    return slice_rates_from_sums(sums, rates, confusion=confusion,
                                 soft_confusion=soft_confusion, min_support=min_support,
                                 alpha=alpha, max_slices=max_slices, top=top,
                                 em_slices=em_slices)


def _slice_doc(dims: dict[str, Any], tests: list[dict[str, Any]], *, min_support: int,
               alpha: float, top: int) -> dict[str, Any]:
    """The ``slices`` block: the dimensions, and the tests corrected for multiplicity."""
    qvals = benjamini_hochberg(np.array([t["p_value"] for t in tests]))
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
    z = z_value(confidence)
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
