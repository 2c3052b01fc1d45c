"""Benchmark: fpi diagnose's partitioned scoring on Dask (run by hand; needs fpi[dask]).

    python benchmarks/bench_scale.py                       # 100k turns, 1 and 2 workers
    python benchmarks/bench_scale.py --turns 1000000 --workers 1 2 4

Simulates a night (once, cached in --workdir), trains one small model (once), then per
worker count N: starts a LocalCluster of N single-threaded workers (timed), scores the
night's partitions of ``--partition-turns`` turns into their mergeable statistics
(``score_partition`` + ``partition_stats``: the work ``fpi diagnose`` ships), and
stops the cluster (timed). It prints:

- turns per CPU-second per worker (workers' user+system CPU, from ``os.times`` on each;
  it includes each worker loading the model once) and turns per wall-second per worker;
- bytes returned per partition (a PartitionStats, pickled: what travels to the driver),
  in the second round (``fetch_rows``: the chosen sample rows' features and text), and
  both rounds of one partition together per 25k turns;
- the driver's merge time as the number of partitions (so turns) grows;
- the 1-minute load average beside every wall time: wall-clock scaling only means
  something while the load stays below the number of cores.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import time
from pathlib import Path
from typing import Any

import numpy as np


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _worker_cpu(engine: Any) -> float:
    """Sum of user + system CPU seconds of every worker process."""
    times = engine.client.run(os.times)
    return float(sum(t[0] + t[1] for t in times.values()))


def prepare(workdir: Path, turns: int, train_turns: int) -> tuple[Path, Path]:
    from fpi.model import train
    from fpi.simulate import simulate_frame, write_simulation

    workdir.mkdir(parents=True, exist_ok=True)
    night = workdir / f"night_{turns}.parquet"
    if not night.exists():
        write_simulation(night, turns=turns, seed=11)
    model = workdir / "model"
    if not (model / "manifest.json").exists():
        train(simulate_frame(train_turns, seed=0), model, seed=0, threads=2)
    return night, model


def one_size(night: Path, model: Path, workers: int, partition_turns: int) -> dict[str, Any]:
    from fpi.diagnose.partition import (
        ModelRef,
        PartitionTask,
        ScoreSettings,
        StatsSpec,
        fetch_rows,
        merge_stats,
        partition_stats,
        score_partition,
        session_ranges,
    )
    from fpi.engine.dask import DaskEngine
    from fpi.model import load_bundle

    bundle = load_bundle(model)
    sources = session_ranges(str(night), partition_turns)
    tasks = [PartitionTask(i, s, ModelRef.of(bundle), ScoreSettings()) for i, s in
             enumerate(sources)]
    turns = sum(s.length or 0 for s in sources)
    t0, load0 = time.perf_counter(), _load()
    engine = DaskEngine(workers=workers, timeout=120)
    start_s = time.perf_counter() - t0
    try:
        cpu0 = _worker_cpu(engine)
        t1 = time.perf_counter()
        handles = engine.map(score_partition, tasks)
        stats = engine.gather(engine.map(partition_stats, handles, StatsSpec()))
        wall = time.perf_counter() - t1
        merged = merge_stats(stats)
        chosen = {n: f.select("session_id", "turn_index") for n in ("examples", "attribution",
                  "pool") if (f := getattr(merged, n)) is not None}
        fetched = engine.gather(engine.map(fetch_rows, handles, chosen))
        load1 = _load()
        cpu = _worker_cpu(engine) - cpu0
    finally:
        t2 = time.perf_counter()
        engine.close()
        stop_s = time.perf_counter() - t2
    sizes = [len(pickle.dumps(s, protocol=pickle.HIGHEST_PROTOCOL)) for s in stats]
    per_25k = [b * 25_000 / max(s.turns, 1) for b, s in zip(sizes, stats, strict=True)]
    fetch_sizes = [len(pickle.dumps(f, protocol=pickle.HIGHEST_PROTOCOL)) for f in fetched]
    both_25k = [(b + f) * 25_000 / max(s.turns, 1)
                for b, f, s in zip(sizes, fetch_sizes, stats, strict=True)]
    merges = {}
    for m in (len(stats), 4 * len(stats), 16 * len(stats)):
        parts = (stats * (m // len(stats) + 1))[:m]
        t3 = time.perf_counter()
        merge_stats(parts)
        merges[m * turns // len(stats)] = round(time.perf_counter() - t3, 3)
    return {
        "workers": workers, "turns": turns, "partitions": len(tasks),
        "cluster_start_s": round(start_s, 2), "load_at_start": load0,
        "score_wall_s": round(wall, 2), "load_after_score": load1,
        "worker_cpu_s": round(cpu, 2),
        "turns_per_cpu_s_per_worker": round(turns / max(cpu, 1e-9)),
        "turns_per_wall_s_per_worker": round(turns / wall / workers),
        "bytes_per_partition_median": int(np.median(sizes)),
        "bytes_per_25k_turns_max": int(max(per_25k)),
        "fetch_bytes_per_partition_max": max(fetch_sizes),
        "fetch_bytes_night_total": sum(fetch_sizes),
        # both rounds of one partition, scaled to 25k turns (the target: under 200 KB)
        "both_rounds_bytes_per_25k_turns_max": int(max(both_25k)),
        "driver_merge_s_by_turns": merges, "load_at_merge": _load(),
        "cluster_stop_s": round(stop_s, 2), "load_at_stop": _load(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--turns", type=int, default=100_000)
    ap.add_argument("--train-turns", type=int, default=20_000)
    ap.add_argument("--partition-turns", type=int, default=25_000)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/fpi-bench-scale"))
    args = ap.parse_args()
    night, model = prepare(args.workdir, args.turns, args.train_turns)
    print(json.dumps({"cores": len(os.sched_getaffinity(0)), "load": _load()}))
    rows = []
    for n in args.workers:
        row = one_size(night, model, n, args.partition_turns)
        rows.append(row)
        print(json.dumps(row))
    if len(rows) > 1:
        base = rows[0]["turns_per_cpu_s_per_worker"]
        print(json.dumps({"per_worker_cpu_throughput_vs_first": [
            round(r["turns_per_cpu_s_per_worker"] / base, 3) for r in rows]}))


if __name__ == "__main__":
    main()
