"""Regenerate the shipped sample logs: ``python sample_logs/make_samples.py [OUT_DIR]``.

Every file is what ``fpi simulate`` makes for its seed (see README.md here);
``tests/test_simulate_samples.py`` regenerates them and checks the shipped ones.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from fpi.files import write_bytes_atomic
from fpi.writers import turn_lines
from fpi.simulate import simulate_frame, write_simulation

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Sample:
    """One simulated sample file: the ``fpi simulate`` arguments that make it."""

    name: str
    turns: int
    seed: int
    profile: str
    labels: str
    format: str | None = None

    def command(self) -> str:
        """The equivalent command line."""
        fmt = f" --format {self.format}" if self.format else ""
        return (f"fpi simulate -o sample_logs/{self.name} --turns {self.turns} --seed {self.seed}"
                f" --profile {self.profile} --labels {self.labels}{fmt}")


SAMPLES: tuple[Sample, ...] = (
    Sample("train.jsonl.gz", 30_000, 101, "baseline", "both"),
    Sample("nightly.jsonl.gz", 10_000, 202, "er_outage_music", "none"),
    Sample("nightly.events.jsonl.gz", 10_000, 202, "er_outage_music", "none", "events"),
    Sample("baseline_night.jsonl.gz", 10_000, 303, "baseline", "none"),
    Sample("example.csv", 500, 404, "baseline", "both"),
)

#: broken.jsonl: 100 simulated turns (seed 505), with these lines (1-based) replaced
#: by a broken record, and the rule fpi ingest rejects each for.
BROKEN_SEED = 505
BROKEN_TURNS = 100


def _broken_records(lines: list[str]) -> dict[int, tuple[str, str]]:
    """Line number -> (replacement text, the rule it breaks)."""

    def edit(i: int, change: dict) -> str:
        obj = json.loads(lines[i - 1])
        for dotted, value in change.items():
            node = obj
            *path, last = dotted.split(".")
            for p in path:
                node = node[p]
            if value is _DELETE:
                del node[last]
            else:
                node[last] = value
        return json.dumps(obj, ensure_ascii=False)

    return {
        7: (lines[6][: len(lines[6]) // 2], "invalid_json"),
        15: ('["s-legacy", 0, "turn on the lights"]', "not_an_object"),
        23: (edit(23, {"session_id": _DELETE}), "missing_session_id"),
        31: (edit(31, {"turn_index": -1}), "bad_turn_index"),
        38: (edit(38, {"wake": _DELETE}), "missing_wake"),
        46: (edit(46, {"asr.confidence": 1.7}), "out_of_range"),
        53: (edit(53, {"result.latency_ms": -120.0}), "negative_duration"),
        61: (edit(61, {"result.status": "done"}), "bad_enum"),
        68: (edit(68, {"timestamp": "yesterday at noon"}), "bad_timestamp"),
        74: (edit(74, {"label.failure_point": "gremlins"}), "bad_label"),
        82: (edit(82, {"wake.score": "high"}), "bad_type"),
        90: (lines[88], "duplicate_turn"),
    }


class _Delete:
    pass


_DELETE = _Delete()


def broken_jsonl() -> tuple[str, dict[int, str]]:
    """The text of broken.jsonl and the rule each broken line breaks."""
    frame = simulate_frame(BROKEN_TURNS, seed=BROKEN_SEED, labels="gold")
    lines = turn_lines(frame)
    broken = _broken_records(lines)
    for i, (text, _) in broken.items():
        lines[i - 1] = text
    return "\n".join(lines) + "\n", {i: rule for i, (_, rule) in broken.items()}


#: Turns of train.jsonl.gz (its first, in file order) whose two labels make annotations.csv.
ANNOTATED_TURNS = 1_500


def annotations_csv(train: Path) -> str:
    """annotations.csv: the first turns of ``train`` labelled by two annotators.

    The gold label is annotator ``alice``'s, the simulated second annotator's is
    ``bob``'s: the generic label format ``fpi labels import`` reads, as a team would
    get it back from annotation.
    """
    from fpi.ingest import read_traces

    frame, _ = read_traces(train)
    head = frame.head(ANNOTATED_TURNS).select(
        "session_id", "turn_index",
        pl.col("label").struct.field("failure_point").alias("alice"),
        pl.col("label").struct.field("failure_point_2").alias("bob"))
    long = head.unpivot(index=["session_id", "turn_index"], variable_name="annotator",
                        value_name="failure_point").drop_nulls("failure_point")
    return long.sort("session_id", "turn_index", "annotator").write_csv()


def make(out_dir: str | Path = HERE) -> list[Path]:
    """Write every sample into ``out_dir``; return the paths written."""
    out = Path(out_dir)
    written: list[Path] = []
    for s in SAMPLES:
        summary = write_simulation(out / s.name, turns=s.turns, seed=s.seed, profile=s.profile,
                                   format=s.format, labels=s.labels)  # type: ignore[arg-type]
        written += [summary.path, summary.truth_path]
    text, _ = broken_jsonl()
    written.append(write_bytes_atomic(out / "broken.jsonl", text.encode()))
    written.append(write_bytes_atomic(out / "annotations.csv",
                                      annotations_csv(out / "train.jsonl.gz").encode()))
    return written


if __name__ == "__main__":
    for path in make(sys.argv[1] if len(sys.argv) > 1 else HERE):
        print(path)
