"""Benchmark the simulator: turns per second and peak memory for 1,000,000 turns.

Run by hand (not a test)::

    python benchmarks/bench_simulate.py                     # 1M turns, jsonl.gz
    python benchmarks/bench_simulate.py --turns 200000 --format parquet

Prints generation-only throughput (frames built, nothing written) and the full
``write_simulation`` throughput (simulate + write + truth file), each with the peak
resident memory of the process that ran it (every measurement in a fresh process,
so peaks do not mask each other). Target: 1M turns in under 2 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time


def _peak_rss_mb() -> float:
    # ru_maxrss is in kilobytes on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _child(mode: str, turns: int, fmt: str, out_dir: str) -> dict[str, float]:
    from fpi.simulate import simulate, write_simulation

    cpu0 = _cpu_s()
    start = time.perf_counter()
    if mode == "generate":
        n = 0
        for batch in simulate(turns, seed=1):
            n += batch.height
        size = 0
    else:
        suffix = {"events": "events.jsonl.gz"}.get(fmt, fmt)
        path = os.path.join(out_dir, f"bench.{suffix}")
        summary = write_simulation(path, turns=turns, seed=1, format=fmt)
        n = summary.turns
        size = os.path.getsize(path)
    wall = time.perf_counter() - start
    return {"turns": n, "seconds": wall, "cpu_seconds": _cpu_s() - cpu0, "turns_per_s": n / wall,
            "peak_rss_mb": _peak_rss_mb(), "bytes": size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=1_000_000)
    parser.add_argument("--format", default="jsonl.gz",
                        help="jsonl, jsonl.gz, jsonl.zst, parquet, csv or events")
    parser.add_argument("--child", choices=("generate", "write"), help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.turns, args.format, args.out_dir)))
        return

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, POLARS_MAX_THREADS="
          f"{os.environ.get('POLARS_MAX_THREADS', 'unset')}")
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("generate", "write"):
            out = subprocess.run(
                [sys.executable, __file__, "--child", mode, "--turns", str(args.turns),
                 "--format", args.format, "--out-dir", tmp],
                check=True, capture_output=True, text=True,
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            what = "generate only" if mode == "generate" else f"simulate + write {args.format}"
            size = f", {r['bytes'] / 1e6:.0f} MB written" if r["bytes"] else ""
            print(f"{what:28s} {r['turns']:>10,} turns in {r['seconds']:6.1f} s wall "
                  f"({r['cpu_seconds']:.1f} s CPU) = {r['turns_per_s']:>9,.0f} turns/s, "
                  f"peak RSS {r['peak_rss_mb']:.0f} MB{size}")
    # the machine is shared: a load average above the core count inflates wall time
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
