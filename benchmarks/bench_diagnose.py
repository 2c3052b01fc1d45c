"""Benchmark: fpi diagnose end to end on big simulated nights (run by hand).

    python benchmarks/bench_diagnose.py                      # 250k and 1M turns
    python benchmarks/bench_diagnose.py --sizes 100000       # quicker

For each size it simulates a night into Parquet (once, cached in --workdir),
trains one model on a baseline sample (once), then runs ``fpi.diagnose`` in a
fresh child process and prints each step's wall time and the child's peak RSS.
Memory should stay flat as the night grows (batches of whole sessions). It also
measures exact-attribution throughput (``--attribution all``) on a slice.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")


def child(night: Path, model: Path, out: Path, attribution: str, budget: float) -> None:
    from fpi.diagnose import diagnose

    t0 = time.perf_counter()
    res = diagnose([night], model=model, out_dir=out, attribution=attribution,
                   attribution_budget=budget, gates=["asr.estimate <= 0.5"])
    total = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"turns": res.summary["turns"], "total_s": round(total, 1),
                      "steps_s": {k: round(v, 1) for k, v in res.timings.items()},
                      "peak_rss_mb": round(rss_mb), "attributed":
                          res.summary["attribution"]["turns_attributed"],
                      "html_kb": round((out / "report.html").stat().st_size / 1024)}))


def regressions(workdir: Path, turns: int, train_turns: int) -> None:
    """Estimates vs truth, and which gate fails, on each regression profile."""
    from fpi.diagnose import diagnose
    from fpi.model import train
    from fpi.schema import CLASSES
    from fpi.simulate import PROFILES, simulate_frame, write_simulation

    workdir.mkdir(parents=True, exist_ok=True)
    model = workdir / "model"
    if not (model / "manifest.json").exists():
        train(simulate_frame(train_turns, seed=0), model, seed=0, threads=2)
    gates = [f"{c}.estimate <= baseline + 0.01" for c in CLASSES[1:]]
    base = None
    for prof in ("baseline", *(p for p in PROFILES if p != "baseline")):
        night = workdir / f"reg_{prof}_{turns}.parquet"
        if not night.exists():
            write_simulation(night, turns=turns, seed=11, profile=prof)
        truth = json.loads(Path(f"{night}.truth.json").read_text())["rates"]
        t0 = time.perf_counter()
        res = diagnose([night], model=model, out_dir=workdir / f"reg_out_{prof}",
                       attribution="none", examples=0, baseline=base,
                       gates=gates if base is not None else ())
        s = res.summary
        print(f"\n{prof}: {turns:,} turns, {time.perf_counter() - t0:.1f} s")
        print(f"  {'class':10} {'true':>7} {'estimate':>8} {'interval':>17} {'in':>3} "
              f"{'mean p':>7} {'argmax':>7}  gate")
        status = {g["key"].split(".")[0]: g["status"] for g in s["gates"]}
        for c in CLASSES:
            r = s["rates"][c]
            inside = "yes" if r["low"] <= truth[c] <= r["high"] else "NO"
            print(f"  {c:10} {truth[c]:7.4f} {r['estimate']:8.4f} [{r['low']:.4f}, "
                  f"{r['high']:.4f}] {inside:>3} {r['mean_probability']:7.4f} "
                  f"{r['count_rate']:7.4f}  {status.get(c, '')}")
        if base is None:
            base = workdir / "reg_out_baseline" / "summary.json"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[250_000, 1_000_000])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/fpi-bench-diagnose"))
    ap.add_argument("--train-turns", type=int, default=50_000)
    ap.add_argument("--attribution", default="sample")
    ap.add_argument("--budget", type=float, default=15.0)
    ap.add_argument("--all-rows", type=int, default=20_000,
                    help="rows for the --attribution all throughput figure")
    ap.add_argument("--child", nargs=3, metavar=("NIGHT", "MODEL", "OUT"))
    ap.add_argument("--regressions", type=int, default=0, metavar="TURNS",
                    help="instead: diagnose a night of TURNS per regression profile against "
                         "a baseline night, and print estimates, intervals, truth and gates")
    a = ap.parse_args()
    if a.child:
        child(Path(a.child[0]), Path(a.child[1]), Path(a.child[2]), a.attribution, a.budget)
        return
    if a.regressions:
        regressions(a.workdir, a.regressions, a.train_turns)
        return

    from fpi.features import build_features
    from fpi.model import load_bundle, train
    from fpi.simulate import simulate_frame, write_simulation

    a.workdir.mkdir(parents=True, exist_ok=True)
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores, python "
          f"{platform.python_version()}")
    model = a.workdir / "model"
    if not (model / "manifest.json").exists():
        t0 = time.perf_counter()
        train(simulate_frame(a.train_turns, seed=0), model, seed=0, threads=2)
        print(f"trained on {a.train_turns:,} turns in {time.perf_counter() - t0:.1f} s")
    bundle = load_bundle(model)
    print(f"model: {bundle.booster.num_trees()} trees, {len(bundle.features)} features")
    for n in a.sizes:
        night = a.workdir / f"night_{n}.parquet"
        if not night.exists():
            t0 = time.perf_counter()
            write_simulation(night, turns=n, seed=7, profile="asr_farfield")
            print(f"simulated {n:,} turns in {time.perf_counter() - t0:.1f} s")
        out = a.workdir / f"out_{n}"
        cmd = [sys.executable, __file__, "--child", str(night), str(model), str(out),
               "--attribution", a.attribution, "--budget", str(a.budget)]
        t0 = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode not in (0, 1):
            print(res.stderr)
            raise SystemExit(res.returncode)
        doc = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"diagnose {n:,} turns (attribution {a.attribution}): {doc} "
              f"[process wall {time.perf_counter() - t0:.1f} s]")
    # exact attribution throughput, for --attribution all
    import polars as pl

    night = a.workdir / f"night_{a.sizes[0]}.parquet"
    part = pl.read_parquet(night, n_rows=a.all_rows).sort("session_id", "turn_index")
    feats = build_features(part)
    t0 = time.perf_counter()
    bundle.contributions(feats)
    dt = time.perf_counter() - t0
    print(f"exact TreeSHAP (pred_contrib): {part.height:,} turns in {dt:.1f} s = "
          f"{part.height / dt:,.0f} turns/s; --attribution all on 1,000,000 turns "
          f"~ {1_000_000 / (part.height / dt):,.0f} s")


if __name__ == "__main__":
    main()
