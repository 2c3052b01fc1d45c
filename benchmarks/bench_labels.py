"""The labels loop on simulated logs: learning curve, label noise, measurement coverage.

Usage (run by hand; not a test)::

    python benchmarks/bench_labels.py [--seeds 3] [--pool 10000] [--nights 100]
        [--only abc] [--seed-list 1,2] [--stop-at-target] [--noise-replicates 6]
        [--fixes weight:class,drop:class:1.5] [--check-repeats 3] [--reannotate 100,200,400]

(a) **Learning curve.** A pool of unlabelled simulated turns and a separate test night.
    For each seed and label budget, a model is trained (``fpi.model.train``) on the
    labels of (i) a uniform random sample of the pool and (ii) turns picked by
    ``fpi queue`` in rounds (a stratified random first batch without a model, then
    each round queued with the model of the previous round). Macro-F1 on the test
    night against labels used; the full-pool model is the target (minus 0.01).
(b) **Label noise.** 5% of a training night's labels are flipped to a plausible
    neighbour class, at class-dependent rates (a tired annotator). In each of
    ``--noise-replicates`` replicates ``r`` (flip seed ``7 + r``, check folds seeded ``r``
    and, with ``--check-repeats``, ``r + 1``, ...; training seed ``r``), ``check_labels``
    ranks them (the share of flipped labels in its
    top 10%, the precision and recall of each fix's picks) and models are trained on
    the clean and the noisy labels, the noisy ones without exactly the flipped labels
    (oracle), the cleaned sets ``--fixes`` (each ``fix:by[:quota]`` of ``LabelCheck.fixed``,
    as ``fpi labels check --fix FIX --fix-by BY --quota QUOTA``) and the noisy labels with the top
    ``--reannotate`` k of the ranking set back to the truth (annotators asked again).
    Each variant's test macro-F1 is compared with the noisy labels' of the same
    replicate (paired): the mean gain and its standard error over replicates, and the
    share of the loss (clean - noisy) recovered, mean(gain) / mean(loss), with a
    delta-method standard error.
(c) **Measurement coverage.** Over simulated nights (each a disjoint set of sessions),
    a queue with a random stratum is drawn, its random turns labelled with the gold
    labels, and ``measure`` run with each interval method: the share of nights whose
    95% interval holds the true per-class F1 of the model on the whole night.

Prints the command, the load average, CPU seconds and wall time with the figures.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from fpi.features import build_features
from fpi.labels.check import CheckOptions, LabelCheck, check_labels
from fpi.labels.measure import METHODS, measure
from fpi.labels.queue import QueueOptions, build_queue
from fpi.metrics import labels_to_index, macro_f1_score
from fpi.model import ModelBundle, train
from fpi.schema import CLASSES
from fpi.simulate import simulate_frame

KEY = ["session_id", "turn_index"]
#: Where a tired annotator's slip goes, and how often, per true class (mean about 5%).
FLIPS = {"correct": ("asr", 0.03), "false_wake": ("correct", 0.10), "asr": ("nlu", 0.10),
         "nlu": ("asr", 0.10), "er": ("nlu", 0.08), "result": ("er", 0.08)}


def _labels(frame: pl.DataFrame) -> np.ndarray:
    return labels_to_index(frame["label"].struct.field("failure_point"))


def _keep_labels(turns: pl.DataFrame, keys: pl.DataFrame) -> pl.DataFrame:
    """``turns`` with labels only on ``keys`` (the rest unlabelled context)."""
    mark = keys.select(KEY).with_columns(pl.lit(True).alias("_keep"))
    out = turns.join(mark, on=KEY, how="left", maintain_order="left")
    return out.with_columns(pl.when(pl.col("_keep")).then(pl.col("label")).otherwise(None)
                            .alias("label")).drop("_keep")


def _fit(turns: pl.DataFrame, feats: pl.DataFrame, seed: int, tmp: Path,
         weights: pl.DataFrame | None = None) -> ModelBundle:
    out = tmp / f"m{time.perf_counter_ns()}"
    return train(turns, out, seed=seed, no_context=False, min_class_count=2, test_size=0.1,
                 features=feats, weights=weights).bundle


def _score(bundle: ModelBundle, test: pl.DataFrame, test_feats: pl.DataFrame) -> float:
    pred = bundle.predict_proba(test_feats).argmax(axis=1)
    return macro_f1_score(_labels(test), pred)


def learning_curve(pool: pl.DataFrame, pool_feats: pl.DataFrame, test: pl.DataFrame,
                   test_feats: pl.DataFrame, budgets: list[int], seeds: list[int],
                   tmp: Path, stop_at_target: bool = False) -> dict[str, Any]:
    """Macro-F1 per (method, seed, labels); with ``stop_at_target`` an arm stops at the
    first budget that reaches the full-pool model's macro-F1 minus 0.01 (the budgets
    after it do not change the labels it needs)."""
    full = _score(_fit(pool, pool_feats, 0, tmp), test, test_feats)
    print(f"full pool model: macro-F1 {full:.4f}", flush=True)
    rows: list[tuple[str, int, int, float]] = []
    for seed in seeds:
        c0 = time.process_time()
        order = pool.select(KEY).sample(fraction=1.0, shuffle=True, seed=seed)
        for b in budgets:  # uniform random, nested samples
            bundle = _fit(_keep_labels(pool, order.head(b)), pool_feats, seed, tmp)
            rows.append(("random", seed, b, _score(bundle, test, test_feats)))
            if stop_at_target and rows[-1][3] >= full - 0.01:
                break
        picked = build_queue(pool, QueueOptions(budget=budgets[0], seed=seed)).frame.select(KEY)
        for i, b in enumerate(budgets):
            if i > 0:  # queue the next batch with the model trained on the labels so far
                rest = pool.join(picked, on=KEY, how="anti")
                rest_feats = pool_feats.filter(pl.Series(
                    pool.join(picked.with_columns(pl.lit(1).alias("_p")), on=KEY,
                              how="left", maintain_order="left")["_p"].is_null()))
                q = build_queue(rest, QueueOptions(budget=b - picked.height, seed=seed),
                                bundle, rest_feats)
                picked = pl.concat([picked, q.frame.select(KEY)])
            bundle = _fit(_keep_labels(pool, picked), pool_feats, seed, tmp)
            rows.append(("queue", seed, b, _score(bundle, test, test_feats)))
            if stop_at_target and rows[-1][3] >= full - 0.01:
                break
        print(f"seed {seed} ({time.process_time() - c0:.0f} CPU-s, load "
              f"{os.getloadavg()[0]:.1f}): " + ", ".join(f"{m} {n} {f:.4f}" for m, s_, n, f
                                                       in rows if s_ == seed), flush=True)
    curve = pl.DataFrame(rows, schema=["method", "seed", "labels", "macro_f1"], orient="row")
    return {"full": full, "curve": curve}


def _flip(frame: pl.DataFrame, seed: int) -> tuple[pl.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = frame["label"].struct.field("failure_point").to_numpy().astype(object)
    rate = np.array([FLIPS[v][1] for v in y])
    flip = rng.random(len(y)) < rate
    noisy = np.where(flip, [FLIPS[v][0] for v in y], y)
    return frame.with_columns(pl.col("label").struct.with_fields(
        pl.Series("failure_point", noisy, dtype=pl.String))), flip


def _drop(frame: pl.DataFrame, keys: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with the labels of ``keys`` removed (the turns stay as context)."""
    marked = frame.join(keys.with_columns(pl.lit(True).alias("_s")), on=KEY, how="left",
                        maintain_order="left")
    return marked.with_columns(pl.when(pl.col("_s")).then(None).otherwise(pl.col("label"))
                               .alias("label")).drop("_s")


