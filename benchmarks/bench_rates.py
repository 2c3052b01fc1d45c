"""Per-class rate estimators on simulated nights: bias, error, interval width, coverage.

Usage::

    python benchmarks/bench_rates.py [--train-turns 25000] [--night-turns 3000]
        [--seeds 6] [--threads 2] [--cache DIR] [--profiles a,b,...]

Trains one bundle on ``--train-turns`` labelled baseline turns (seed 7, the
bundle's usual protocol), then simulates ``--seeds`` nights of ``--night-turns``
turns for every profile (prior and mechanism shifts, and two conditional shifts:
``clarity_shift``, new speakers with more recognition errors at the same logged
confidence, and ``speaker_shift``, half the sessions from hidden new voices whose
ASR is over-confident on its own errors) and scores them. Every estimator then
estimates each night's six class rates with a 95% interval, and the table reports, per estimator and
profile, over nights and classes: mean bias and RMSE (points), the largest
absolute error, the mean interval half-width over the five failure classes, and
coverage (share of class-nights whose interval holds the true rate); a summary
row per estimator covers all nights. ``--cache`` keeps the trained bundle and
the nights' probabilities, so estimators can be re-run without retraining.

The estimators: ``old`` (fpi before issue 13: adjusted classify-and-count with
the union interval of EM, Dirichlet-confusion ACC and the unadjusted mean), the
plain ones (``cc`` argmax count, ``pcc`` mean calibrated probability, ``acc``,
``pacc``, ``em`` with 100 bootstrap replicates, the others 200), ``blend_cc``
(the blend of CC and ACC a bundle without a soft confusion matrix gets), ``blend``
(the precision-weighted blend of PCC and PACC: the headline of a bundle without
strata), ``spacc`` (PACC per ASR-confidence stratum) and ``new``
(:func:`fpi.diagnose.rates.estimate_rates`'s headline: ``spacc`` for a bundle with
``heldout.soft_confusion_strata``). The nights' cache holds each turn's ASR
confidence (an older cache's nights are re-simulated for it, probabilities kept).
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

PROFILE_ORDER = ("baseline", "asr_farfield", "er_outage_music", "result_outage",
                 "false_wake_tv", "clarity_shift", "speaker_shift")


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _train(args: argparse.Namespace, cache: Path) -> Any:
    from fpi.model import load_bundle, train
    from fpi.simulate import simulate_frame

    bundle_dir = cache / "model"
    if (bundle_dir / "manifest.json").exists():
        return load_bundle(bundle_dir)
    turns = simulate_frame(args.train_turns, seed=7, profile="baseline")
    return train(turns, bundle_dir, seed=7, threads=args.threads).bundle


def _nights(args: argparse.Namespace, bundle: Any, cache: Path) -> dict[str, list[dict[str, Any]]]:
    from fpi.features import build_features
    from fpi.metrics import labels_to_index, strata_values
    from fpi.simulate import simulate_frame

    out: dict[str, list[dict[str, Any]]] = {}
    for prof in args.profiles:
        out[prof] = []
        for s in range(args.seeds):
            f = cache / f"{prof}-{args.night_turns}-{s}.npz"
            if not f.exists() or "asr" not in np.load(f):
                # (a cache from before the strata lacks the ASR confidence: re-simulated,
                # the model's probabilities kept)
                turns = simulate_frame(args.night_turns, seed=1000 + s, profile=prof,
                                       labels="gold")
                probs = (np.load(f)["probs"] if f.exists()
                         else bundle.predict_proba(build_features(turns)))
                y = labels_to_index(turns["label"].struct.field("failure_point"))
                sess = turns["session_id"].cast(str).rank("dense").to_numpy()
                np.savez(f, probs=probs, y=y, sessions=sess, asr=strata_values(turns))
            d = np.load(f)
            out[prof].append({"probs": d["probs"], "y": d["y"], "sessions": d["sessions"],
                              "asr": d["asr"]})
    return out


def _estimators(bundle: Any) -> dict[str, Callable[[dict[str, Any]], tuple[np.ndarray, ...]]]:
    from fpi.diagnose import rates as agg
    from fpi.schema import CLASSES

    man = bundle.manifest
    prior = np.array([man["training"]["class_prior"][c] for c in CLASSES])
    conf = np.asarray(man["heldout"]["confusion"], np.float64)
    soft = np.asarray(man["heldout"]["soft_confusion"], np.float64)
    strata = agg.Strata.of(man["heldout"].get("soft_confusion_strata"), soft)

    def new(n: dict[str, Any]) -> tuple[np.ndarray, ...]:
        t = agg.estimate_rates(n["probs"], train_prior=prior, confusion=conf,
                               soft_confusion=soft, groups=n["sessions"], strata=strata,
                               strata_values=n["asr"])
        return t.estimate, t.low, t.high

    def old(n: dict[str, Any]) -> tuple[np.ndarray, ...]:
        t = _legacy(n["probs"], prior, conf, n["sessions"])
        return t

    def plain(name: str) -> Callable[[dict[str, Any]], tuple[np.ndarray, ...]]:
        def f(n: dict[str, Any]) -> tuple[np.ndarray, ...]:
            t = agg.estimate_rates(n["probs"], train_prior=prior, confusion=conf,
                                   soft_confusion=soft, groups=n["sessions"], method=name,
                                   n_boot=100 if name == "em" else 200, strata=strata,
                                   strata_values=n["asr"])
            return t.estimate, t.low, t.high
        return f

    def blend_counts(n: dict[str, Any]) -> tuple[np.ndarray, ...]:
        t = agg.estimate_rates(n["probs"], train_prior=prior, confusion=conf,
                               groups=n["sessions"], method="blend")
        return t.estimate, t.low, t.high

    ests: dict[str, Callable[[dict[str, Any]], tuple[np.ndarray, ...]]] = {"old": old}
    for name in agg.METHODS:
        ests[name] = plain(name)
    ests["blend_cc"] = blend_counts
    ests["new"] = new
    return ests


def _legacy(probs: np.ndarray, prior: np.ndarray, conf: np.ndarray,
            sessions: np.ndarray) -> tuple[np.ndarray, ...]:
    """fpi's estimator before issue 13 (ACC point, union-of-three bootstrap interval)."""
    from fpi.diagnose.rates import acc_prior, em_prior

    rng = np.random.default_rng(0)
    n, k = probs.shape
    argmax = probs.argmax(axis=1)
    q = np.bincount(argmax, minlength=k) / n
    em = em_prior(probs, prior)
    acc = acc_prior(q, conf)
    onehot = np.eye(k)[argmax]
    ns = int(sessions.max()) + 1
    em_b, q_b, m_b, acc_b = (np.empty((200, k)) for _ in range(4))
    for b in range(200):
        w = rng.poisson(1.0, ns).astype(np.float64)[sessions]
        em_b[b] = em_prior(probs, prior, weights=w, init=em, tol=1e-6)
        q_b[b] = (w @ onehot) / w.sum()
        m_b[b] = (w @ probs) / w.sum()
    for b in range(200):
        m = np.vstack([rng.dirichlet(row + 0.5) for row in conf])
        acc_b[b] = acc_prior(q_b[b], m)
    qs = [np.quantile(x, [0.025, 0.975], axis=0) for x in (em_b, m_b, acc_b)]
    low = np.minimum.reduce([x[0] for x in qs] + [acc])
    high = np.maximum.reduce([x[1] for x in qs] + [acc])
    return acc, np.clip(low, 0, 1), np.clip(high, 0, 1)


