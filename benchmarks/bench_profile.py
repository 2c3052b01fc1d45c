"""Profile `fpi diagnose` per step and per feature group: wall and CPU seconds (run by hand).

    python benchmarks/bench_profile.py                        # 1M turns
    python benchmarks/bench_profile.py --turns 200000 --predictor lightgbm

Simulates a night (once, cached in --workdir), trains a model on 50k turns (once), then
runs ``fpi.diagnose`` in a fresh child process with the steps it calls wrapped in timers:
read (Parquet batches), features, predict (raw margins), calibrate, slices,
aggregate/bootstrap, attribution, write. Each step gets its wall and CPU seconds
(``getrusage``: user + system of every thread of the process) and the load average
when it last ended; "other" is the rest of the run. Then, in the same child, the
feature stages of :func:`fpi.features.profile_stages` are timed one by one over the
same batches. CPU seconds are what to compare on a shared machine: wall time grows
with the load of other jobs, CPU time much less.

The profiled run scores one partition at a time (``LocalEngine(threads=1)``), so that
the steps do not overlap and each step's CPU is its own; ``fpi diagnose`` scores one
partition per core at a time by default (time the command itself for its wall time).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "2")


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Meter:
    """Wall and CPU seconds per step; nested timed calls count only in the outermost."""

    def __init__(self) -> None:
        self.steps: dict[str, dict[str, float]] = {}
        self._depth = 0

    def add(self, step: str, wall: float, cpu: float) -> None:
        s = self.steps.setdefault(step, {"wall_s": 0.0, "cpu_s": 0.0, "calls": 0})
        s["wall_s"] += wall
        s["cpu_s"] += cpu
        s["calls"] += 1
        s["load1"] = os.getloadavg()[0]

    def wrap(self, step: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if self._depth:
                return fn(*args, **kwargs)
            self._depth += 1
            w, c = time.perf_counter(), _cpu()
            try:
                return fn(*args, **kwargs)
            finally:
                self._depth -= 1
                self.add(step, time.perf_counter() - w, _cpu() - c)
        return timed

    def wrap_iter(self, step: str, fn: Callable[..., Iterator[Any]]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Iterator[Any]:
            it = iter(fn(*args, **kwargs))
            while True:
                w, c = time.perf_counter(), _cpu()
                try:
                    item = next(it)
                except StopIteration:
                    self.add(step, time.perf_counter() - w, _cpu() - c)
                    return
                self.add(step, time.perf_counter() - w, _cpu() - c)
                yield item
        return timed


def _instrument(meter: Meter) -> None:
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    from fpi import model
    from fpi.diagnose import attribution, partition
    from fpi.diagnose import run as d
    from fpi.model import calibration

    partition.PartitionSource.read = meter.wrap(  # type: ignore[method-assign]
        "read", partition.PartitionSource.read)
    partition.build_features = meter.wrap(
        "features", partition.build_features)
    model.ModelBundle.raw_margin = meter.wrap(  # type: ignore[method-assign]
        "predict", model.ModelBundle.raw_margin)
    model.ModelBundle.contributions = meter.wrap(  # type: ignore[method-assign]
        "attribution",
                                                 model.ModelBundle.contributions)
    calibration.Calibration.apply = meter.wrap(  # type: ignore[method-assign]
        "calibrate", calibration.Calibration.apply)
    partition.slice_columns = meter.wrap(
        "slices", partition.slice_columns)
    d.slice_rates_from_sums = meter.wrap(
        "slices", d.slice_rates_from_sums)
    partition.partition_stats = meter.wrap(
        "aggregate/bootstrap", partition.partition_stats)
    for name in ("rates_from_stats", "compare_rates"):
        setattr(d, name, meter.wrap("aggregate/bootstrap", getattr(d, name)))
    for name in ("measure", "summarize", "grouped", "for_class", "bottom_k"):
        setattr(attribution, name, meter.wrap("attribution", getattr(attribution, name)))
    for name in ("write_reports", "write_predictions"):
        setattr(d, name, meter.wrap("write", getattr(d, name)))
    pq.ParquetWriter.write_table = meter.wrap("write", pq.ParquetWriter.write_table)


def _feature_groups(night: Path, batch_turns: int) -> dict[str, dict[str, float]]:
    import polars as pl

    from fpi.diagnose.partition import session_ranges
    from fpi.features import ENGINE, profile_stages

    out: dict[str, dict[str, float]] = {}
    stages = profile_stages()
    for part in session_ranges(str(night), batch_turns):
        base = part.read().rechunk().lazy()
        for i, (name, step) in enumerate(stages):
            w, c = time.perf_counter(), _cpu()
            frame: pl.DataFrame = step(base).collect(engine=ENGINE)
            s = out.setdefault(name, {"wall_s": 0.0, "cpu_s": 0.0})
            s["wall_s"] += time.perf_counter() - w
            s["cpu_s"] += _cpu() - c
            s["load1"] = os.getloadavg()[0]
            if i == 0:
                base = frame.lazy()  # later stages read the shared helper columns
    return out


def child(night: Path, model: Path, out: Path, attribution: str, groups: bool) -> None:
    from fpi.diagnose import diagnose
    from fpi.engine import LocalEngine

    meter = Meter()
    _instrument(meter)
    w, c = time.perf_counter(), _cpu()
    with LocalEngine(threads=1) as engine:  # steps in turn: each step's CPU is its own
        res = diagnose([night], model=model, out_dir=out, attribution=attribution,
                       gates=["asr.estimate <= 0.5"], engine=engine)
    total = {"wall_s": time.perf_counter() - w, "cpu_s": _cpu() - c,
             "load1": os.getloadavg()[0]}
    timed_wall = sum(s["wall_s"] for s in meter.steps.values())
    timed_cpu = sum(s["cpu_s"] for s in meter.steps.values())
    meter.steps["other"] = {"wall_s": total["wall_s"] - timed_wall,
                            "cpu_s": total["cpu_s"] - timed_cpu, "calls": 1,
                            "load1": total["load1"]}
    doc: dict[str, Any] = {
        # a copy: the feature-group pass below reads the batches again (timed as "read")
        "turns": res.summary["turns"], "total": total,
        "steps": {k: dict(v) for k, v in meter.steps.items()},
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "predictor": os.environ.get("FPI_PREDICTOR", "auto"),
    }
    if groups:
        doc["feature_groups"] = _feature_groups(night, 100_000)
    print(json.dumps(doc))


def _table(title: str, rows: dict[str, dict[str, float]], turns: int) -> None:
    scale = 1_000_000 / max(turns, 1)
    print(f"\n{title}")
    print(f"  {'step':52} {'wall s':>8} {'CPU s':>8} {'CPU s/1M':>9} {'load1':>6}")
    for name, s in rows.items():
        print(f"  {name:52} {s['wall_s']:8.2f} {s['cpu_s']:8.2f} "
              f"{s['cpu_s'] * scale:9.2f} {s.get('load1', float('nan')):6.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--turns", type=int, default=1_000_000)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/fpi-bench-profile"))
    ap.add_argument("--model", type=Path, help="bundle to use (default: train one in workdir)")
    ap.add_argument("--train-turns", type=int, default=50_000)
    ap.add_argument("--attribution", default="sample")
    ap.add_argument("--predictor", choices=("auto", "compiled", "lightgbm"),
                    help="sets FPI_PREDICTOR for the diagnose run")
    ap.add_argument("--no-groups", action="store_true", help="skip the feature-group pass")
    ap.add_argument("--child", nargs=3, metavar=("NIGHT", "MODEL", "OUT"))
    a = ap.parse_args()
    if a.child:
        child(Path(a.child[0]), Path(a.child[1]), Path(a.child[2]), a.attribution,
              not a.no_groups)
        return
    from fpi.model import train
    from fpi.simulate import simulate_frame, write_simulation

    a.workdir.mkdir(parents=True, exist_ok=True)
    model = a.model or a.workdir / "model"
    if not (model / "manifest.json").exists():
        train(simulate_frame(a.train_turns, seed=0), model, seed=0, threads=2)
    night = a.workdir / f"night_{a.turns}.parquet"
    if not night.exists():
        write_simulation(night, turns=a.turns, seed=7, profile="asr_farfield")
    env = dict(os.environ)
    if a.predictor:
        env["FPI_PREDICTOR"] = a.predictor
    cmd = [sys.executable, __file__, "--child", str(night), str(model),
           str(a.workdir / "out"), "--attribution", a.attribution]
    if a.no_groups:
        cmd.append("--no-groups")
    res = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if res.returncode not in (0, 1):
        print(res.stderr)
        raise SystemExit(res.returncode)
    doc = json.loads(res.stdout.strip().splitlines()[-1])
    t = doc["total"]
    print(f"fpi diagnose {doc['turns']:,} turns, predictor {doc['predictor']}, "
          f"{os.cpu_count()} cores: wall {t['wall_s']:.1f} s, CPU {t['cpu_s']:.1f} s, "
          f"load1 {t['load1']:.2f}, peak RSS {doc['peak_rss_mb']:.0f} MB")
    _table("steps of the diagnose run (CPU = user + system, all threads)", doc["steps"],
           doc["turns"])
    if "feature_groups" in doc:
        _table("feature stages, timed one by one over the same batches (a second pass)",
               doc["feature_groups"], doc["turns"])
    print("\n" + json.dumps(doc))


if __name__ == "__main__":
    main()
