"""Simulated voice-assistant traces with a causal story and known failure points.

The public face of the simulator package. The generative story (docs/simulator.md):
sessions of users with a device, locale and hidden acoustic environment pursue
goals; each pipeline stage acts on the previous stage's output; the gold label
is the earliest stage whose error was not recovered; users react to failures in
the next turns. Profiles (:data:`PROFILES`) are named regressions of one
mechanism each.

>>> frame = simulate_frame(1_000, seed=1)  # doctest: +SKIP
>>> write_simulation("n.jsonl.gz", turns=10_000, seed=2, profile="asr_farfield")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from fpi.errors import InputError
from fpi.files import write_text_atomic
from fpi.progress import Progress, report
from fpi.schema import CLASSES, TURN_SCHEMA
from fpi.simulate import assemble, engine, world
from fpi.simulate.profiles import PROFILES, Profile
from fpi.simulate.styles import STYLES, AssistantStyle, get_style
from fpi.writers import TurnWriter

__all__ = [
    "PROFILES",
    "STYLES",
    "AssistantStyle",
    "Profile",
    "SimulationSummary",
    "simulate",
    "simulate_frame",
    "write_simulation",
]

log = logging.getLogger(__name__)

Labels = Literal["both", "gold", "none"]
#: Mean turns per session, used to size batches of whole sessions.
_TURNS_PER_SESSION = 3.0
DEFAULT_BATCH_SIZE = 20_000


def get_profile(profile: str | Profile) -> Profile:
    """Look a profile up by name (a :class:`Profile` passes through)."""
    if isinstance(profile, Profile):
        return profile
    try:
        return PROFILES[profile]
    except KeyError:
        raise InputError(
            f"unknown profile {profile!r}; known profiles: {', '.join(PROFILES)}"
        ) from None


def _check_labels(labels: str) -> None:
    if labels not in ("both", "gold", "none"):
        raise InputError(f"labels must be 'both', 'gold' or 'none', not {labels!r}")


def _sessions_per_batch(batch_size: int) -> int:
    return max(1, int(batch_size / _TURNS_PER_SESSION))


def _raw_batches(
    turns: int,
    seed: int,
    profile: Profile,
    batch_size: int,
    style: AssistantStyle = STYLES["default"],
) -> Iterator[tuple[pl.DataFrame, dict[str, np.ndarray]]]:
    """(frame with both labels, engine columns) per batch of whole sessions, ``turns`` in all.

    Batch ``b`` draws from ``SeedSequence([seed, b])`` only, so a shorter run is a
    prefix of a longer one (up to the cut of its last session).
    """
    if turns < 0:
        raise InputError(f"turns must be >= 0, not {turns}")
    per_batch = _sessions_per_batch(batch_size)
    done = 0
    batch = 0
    while done < turns:
        rng = np.random.default_rng(np.random.SeedSequence([seed, batch]))
        columns = engine.run_batch(profile, rng, per_batch, language=style.language)
        n_turns = len(columns["slot"])
        if done + n_turns > turns:  # the log ends mid-session: keep the first turns
            keep = turns - done
            columns = {name: values[:keep] for name, values in columns.items()}
            n_turns = keep
        frame = assemble.to_frame(columns, seed=seed, session_offset=batch * per_batch,
                                  style=style)
        yield frame, columns
        done += n_turns
        batch += 1


def _apply_labels(frame: pl.DataFrame, labels: str) -> pl.DataFrame:
    if labels == "both":
        return frame
    if labels == "none":
        return frame.with_columns(pl.lit(None, dtype=TURN_SCHEMA["label"]).alias("label"))
    return frame.with_columns(
        pl.col("label").struct.with_fields(
            pl.lit(None, dtype=pl.String).alias("failure_point_2")
        )
    )


def simulate(
    turns: int,
    *,
    seed: int = 0,
    profile: str | Profile = "baseline",
    batch_size: int = DEFAULT_BATCH_SIZE,
    labels: Labels = "both",
    assistant: str | AssistantStyle = "default",
) -> Iterator[pl.DataFrame]:
    """Simulate ``turns`` turns as canonical frames, a batch of whole sessions at a time.

    Parameters
    ----------
    turns
        Total number of turns (the last session may be cut short to hit it exactly).
    seed
        Same seed, profile and batch size: the same frames.
    profile
        A name in :data:`PROFILES` or a :class:`Profile`.
    batch_size
        Approximate turns per batch (memory stays flat whatever ``turns`` is).
    labels
        ``both`` (gold and a second annotator), ``gold``, or ``none`` (label null).
    assistant
        A name in :data:`STYLES` or an :class:`AssistantStyle`: the assistant's
        language, phrasing, confidence calibration and logged fields.

    Yields
    ------
    polars.DataFrame
        Frames with exactly :data:`fpi.schema.TURN_SCHEMA`, sorted by session and turn.
    """
    _check_labels(labels)
    prof = get_profile(profile)
    style = get_style(assistant)
    for frame, _ in _raw_batches(turns, seed, prof, batch_size, style):
        yield _apply_labels(frame, labels)


def simulate_frame(
    turns: int,
    *,
    seed: int = 0,
    profile: str | Profile = "baseline",
    labels: Labels = "both",
    assistant: str | AssistantStyle = "default",
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> pl.DataFrame:
    """All of :func:`simulate` in one canonical frame (the same arguments). Each batch
    simulates about ``batch_size`` turns' worth of sessions however few turns it keeps:
    a small frame is cheaper with a batch about the size of ``turns`` (other turns than
    the default batch's, for the same seed)."""
    frames = list(simulate(turns, seed=seed, profile=profile, labels=labels,
                           assistant=assistant, batch_size=batch_size))
    if not frames:
        return pl.DataFrame(schema=TURN_SCHEMA)
    return pl.concat(frames, how="vertical")


@dataclass
class _Tally:
    """True class counts overall and by device type / observed NLU domain."""

    total: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CLASSES, 0))
    by_device: dict[str, dict[str, int]] = field(default_factory=dict)
    by_domain: dict[str, dict[str, int]] = field(default_factory=dict)
    turns: int = 0
    sessions: int = 0

    def add(self, columns: dict[str, np.ndarray]) -> None:
        label = columns["label"]
        self.turns += len(label)
        self.sessions += int(np.count_nonzero(columns["pos"] == 0))
        for class_id, name in enumerate(CLASSES):
            self.total[name] += int(np.count_nonzero(label == class_id))
        for key, names, table in (
            ("dev", world.DEVICE_TYPES, self.by_device),
            ("nlu_dom", world.DOMAINS, self.by_domain),
        ):
            values = (columns[key] if key != "nlu_dom"
                      else world.INTENT_DOMAIN[columns["nlu_int"]])
            counts = np.zeros((len(names), len(CLASSES)), dtype=np.int64)
            np.add.at(counts, (values, label), 1)
            for value, name in enumerate(names):
                row = table.setdefault(name, dict.fromkeys(CLASSES, 0))
                for class_id, class_name in enumerate(CLASSES):
                    row[class_name] += int(counts[value, class_id])


