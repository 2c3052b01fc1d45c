"""Train on a million simulated turns: wall time and peak memory.

Usage::

    python benchmarks/bench_train.py [--turns 1000000] [--threads 2] [--seed 0]
        [--data FILE] [--out DIR] [--protocol auto|crossfit|holdout]
        [--max-fit-turns N] [--refit]

The turns are simulated first, in a separate process, into a canonical Parquet
file (not timed). Then this process reads it (the ingest fast path), builds the
features and trains the model and its no-context baseline, and writes the
bundle: that is what is timed. Peak memory is this process's maximum resident
set size (it includes the data, the features and LightGBM). Target (issue 12):
under 120 s at 1M turns on a 2-core machine, peak memory under 8 GB. ``--out``
keeps the bundle (e.g. for ``fpi evaluate`` on a separate simulated night).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _simulate(path: Path, turns: int, seed: int) -> None:
    code = (
        "import sys; from fpi.simulate import write_simulation; "
        "write_simulation(sys.argv[1], turns=int(sys.argv[2]), seed=int(sys.argv[3]), "
        "format='parquet')"
    )
    subprocess.run([sys.executable, "-c", code, str(path), str(turns), str(seed)], check=True)


def _cpu_s() -> float:
    """User + system CPU seconds of this process, all threads (getrusage)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=1_000_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, help="reuse this simulated Parquet file")
    parser.add_argument("--out", type=Path, help="write the bundle here (kept)")
    parser.add_argument("--protocol", default="auto", choices=("auto", "crossfit", "holdout"))
    parser.add_argument("--max-fit-turns", type=int, default=None,
                        help="holdout: the trees' sample (default: all)")
    parser.add_argument("--refit", action="store_true",
                        help="holdout: refit the shipped model (holdout_refit=True)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="fpi-bench-train-") as tmp:
        data = args.data or Path(tmp) / "turns.parquet"
        if args.data is None:
            t = time.perf_counter()
            _simulate(data, args.turns, args.seed)
            print(f"simulated {args.turns} turns in {time.perf_counter() - t:.1f} s (not timed)",
                  file=sys.stderr)

        from fpi.ingest import read_traces
        from fpi.model import train

        load_start = os.getloadavg()[0]
        start = time.perf_counter()
        cpu_start = _cpu_s()
        turns, _ = read_traces(data)
        read_s = time.perf_counter() - start
        cap = {} if args.max_fit_turns is None else {"max_fit_turns": args.max_fit_turns}
        result = train(turns, args.out or Path(tmp) / "model", seed=args.seed,
                       threads=args.threads, protocol=args.protocol,
                       holdout_refit=args.refit, **cap)
        wall = time.perf_counter() - start
        cpu = _cpu_s() - cpu_start
        peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux

        counts = result.manifest["training"]["counts"]
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores, "
              f"python {platform.python_version()}")
        print(f"turns: {turns.height} ({counts['train']['turns']} train, "
              f"{counts['test']['turns']} scored {result.manifest['training']['heldout_is']}, "
              f"protocol {result.manifest['training']['protocol']}); "
              f"threads: {args.threads}")
        print(f"read: {read_s:.1f} s; " + "; ".join(f"{k}: {v:.1f} s"
                                                   for k, v in result.timings.items()))
        t = result.manifest["training"]
        print(f"best iterations: model {result.manifest['params']['best_iteration']}, "
              f"no-context {result.manifest['no_context']['best_iteration']}; trees "
              f"trained on {t['counts']['train']['turns']} turns (max_fit_turns "
              f"{t.get('max_fit_turns', '-')}, shipped: {t['shipped']})")
        print(f"wall time (read + features + train both models + rules + write): {wall:.1f} s "
              f"(target < 120 s at 1M turns)")
        print(f"CPU time (user + sys, all threads, getrusage): {cpu:.1f} s; load average at "
              f"the start {load_start:.1f}, at the end {os.getloadavg()[0]:.1f} (other jobs "
              "on the machine slow the wall time)")
        print(f"peak memory (max RSS): {peak_gb:.2f} GB (target < 8 GB)")
        print(f"held-out macro-F1: {result.heldout['macro_f1']:.4f}")


if __name__ == "__main__":
    main()
