"""In-style accuracy on every simulated assistant style (issue 13's first target).

Usage::

    python benchmarks/bench_styles.py [--turns 6000] [--test-turns 10000] [--seed 0]
        [--threads 2] [--styles default,terse,...] [--json]

For each style (``fpi simulate --assistant``), trains fpi (``fpi.train`` with its
default settings) on ``--turns`` labelled turns of that style (seed ``--seed``) and
scores the bundle with ``fpi.evaluate`` on ``--test-turns`` turns of the same
style simulated with another seed (``--seed + 1000``: no test session was seen in
training). Prints held-out macro-F1 and per-class F1 per style, the gap to the
default style (the issue's target: every style within 0.02 of default's), and the
load average, wall and CPU seconds of each style's run. Run by hand, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class StyleRun:
    """One style's held-out result and what it cost."""

    style: str
    train_turns: int
    test_turns: int
    macro_f1: float
    per_class_f1: dict[str, float | None]
    rounds: int
    wall_s: float
    cpu_s: float
    load_avg: float


def run_style(style: str, turns: int, test_turns: int, seed: int, threads: int) -> StyleRun:
    """Simulate, train and evaluate one style."""
    from fpi import evaluate, train
    from fpi.schema import CLASSES
    from fpi.simulate import simulate_frame

    wall, cpu = time.perf_counter(), time.process_time()
    train_frame = simulate_frame(turns, seed=seed, assistant=style)
    test_frame = simulate_frame(test_turns, seed=seed + 1000, assistant=style)
    with tempfile.TemporaryDirectory(prefix="fpi-bench-styles-") as tmp:
        result = train(train_frame, Path(tmp) / "model", seed=seed, threads=threads)
        doc: dict[str, Any] = evaluate(test_frame, result.bundle).to_dict()
    return StyleRun(
        style=style,
        train_turns=train_frame.height,
        test_turns=doc["n_turns"],
        macro_f1=float(doc["macro_f1"]),
        per_class_f1={c: doc["per_class"][c]["f1"] for c in CLASSES},
        rounds=int(result.manifest["params"]["best_iteration"]),
        wall_s=time.perf_counter() - wall,
        cpu_s=time.process_time() - cpu,
        load_avg=os.getloadavg()[0],
    )


def print_table(runs: list[StyleRun]) -> None:
    """Per-style macro-F1, gap to default, per-class F1 and cost."""
    from fpi.schema import CLASSES

    default = next((r.macro_f1 for r in runs if r.style == "default"), None)

    def f(x: float | None) -> str:
        return "    -" if x is None else f"{x:.3f}"

    print(f"{'style':<8} {'macro':>6} {'vs def':>7} "
          + " ".join(f"{c[:7]:>7}" for c in CLASSES)
          + f" {'rounds':>6} {'wall s':>7} {'cpu s':>6} {'load':>5}")
    for r in runs:
        gap = "" if default is None else f"{r.macro_f1 - default:+.3f}"
        print(f"{r.style:<8} {r.macro_f1:>6.3f} {gap:>7} "
              + " ".join(f"{f(r.per_class_f1[c]):>7}" for c in CLASSES)
              + f" {r.rounds:>6} {r.wall_s:>7.1f} {r.cpu_s:>6.1f} {r.load_avg:>5.1f}")


def main() -> None:
    from fpi.simulate import STYLES

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--turns", type=int, default=6_000, help="labelled training turns")
    parser.add_argument("--test-turns", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--styles", default=",".join(STYLES),
                        help="comma-separated style names (default: all)")
    parser.add_argument("--json", action="store_true", help="print the runs as JSON")
    args = parser.parse_args()

    runs: list[StyleRun] = []
    start = time.perf_counter()
    for style in args.styles.split(","):
        run = run_style(style, args.turns, args.test_turns, args.seed, args.threads)
        print(f"{style}: macro-F1 {run.macro_f1:.3f} ({run.wall_s:.0f} s)", file=sys.stderr)
        runs.append(run)
    if args.json:
        print(json.dumps([asdict(r) for r in runs], indent=2))
        return
    print(f"trained on {args.turns} labelled turns per style (seed {args.seed}), held-out "
          f"{args.test_turns} turns (seed {args.seed + 1000}), threads {args.threads}; "
          f"total wall {time.perf_counter() - start:.0f} s")
    print_table(runs)


if __name__ == "__main__":
    main()
