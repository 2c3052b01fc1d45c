"""Benchmark ``fpi ingest`` against the bare JSON readers on the same file.

Writes N realistic turn records (about 1.2 KB each, nested as in the trace
format, from ``fpi.simulate``) as JSON Lines, then times, each in its own fresh
subprocess so that peak memory is the reader's alone:

* ``polars.read_ndjson`` (bare, no validation),
* ``pyarrow.json.read_json`` (bare, no validation),
* orjson, one ``loads`` per line (parsing only, nothing kept),
* ``fpi ingest`` (parsing, every rule, rejects, sorted canonical Parquet out),
* ``fpi ingest --threads 1`` (``fpi1``: one block parsed at a time, the least CPU).

Prints wall seconds, CPU seconds, peak RSS (GB) and the ratios to pyarrow, as
medians over interleaved rounds (``--repeat``, default 3). Usage::

    python benchmarks/bench_ingest.py --turns 1000000 [--repeat 5] [--readers pyarrow,fpi]
        [--shuffled]   # lines in random order: ingest must also sort

The data file is kept between runs (rewritten with ``--regenerate``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

_CHILD = r"""
import json, resource, sys, time
kind, path, out = sys.argv[1], sys.argv[2], sys.argv[3]
t0 = time.perf_counter()
if kind == "polars":
    import polars as pl
    n = pl.read_ndjson(path).height
elif kind == "pyarrow":
    import pyarrow.json as pj
    n = pj.read_json(path).num_rows
elif kind == "orjson":
    import orjson
    n = 0
    with open(path, "rb") as fh:
        for line in fh:
            orjson.loads(line)
            n += 1
elif kind in ("fpi", "fpi1"):
    from fpi.ingest import ingest
    n = ingest(path, out, **({"threads": 1} if kind == "fpi1" else {})).turns_kept
else:
    raise SystemExit(f"unknown reader {kind}")
seconds = time.perf_counter() - t0
# VmHWM, not ru_maxrss: ru_maxrss survives exec and would count the parent.
peak_kb = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
ru = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"rows": n, "seconds": seconds, "cpu_seconds": ru.ru_utime + ru.ru_stime,
                  "peak_gb": peak_kb * 1024 / 1e9}))
"""

READERS = ("polars", "pyarrow", "orjson", "fpi", "fpi1")


def make_data(path: Path, turns: int) -> None:
    """Write ``turns`` simulated turn records as JSON Lines (kept for later runs)."""
    from fpi.simulate import write_simulation

    t0 = time.perf_counter()
    tmp = path.with_suffix(".tmp.jsonl")
    write_simulation(tmp, turns=turns, seed=0, format="jsonl")
    tmp.rename(path)
    Path(str(tmp) + ".truth.json").unlink(missing_ok=True)
    size = path.stat().st_size
    print(f"wrote {turns:,} turns, {size / 1e9:.2f} GB ({size / turns:.0f} B/turn) "
          f"in {time.perf_counter() - t0:.0f} s -> {path}", flush=True)


def shuffle_lines(src: Path, dst: Path) -> None:
    """The same records with the lines in random order: sessions interleaved, as a live
    assistant logs them (the worst case for ingest's sort)."""
    lines = src.read_bytes().split(b"\n")
    if not lines[-1]:
        lines.pop()
    random.Random(0).shuffle(lines)
    tmp = dst.with_suffix(".tmp")
    tmp.write_bytes(b"\n".join(lines) + b"\n")
    tmp.rename(dst)


def run_reader(kind: str, path: Path, out: Path, cores: int | None = None) -> dict[str, float]:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    pin = ["taskset", "-c", f"0-{cores - 1}"] if cores else []
    proc = subprocess.run([*pin, sys.executable, "-c", _CHILD, kind, str(path), str(out)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--turns", type=int, default=1_000_000)
    ap.add_argument("--data-dir", type=Path, default=Path("/work/bench_data"))
    ap.add_argument("--regenerate", action="store_true")
    ap.add_argument("--shuffled", action="store_true",
                    help="read the records in random line order (sessions interleaved)")
    ap.add_argument("--cores", type=int, default=None,
                    help="pin every reader to the first N cores (taskset); 1 compares total work")
    ap.add_argument("--repeat", type=int, default=3,
                    help="rounds of interleaved runs (medians are reported)")
    ap.add_argument("--readers", default=",".join(READERS),
                    help="comma-separated subset of: " + ", ".join(READERS))
    args = ap.parse_args()
    args.data_dir.mkdir(parents=True, exist_ok=True)
    path = args.data_dir / f"turns-{args.turns}.jsonl"
    if args.regenerate or not path.exists():
        make_data(path, args.turns)
    if args.shuffled:
        shuffled = args.data_dir / f"turns-{args.turns}-shuffled.jsonl"
        if args.regenerate or not shuffled.exists():
            shuffle_lines(path, shuffled)
        path = shuffled
    out = args.data_dir / f"turns-{args.turns}.parquet"
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}; file {path.stat().st_size / 1e9:.2f} GB", flush=True)
    # Readers run interleaved, round after round, so that a busy spell on this
    # shared machine hits every reader alike; ratios are taken within a round.
    rounds: list[dict[str, dict[str, float]]] = []
    for r in range(args.repeat):
        results: dict[str, dict[str, float]] = {}
        for kind in args.readers.split(","):
            results[kind] = run_reader(kind, path, out, args.cores)
            print(f"  round {r + 1} {kind}: {results[kind]}", flush=True)
        rounds.append(results)
    print()
    print(f"{'reader':<22}{'seconds':>10}{'x pyarrow':>11}{'CPU s':>8}{'x pyarrow':>11}"
          f"{'peak GB':>9}")
    labels = {"polars": "polars.read_ndjson", "pyarrow": "pyarrow.json.read_json",
              "orjson": "orjson per line", "fpi": "fpi ingest",
              "fpi1": "fpi ingest --threads 1"}
    for kind in args.readers.split(","):
        runs = [rd[kind] for rd in rounds if "error" not in rd[kind]]
        if not runs:
            print(f"{labels[kind]:<22}  error: {rounds[0][kind]['error']}")
            continue

        def ratio(key: str, kind: str = kind) -> str:
            values = [rd[kind][key] / rd["pyarrow"][key] for rd in rounds
                      if "error" not in rd[kind] and "error" not in rd.get("pyarrow", {"error": 1})]
            return f"{statistics.median(values):.2f}" if values else "-"

        print(f"{labels[kind]:<22}{statistics.median(r['seconds'] for r in runs):>10.1f}"
              f"{ratio('seconds'):>11}{statistics.median(r['cpu_seconds'] for r in runs):>8.1f}"
              f"{ratio('cpu_seconds'):>11}{max(r['peak_gb'] for r in runs):>9.2f}")
    print(f"\n(medians over {args.repeat} interleaved rounds; 'x pyarrow' is the median of the "
          "per-round ratios; seconds: wall clock; CPU s: user + system time of the reader's "
          "process; peak GB: the highest of the rounds)")


if __name__ == "__main__":
    main()