def _apply(frame: pl.DataFrame, fixed: pl.DataFrame) -> pl.DataFrame:
    """``frame`` labelled as the cleaned set ``fixed`` says (turns it leaves out: none)."""
    new = frame.join(fixed.select(*KEY, pl.col("failure_point").alias("_fp")), on=KEY,
                     how="left", maintain_order="left")
    return new.with_columns(pl.when(pl.col("_fp").is_null()).then(None).otherwise(
        pl.col("label").struct.with_fields(pl.col("_fp").alias("failure_point")))
        .alias("label")).drop("_fp")


def _reannotate(noisy: pl.DataFrame, truth: pl.DataFrame, keys: pl.DataFrame) -> pl.DataFrame:
    """``noisy`` with the labels of ``keys`` set back to the ``truth`` (annotators asked
    again, and right this time)."""
    fixed = noisy.join(keys.select(KEY).with_columns(pl.lit(True).alias("_re")), on=KEY,
                       how="left", maintain_order="left")
    return fixed.with_columns(pl.when(pl.col("_re")).then(truth["label"])
                              .otherwise(pl.col("label")).alias("label")).drop("_re")


def _variants(train_night: pl.DataFrame, noisy: pl.DataFrame, flipped: np.ndarray,
              result: LabelCheck, fixes: tuple[str, ...], reannotate: tuple[int, ...],
              ) -> dict[str, tuple[pl.DataFrame, pl.DataFrame | None]]:
    """The training label sets of one replicate: clean, noisy, the oracle drop, each
    ``fix:by`` cleaned set and the top ``reannotate`` k set back to the truth."""
    keys = train_night.select(KEY).with_columns(pl.Series("flipped", flipped))
    out: dict[str, tuple[pl.DataFrame, pl.DataFrame | None]] = {
        "clean": (train_night, None), "noisy": (noisy, None),
        "drop_flipped_oracle": (_drop(noisy, keys.filter("flipped").select(KEY)), None)}
    for spec in fixes:
        fix, by, *quota = spec.split(":")
        fixed = result.fixed(fix, by, quota=float(quota[0]) if quota else 1.0)
        out[spec] = (_apply(noisy, fixed), fixed.select(*KEY, "weight")
                     if fix == "weight" else None)
    for k in reannotate:
        out[f"reannotate_{k}"] = (_reannotate(noisy, train_night,
                                              result.ranked.head(k).select(KEY)), None)
    return out


