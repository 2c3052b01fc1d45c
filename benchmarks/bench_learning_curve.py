"""Learning curves, the gain over today's fpi and a plain LightGBM, and warm start (issue 13).

Usage::

    python benchmarks/bench_learning_curve.py curve [--sizes 500,1000,2000,4000,8000,30000]
        [--style default] [--test-turns 6000] [--seed 0] [--threads 2]
    python benchmarks/bench_learning_curve.py compare [--style terse] [--turns 6000]
        [--old-src DIR]        # DIR: an fpi source tree of the old protocol (git archive)
    python benchmarks/bench_learning_curve.py warm [--style ja] [--from-style default]
        [--turns 500] [--from-turns 6000]

``curve``: trains fpi on the first N labelled turns of one simulated style and
scores each bundle with ``fpi.evaluate`` on a separate simulated set (seed + 1000).
``compare``: at ``--turns`` labels of one style, fpi (cross-fitted, learned
features), fpi with the old split protocol (``--old-src``, run in a subprocess),
and a plain LightGBM on raw log fields (default parameters, 20% of sessions for
early stopping), with a 95% bootstrap interval (by session) of each macro-F1 and of
fpi's lead. ``warm``: fpi on ``--turns`` labels of one style, cold and warm-started
(``init_model``) from a bundle trained on ``--from-turns`` of another style.
Every run prints the load average, wall and CPU seconds. Run by hand, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

#: Log fields a notebook would take as they are (plus a few context fields).
RAW_FIELDS = ("wake_score", "wake_dd_score", "device_type", "asr_confidence", "asr_nbest_n",
              "asr_latency_ms", "nlu_confidence", "nlu_domain", "nlu_intent",
              "nlu_n_alternatives", "er_n_entities", "er_score_min", "er_n_unresolved",
              "result_status", "result_latency_ms", "barge_in", "explicit_feedback",
              "next_barge_in", "next_asr_confidence", "next_result_ok", "gap_next_s")


def _cost(start: tuple[float, float]) -> dict[str, float]:
    return {"wall_s": round(time.perf_counter() - start[0], 1),
            "cpu_s": round(time.process_time() - start[1], 1),
            "load_avg": round(os.getloadavg()[0], 1)}


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _labels(frame: pl.DataFrame) -> np.ndarray:
    from fpi.metrics import labels_to_index

    return labels_to_index(frame["label"].struct.field("failure_point"))


def boot_macro_f1(y: np.ndarray, preds: dict[str, np.ndarray], sessions: np.ndarray,
                  reps: int = 200, seed: int = 0) -> dict[str, tuple[float, float]]:
    """95% bootstrap interval (resampling sessions) of each predictor's macro-F1, and of
    the difference of the first predictor minus each other one."""
    from fpi.metrics import classification_metrics

    uniq, inv = np.unique(sessions, return_inverse=True)
    rng = np.random.default_rng(seed)
    names = list(preds)
    draws: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(reps):
        pick = np.bincount(rng.integers(0, len(uniq), len(uniq)), minlength=len(uniq))[inv]
        idx = np.repeat(np.arange(len(y)), pick)
        for n in names:
            draws[n].append(classification_metrics(y[idx], preds[n][idx])["macro_f1"])
    out = {n: (float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5)))
           for n, d in draws.items()}
    for n in names[1:]:
        diff = np.array(draws[names[0]]) - np.array(draws[n])
        out[f"{names[0]}-{n}"] = (float(np.percentile(diff, 2.5)),
                                  float(np.percentile(diff, 97.5)))
    return out


def fpi_predict(train_frame: pl.DataFrame, test_frame: pl.DataFrame, seed: int, threads: int,
                **kw: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """Train fpi and predict the test frame; the predictions and the run's facts."""
    from fpi import train
    from fpi.features import build_features

    start = _clock()
    with tempfile.TemporaryDirectory(prefix="fpi-bench-lc-") as tmp:
        res = train(train_frame, Path(tmp) / "m", seed=seed, threads=threads, **kw)
        cost = _cost(start)
        pred = res.bundle.predict_proba(build_features(test_frame)).argmax(axis=1)
        tr = res.manifest["training"]
        facts = {"rounds": res.manifest["params"]["best_iteration"],
                 "oof_macro_f1": res.heldout["macro_f1"], "train": cost,
                 "params": {k: res.manifest["params"][k] for k in
                            ("num_leaves", "min_data_in_leaf", "lambda_l2", "learning_rate")},
                 "features": len(res.manifest["features"]), "folds": tr.get("folds")}
    return pred, facts