def _rates(counts: dict[str, int]) -> dict[str, Any]:
    total = sum(counts.values())
    return {
        "turns": total,
        "counts": counts,
        "rates": {name: (count / total if total else 0.0) for name, count in counts.items()},
    }


@dataclass(frozen=True)
class SimulationSummary:
    """What :func:`write_simulation` wrote, with the true per-class counts and rates."""

    path: Path
    truth_path: Path
    format: str
    turns: int
    sessions: int
    seed: int
    profile: str
    labels: str
    assistant: str
    counts: dict[str, int]
    rates: dict[str, float]
    truth: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view."""
        view = asdict(self)
        view["path"] = str(self.path)
        view["truth_path"] = str(self.truth_path)
        return view


def _style_fields(style: AssistantStyle) -> dict[str, Any]:
    """The truth file's record of the assistant style (nothing for the default, whose
    truth files stay as they were)."""
    if style == STYLES["default"]:
        return {}
    return {"assistant": style.name, "assistant_description": style.description,
            "language": style.language}


def truth_path_for(path: str | os.PathLike[str]) -> Path:
    """Where the truth of a simulated file goes: ``<path>.truth.json``."""
    data = Path(path)
    return data.with_name(data.name + ".truth.json")


def write_simulation(
    path: str | os.PathLike[str],
    *,
    turns: int,
    seed: int = 0,
    profile: str | Profile = "baseline",
    format: str | None = None,
    labels: Labels = "both",
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Progress | None = None,
    assistant: str | AssistantStyle = "default",
) -> SimulationSummary:
    """Simulate into a file (streaming) and write ``<path>.truth.json`` beside it.

    The truth file holds the true per-class counts and rates, overall, by device
    type and by the domain NLU assigned (what a diagnosis can group by), plus the
    profile's description and documented expected effect.
    """
    _check_labels(labels)
    prof = get_profile(profile)
    style = get_style(assistant)
    tally = _Tally()
    with TurnWriter(path, format) as writer:
        for frame, columns in _raw_batches(turns, seed, prof, batch_size, style):
            tally.add(columns)
            writer.write(_apply_labels(frame, labels))
            log.debug("simulated %d turns", tally.turns)
            report(progress, "simulating", tally.turns, turns)
    truth: dict[str, Any] = {
        "generator": "fpi simulate",
        "profile": prof.name,
        "description": prof.description,
        "expected_effect": {k: list(v) for k, v in prof.expected.items()},
        **_style_fields(style),
        "seed": seed,
        "turns": tally.turns,
        "sessions": tally.sessions,
        "labels_written": labels,
        **_rates(tally.total),
        "by_device_type": {k: _rates(v) for k, v in tally.by_device.items()},
        "by_domain": {k: _rates(v) for k, v in tally.by_domain.items() if sum(v.values())},
    }
    tpath = truth_path_for(path)
    write_text_atomic(tpath, json.dumps(truth, indent=2, sort_keys=False) + "\n")
    return SimulationSummary(
        path=Path(path),
        truth_path=tpath,
        format=writer.format,
        turns=tally.turns,
        sessions=tally.sessions,
        seed=seed,
        profile=prof.name,
        labels=labels,
        assistant=style.name,
        counts=dict(tally.total),
        rates=dict(truth["rates"]),
        truth=truth,
    )
