"""Accuracy on simulated sessions never seen in training: model vs baselines vs human.

Usage::

    python benchmarks/bench_accuracy.py [--train-turns 200000] [--test-turns 60000]
        [--seed 0] [--threads 2] [--profile baseline] [--json]

Trains on turns simulated with ``--seed`` and evaluates on turns simulated with
another seed (``--seed + 1000``), so no test session was seen in training. Prints
per-class F1 of the model, the no-context model, the first-bad-stage rule and the
second annotator (against gold), and the model's F1 as a percentage of human.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-turns", type=int, default=200_000)
    parser.add_argument("--test-turns", type=int, default=60_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", default="baseline")
    parser.add_argument("--json", action="store_true", help="print the evaluation document")
    args = parser.parse_args()

    from fpi.evaluate import evaluate
    from fpi.model import train
    from fpi.schema import CLASSES
    from fpi.simulate import simulate_frame

    t = time.perf_counter()
    train_turns = simulate_frame(args.train_turns, seed=args.seed, profile=args.profile)
    test_turns = simulate_frame(args.test_turns, seed=args.seed + 1000, profile=args.profile)
    print(f"simulated {train_turns.height} + {test_turns.height} turns in "
          f"{time.perf_counter() - t:.1f} s", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="fpi-bench-acc-") as tmp:
        t = time.perf_counter()
        result = train(train_turns, Path(tmp) / "model", seed=args.seed, threads=args.threads)
        print(f"trained in {time.perf_counter() - t:.1f} s "
              f"({result.manifest['params']['best_iteration']} rounds)", file=sys.stderr)
        doc = evaluate(test_turns, result.bundle).to_dict()
    if args.json:
        print(json.dumps(doc, indent=2))
        return

    def f(x: float | None) -> str:
        return "    -" if x is None else f"{x:.3f}"

    base, human = doc["baselines"], doc["human"] or {"per_class": {}}
    print(f"held-out: {doc['n_turns']} turns (seed {args.seed + 1000}), "
          f"trained on {train_turns.height} (seed {args.seed}), profile {args.profile}")
    print(f"{'class':<11} {'support':>7} {'model':>6} {'no-ctx':>6} {'rules':>6} "
          f"{'human':>6} {'%human':>7}")
    for c in CLASSES:
        h = human["per_class"].get(c, {})
        pct = h.get("model_pct_of_human")
        print(f"{c:<11} {doc['per_class'][c]['support']:>7} {f(doc['per_class'][c]['f1']):>6} "
              f"{f(base['no_context']['per_class'][c]['f1']):>6} "
              f"{f(base['rules']['per_class'][c]['f1']):>6} {f(h.get('f1')):>6} "
              f"{'-' if pct is None else f'{pct:.1f}%':>7}")
    print(f"{'macro-F1':<11} {'':>7} {f(doc['macro_f1']):>6} "
          f"{f(base['no_context']['macro_f1']):>6} {f(base['rules']['macro_f1']):>6} "
          f"{f(human.get('macro_f1')):>6}")
    print(f"accuracy {doc['accuracy']:.4f}; calibration error (ECE) {doc['calibration_error']:.4f}")
    rates = doc["rate_estimate"]
    print("rate estimate (true -> mean prob): " + ", ".join(
        f"{c} {rates[c]['true']:.3f}->{rates[c]['mean_probability']:.3f}" for c in CLASSES))


if __name__ == "__main__":
    main()