def plain_lightgbm(train_frame: pl.DataFrame, test_frame: pl.DataFrame, seed: int,
                   threads: int) -> np.ndarray:
    """A notebook model: raw log fields, default LightGBM, early stopping on 20% of sessions."""
    import lightgbm as lgb

    from fpi.features import build_features
    from fpi.schema import CLASSES

    def matrix(frame: pl.DataFrame) -> pl.DataFrame:
        f = build_features(frame).select(RAW_FIELDS)
        return f.with_columns(pl.col(pl.String).cast(pl.Categorical))

    y = _labels(train_frame)
    keep = y >= 0
    x = matrix(train_frame).filter(pl.Series(keep)).to_pandas()
    y = y[keep]
    sess = train_frame.filter(pl.Series(keep))["session_id"].to_numpy()
    uniq = np.unique(sess)
    valid_s = set(np.random.default_rng(seed).choice(uniq, len(uniq) // 5, replace=False))
    v = np.array([s in valid_s for s in sess])
    params = {"objective": "multiclass", "num_class": len(CLASSES), "verbosity": -1,
              "seed": seed, "num_threads": threads, "deterministic": True}
    ds = lgb.Dataset(x[~v], y[~v])
    booster = lgb.train(params, ds, 1000, valid_sets=[lgb.Dataset(x[v], y[v], reference=ds)],
                        callbacks=[lgb.early_stopping(20, verbose=False)])
    xt = matrix(test_frame).to_pandas()
    for c in xt.columns:
        if str(xt[c].dtype) == "category":
            xt[c] = xt[c].cat.set_categories(x[c].cat.categories)
    return np.asarray(booster.predict(xt)).argmax(axis=1)


_OLD_SCRIPT = """
import json, sys, tempfile, time, os
from pathlib import Path
import polars as pl
from fpi import train
from fpi.features import build_features
tr = pl.read_parquet(sys.argv[1]); te = pl.read_parquet(sys.argv[2])
t = time.perf_counter(); c = time.process_time()
with tempfile.TemporaryDirectory() as tmp:
    res = train(tr, Path(tmp) / "m", seed=int(sys.argv[3]), threads=int(sys.argv[4]))
    w, cpu = time.perf_counter() - t, time.process_time() - c
    pred = res.bundle.predict_proba(build_features(te)).argmax(axis=1)
print(json.dumps({"pred": pred.tolist(), "wall_s": round(w, 1), "cpu_s": round(cpu, 1),
                  "rounds": res.manifest["params"]["best_iteration"]}))
"""


def old_fpi(src: str, train_frame: pl.DataFrame, test_frame: pl.DataFrame, seed: int,
            threads: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Today's fpi (the old split protocol), from the source tree ``src``, in a subprocess."""
    with tempfile.TemporaryDirectory(prefix="fpi-bench-old-") as tmp:
        a, b = Path(tmp) / "train.parquet", Path(tmp) / "test.parquet"
        train_frame.write_parquet(a)
        test_frame.write_parquet(b)
        env = {**os.environ, "PYTHONPATH": src}
        out = subprocess.run([sys.executable, "-c", _OLD_SCRIPT, str(a), str(b), str(seed),
                              str(threads)], env=env, capture_output=True, text=True,
                             check=True, cwd=tmp)
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    return np.asarray(doc.pop("pred")), doc


def _frames(style: str, turns: int, test_turns: int, seed: int
            ) -> tuple[pl.DataFrame, pl.DataFrame]:
    from fpi.simulate import simulate_frame

    return (simulate_frame(turns, seed=seed, assistant=style),
            simulate_frame(test_turns, seed=seed + 1000, assistant=style))


def _f1(y: np.ndarray, pred: np.ndarray) -> float:
    from fpi.metrics import classification_metrics

    keep = y >= 0
    return round(float(classification_metrics(y[keep], pred[keep])["macro_f1"]), 4)


def cmd_curve(args: argparse.Namespace) -> list[dict[str, Any]]:
    from fpi.simulate import simulate_frame

    sizes = [int(s) for s in args.sizes.split(",")]
    big = simulate_frame(max(sizes), seed=args.seed, assistant=args.style)
    test = simulate_frame(args.test_turns, seed=args.seed + 1000, assistant=args.style)
    y = _labels(test)
    rows = []
    for n in sizes:
        # whole sessions: the first sessions holding about n turns
        sess = big["session_id"].unique(maintain_order=True)
        sizes_ = big.group_by("session_id", maintain_order=True).len()["len"].cum_sum()
        take = sess.filter(sizes_ <= n)
        frame = big.filter(pl.col("session_id").is_in(take.implode()))
        pred, facts = fpi_predict(frame, test, args.seed, args.threads)
        row = {"turns": frame.height, "macro_f1": _f1(y, pred), **facts}
        print(json.dumps(row), file=sys.stderr)
        rows.append(row)
    return rows


def cmd_compare(args: argparse.Namespace) -> dict[str, Any]:
    tr, te = _frames(args.style, args.turns, args.test_turns, args.seed)
    y = _labels(te)
    keep = y >= 0
    preds: dict[str, np.ndarray] = {}
    facts: dict[str, Any] = {}
    preds["fpi"], facts["fpi"] = fpi_predict(tr, te, args.seed, args.threads)
    start = _clock()
    preds["plain_lightgbm"] = plain_lightgbm(tr, te, args.seed, args.threads)
    facts["plain_lightgbm"] = _cost(start)
    if args.old_src:
        preds["old_fpi"], facts["old_fpi"] = old_fpi(args.old_src, tr, te, args.seed,
                                                     args.threads)
    f1 = {n: _f1(y, p) for n, p in preds.items()}
    ci = boot_macro_f1(y[keep], {n: p[keep] for n, p in preds.items()},
                       te["session_id"].to_numpy()[keep], reps=args.reps, seed=args.seed)
    return {"style": args.style, "turns": tr.height, "test_turns": te.height,
            "macro_f1": f1, "interval95": {k: [round(a, 4), round(b, 4)]
                                            for k, (a, b) in ci.items()}, "facts": facts}


def cmd_warm(args: argparse.Namespace) -> dict[str, Any]:
    from fpi import train
    from fpi.simulate import simulate_frame

    src = simulate_frame(args.from_turns, seed=args.seed + 7, assistant=args.from_style)
    tr, te = _frames(args.style, args.turns, args.test_turns, args.seed)
    y = _labels(te)
    out: dict[str, Any] = {"style": args.style, "from_style": args.from_style,
                           "turns": tr.height, "from_turns": src.height}
    with tempfile.TemporaryDirectory(prefix="fpi-bench-warm-") as tmp:
        start = _clock()
        base = train(src, Path(tmp) / "base", seed=args.seed, threads=args.threads)
        out["base_train"] = _cost(start)
        from fpi.features import build_features

        fte = build_features(te)
        out["base_only"] = _f1(y, base.bundle.predict_proba(fte).argmax(axis=1))
        pred, out["cold"] = fpi_predict(tr, te, args.seed, args.threads)
        out["cold_macro_f1"] = _f1(y, pred)
        pred, out["warm"] = fpi_predict(tr, te, args.seed, args.threads,
                                        init_model=base.path)
        out["warm_macro_f1"] = _f1(y, pred)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("curve", "compare", "warm"):
        p = sub.add_parser(name)
        p.add_argument("--style", default={"curve": "default", "compare": "terse",
                                           "warm": "ja"}[name])
        p.add_argument("--test-turns", type=int, default=6_000)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--threads", type=int, default=2)
        if name == "curve":
            p.add_argument("--sizes", default="500,1000,2000,4000,8000,30000")
        if name == "compare":
            p.add_argument("--turns", type=int, default=6_000)
            p.add_argument("--old-src", default=None)
            p.add_argument("--reps", type=int, default=200)
        if name == "warm":
            p.add_argument("--turns", type=int, default=500)
            p.add_argument("--from-style", default="default")
            p.add_argument("--from-turns", type=int, default=6_000)
    args = parser.parse_args()
    start = _clock()
    doc = {"curve": cmd_curve, "compare": cmd_compare, "warm": cmd_warm}[args.cmd](args)
    print(json.dumps({"result": doc, "total": _cost(start)}, indent=2))


if __name__ == "__main__":
    main()