def _score(est: Callable[[dict[str, Any]], tuple[np.ndarray, ...]],
           nights: list[dict[str, Any]]) -> dict[str, float]:
    errs, halves, covered = [], [], []
    for n in nights:
        y = n["y"]
        truth = np.bincount(y[y >= 0], minlength=6) / max(int((y >= 0).sum()), 1)
        point, low, high = est(n)
        errs.append(point - truth)
        halves.append((high - low)[1:] / 2)
        covered.append((low - 1e-9 <= truth) & (truth <= high + 1e-9))
    e = np.array(errs) * 100
    cov = np.array(covered)
    return {"bias": float(e[:, 1:].mean()), "rmse": float(np.sqrt((e**2).mean())),
            "max": float(np.abs(e).max()), "asr_bias": float(e[:, 2].mean()),
            "asr_max": float(np.abs(e[:, 2]).max()),
            "half": float(np.mean(halves) * 100), "max_half": float(np.max(halves) * 100),
            "cover": float(cov.mean()), "cover5": float(np.mean(cov.sum(axis=1) >= 5))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-turns", type=int, default=25_000)
    parser.add_argument("--night-turns", type=int, default=3_000)
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--profiles", default=",".join(PROFILE_ORDER))
    parser.add_argument("--only", default="", help="comma-separated estimators to run")
    args = parser.parse_args()
    args.profiles = args.profiles.split(",")

    wall, cpu = time.perf_counter(), _cpu()
    with tempfile.TemporaryDirectory(prefix="fpi-bench-rates-") as tmp:
        cache = args.cache or Path(tmp)
        cache.mkdir(parents=True, exist_ok=True)
        bundle = _train(args, cache)
        t_train = time.perf_counter() - wall
        nights = _nights(args, bundle, cache)
        t_nights = time.perf_counter() - wall - t_train
        print(f"bundle: {bundle.manifest['training']['labelled_turns']} labelled turns; "
              f"held-out macro-F1 {bundle.manifest['heldout']['metrics']['macro_f1']:.3f}; "
              f"nights: {args.seeds} x {args.night_turns} turns per profile "
              f"(train {t_train:.0f} s, nights {t_nights:.0f} s)")
        ests = _estimators(bundle)
        only = [e for e in args.only.split(",") if e] or list(ests)
        print(f"{'estimator':<9} {'profile':<16} {'bias':>6} {'rmse':>5} {'max':>5} "
              f"{'asrB':>6} {'asrMx':>5} {'half':>5} {'mxHalf':>6} {'cover':>6} {'>=5/6':>6} "
              f"{'sec':>5}")
        for name in only:
            rows: list[dict[str, Any]] = []
            for prof in args.profiles:
                t = time.perf_counter()
                r = _score(ests[name], nights[prof])
                r["sec"] = time.perf_counter() - t
                rows.append(r)
                _print(name, prof, r)
            allr = _score(ests[name], [n for p in args.profiles for n in nights[p]])
            allr["sec"] = sum(r["sec"] for r in rows)
            _print(name, "ALL", allr)
    load = os.getloadavg()
    print(f"wall {time.perf_counter() - wall:.1f} s, cpu {_cpu() - cpu:.1f} s, "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", file=sys.stderr)


def _print(name: str, prof: str, r: dict[str, float]) -> None:
    print(f"{name:<9} {prof:<16} {r['bias']:>+6.2f} {r['rmse']:>5.2f} {r['max']:>5.2f} "
          f"{r['asr_bias']:>+6.2f} {r['asr_max']:>5.2f} {r['half']:>5.2f} {r['max_half']:>6.2f} "
          f"{r['cover']:>6.2f} {r['cover5']:>6.2f} {r['sec']:>5.1f}")
    if math.isnan(r["rmse"]):  # pragma: no cover
        print("  (nan)")


if __name__ == "__main__":
    main()