def _ranking_stats(result: LabelCheck, train_night: pl.DataFrame, flipped: np.ndarray,
                   fixes: tuple[str, ...]) -> dict[str, float]:
    """How well one replicate's check finds the flips: top 10%, suspects, each fix's picks."""
    keys = train_night.select(KEY).with_columns(pl.Series("flipped", flipped))
    ranked = result.ranked.join(keys, on=KEY, maintain_order="left")
    n = int(flipped.sum())
    stats = {"flipped": n, "found_top10": float(ranked.head(len(flipped) // 10)["flipped"]
                                                 .sum() / n),
             "suspects": result.suspects.height,
             "suspect_precision": float(ranked.filter("suspect")["flipped"].mean()),
             "estimated_errors": result.estimated_errors}
    for by in sorted({spec.split(":", 1)[1] for spec in fixes}):
        name, *quota = by.split(":")
        picked = result.prune(name, quota=float(quota[0]) if quota else 1.0).join(keys, on=KEY)
        stats[f"picked_{by}"] = picked.height
        stats[f"picked_{by}_precision"] = float(picked["flipped"].mean())
        stats[f"picked_{by}_recall"] = float(picked["flipped"].sum() / n)
    return stats


def label_noise(train_night: pl.DataFrame, feats: pl.DataFrame, test: pl.DataFrame,
                test_feats: pl.DataFrame, tmp: Path, replicates: int = 1,
                reannotate: tuple[int, ...] = (), fixes: tuple[str, ...] = ("drop:class",),
                repeats: int = CheckOptions().repeats) -> dict[str, Any]:
    """Per replicate ``r`` (flip seed ``7 + r``, check seed ``r``, training seed ``r``):
    the test macro-F1 of every variant, so each fix is compared with the noisy labels
    of the same replicate (paired)."""
    rows: list[tuple[int, str, float]] = []
    stats: list[dict[str, float]] = []
    for r in range(replicates):
        c0, t0 = time.process_time(), time.perf_counter()
        noisy, flipped = _flip(train_night, seed=7 + r)
        result = check_labels(noisy, CheckOptions(folds=5, seed=r, repeats=repeats),
                              features=feats)
        stats.append({**_ranking_stats(result, train_night, flipped, fixes),
                      "check_seconds": time.perf_counter() - t0})
        for name, (frame, weights) in _variants(train_night, noisy, flipped, result, fixes,
                                                reannotate).items():
            rows.append((r, name, _score(_fit(frame, feats, r, tmp, weights), test,
                                         test_feats)))
        print(f"replicate {r} ({time.process_time() - c0:.0f} CPU-s, load "
              f"{os.getloadavg()[0]:.1f}): " + ", ".join(
                  f"{v} {f:.4f}" for r_, v, f in rows if r_ == r), flush=True)
    return {"f1": pl.DataFrame(rows, schema=["replicate", "variant", "macro_f1"],
                               orient="row"), "stats": pl.DataFrame(stats)}


def recovery(f1: pl.DataFrame) -> pl.DataFrame:
    """Per variant, paired against the noisy labels of the same replicate: the mean gain
    ``d`` and its standard error, and the share of the loss (clean - noisy) recovered,
    mean(d) / mean(loss), with a delta-method standard error."""
    wide = f1.pivot("variant", index="replicate", values="macro_f1")
    n = wide.height
    loss = (wide["clean"] - wide["noisy"]).to_numpy()
    rows = []
    for v in wide.columns[1:]:
        d = (wide[v] - wide["noisy"]).to_numpy()
        share = d.mean() / loss.mean()
        resid = d - share * loss  # delta method for a ratio of means
        se = float(resid.std(ddof=1) / np.sqrt(n) / abs(loss.mean())) if n > 1 else float("nan")
        rows.append((v, float(wide[v].mean()), float(d.mean()),
                     float(d.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan"),
                     float(share), se))
    return pl.DataFrame(rows, schema=["variant", "macro_f1", "gain", "gain_se", "recovered",
                                      "recovered_se"], orient="row")


def coverage(bundle: ModelBundle, nights: int, night_turns: int, budget: int,
             replicates: int) -> dict[str, Any]:
    big = simulate_frame(nights * night_turns, seed=31, labels="gold")
    feats = build_features(big)
    sessions = big["session_id"].unique(maintain_order=True)
    night_of = pl.DataFrame({"session_id": sessions,
                             "night": (np.arange(sessions.len()) * nights // sessions.len())})
    idx = big.select("session_id").join(night_of, on="session_id", how="left",
                                        maintain_order="left")["night"].to_numpy()
    hits: dict[tuple[str, str], list[bool]] = {(m, c): [] for m in METHODS for c in CLASSES}
    widths: dict[tuple[str, str], list[float]] = {k: [] for k in hits}
    for n in range(nights):
        mask = pl.Series(idx == n)
        night, nf = big.filter(mask), feats.filter(mask)
        y = _labels(night)
        pred = bundle.predict_proba(nf).argmax(axis=1)
        q = build_queue(night, QueueOptions(budget=budget, seed=n, random_share=1.0), bundle, nf)
        gold = night.select(*KEY, pl.col("label").struct.field("failure_point"))
        for method in METHODS:
            m = measure(q.frame, gold, replicates=replicates, seed=n, method=method)
            for i, c in enumerate(CLASSES):
                tp = ((y == i) & (pred == i)).sum()
                denom = (y == i).sum() + (pred == i).sum()
                est = m.per_class[c]["f1"]
                if denom == 0 or est["low"] is None:
                    continue
                truth = 2 * tp / denom
                hits[method, c].append(est["low"] - 1e-9 <= truth <= est["high"] + 1e-9)
                widths[method, c].append(est["high"] - est["low"])
    return {"nights": nights, "night_turns": night_turns, "random_turns": budget,
            "coverage": {k: (float(np.mean(h)) if h else None, len(h)) for k, h in hits.items()},
            "mean_width": {k: float(np.mean(w)) if w else None for k, w in widths.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--seed-list", default=None,
                   help="(a) these seeds (comma-separated) instead of 0..seeds-1")
    p.add_argument("--stop-at-target", action="store_true",
                   help="(a) an arm stops at the first budget reaching the target (cheaper; "
                        "the curve's later points are then not measured)")
    p.add_argument("--pool", type=int, default=10_000)
    p.add_argument("--budgets", default="300,600,1200,2400")
    p.add_argument("--noise-turns", type=int, default=6_000)
    p.add_argument("--noise-replicates", type=int, default=3,
                   help="(b) replicates: flips, check folds and training seed of each")
    p.add_argument("--fixes", default="weight:class,drop:class,drop:confident,"
                   "relabel:confident",
                   help="(b) the cleaned sets to train on, each fix:by[:quota] of "
                        "LabelCheck.fixed (quota: times the estimated count, default 1)")
    p.add_argument("--check-repeats", type=int, default=CheckOptions().repeats,
                   help="(b) fold assignments the check averages (CheckOptions.repeats)")
    p.add_argument("--reannotate", default="400",
                   help="(b) how many of the top suspects are sent back to annotators "
                        "(comma-separated; empty: none)")
    p.add_argument("--nights", type=int, default=100)
    p.add_argument("--night-turns", type=int, default=2_000)
    p.add_argument("--night-budget", type=int, default=300)
    p.add_argument("--replicates", type=int, default=500)
    p.add_argument("--only", default="abc", help="which parts to run (a, b, c)")
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    wall, cpu = time.perf_counter(), time.process_time()
    print("command:", " ".join([os.path.basename(sys.executable), *sys.argv]))
    print(f"load average at start: {os.getloadavg()}")
    test = simulate_frame(6_000, seed=12)
    test_feats = build_features(test)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        pool = simulate_frame(args.pool, seed=11)
        pool_feats = build_features(pool)
        full_bundle = None
        if "a" in args.only:
            t0 = time.perf_counter()
            budgets = [int(b) for b in args.budgets.split(",")]
            seeds = ([int(s) for s in args.seed_list.split(",")] if args.seed_list
                     else list(range(args.seeds)))
            lc = learning_curve(pool, pool_feats, test, test_feats, budgets, seeds, tmp,
                                args.stop_at_target)
            summary = lc["curve"].group_by("method", "labels").agg(
                pl.col("macro_f1").mean().alias("mean"), pl.col("macro_f1").std().alias("sd"),
                pl.col("macro_f1").min().alias("min")).sort("method", "labels")
            print(f"\n(a) learning curve: pool {args.pool} turns, test 6000 turns, "
                  f"seeds {seeds} ({time.perf_counter() - t0:.0f} s)")
            print(f"full pool ({args.pool} labels): macro-F1 {lc['full']:.4f}; target "
                  f"{lc['full'] - 0.01:.4f}")
            with pl.Config(tbl_rows=40, tbl_hide_dataframe_shape=True):
                print(summary)
            target = lc["full"] - 0.01
            need = {m: summary.filter((pl.col("method") == m) & (pl.col("mean") >= target))
                    ["labels"].min() for m in ("random", "queue")}
            print("labels needed to reach the target (mean over seeds; None: not within the "
                  f"grid): random {need['random']}, queue {need['queue']}")
            per_seed = lc["curve"].filter(pl.col("macro_f1") >= target).group_by(
                "method", "seed").agg(pl.col("labels").min()).sort("method", "seed")
            print("labels needed per seed (first budget at or above the target):")
            for (m,), part in per_seed.group_by("method", maintain_order=True):
                print(f"  {m}: " + ", ".join(f"seed {s} {n}" for s, n in part.select(
                    "seed", "labels").iter_rows()))
            with pl.Config(tbl_rows=80, tbl_hide_dataframe_shape=True):
                print(lc["curve"].sort("method", "seed", "labels"))
        if "b" in args.only:
            t0 = time.perf_counter()
            night = simulate_frame(args.noise_turns, seed=21, labels="gold")
            ln = label_noise(night, build_features(night), test, test_feats, tmp,
                             args.noise_replicates,
                             tuple(int(k) for k in args.reannotate.split(",") if k),
                             tuple(args.fixes.split(",")), args.check_repeats)
            st = ln["stats"]
            print(f"\n(b) label noise: {args.noise_turns} turns, {args.noise_replicates} "
                  f"replicates ({time.perf_counter() - t0:.0f} s); flipped "
                  f"{st['flipped'].mean():.0f} on average; per replicate:")
            with pl.Config(tbl_rows=40, tbl_cols=30, tbl_hide_dataframe_shape=True,
                           tbl_width_chars=200, float_precision=4):
                print(st)
                print(ln["f1"].pivot("variant", index="replicate", values="macro_f1"))
                print("paired against the noisy labels of the same replicate (mean, s.e.):")
                print(recovery(ln["f1"]))
        if "c" in args.only:
            t0 = time.perf_counter()
            full_bundle = full_bundle or _fit(pool, pool_feats, 0, tmp)
            cov = coverage(full_bundle, args.nights, args.night_turns, args.night_budget,
                           args.replicates)
            print(f"\n(c) measurement: {cov['nights']} nights of {cov['night_turns']} turns, "
                  f"{cov['random_turns']} random turns labelled per night, 95% intervals "
                  f"({time.perf_counter() - t0:.0f} s)")
            for key, (share, n) in cov["coverage"].items():
                width = cov["mean_width"][key]
                name = f"{key[0]:<9} {key[1]:<11}"
                print(f"  {name} covered {share:.0%} of {n} nights (mean width {width:.3f})"
                      if n else f"  {name} no night with a defined interval")
    print(f"\nwall {time.perf_counter() - wall:.0f} s, CPU {time.process_time() - cpu:.0f} s, "
          f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
