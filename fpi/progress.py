"""How the library reports progress: one small callback protocol, no rendering.

A long-running library function takes ``progress: Progress | None`` and calls
``progress(stage, done, total)`` as it goes: ``stage`` names the step (one of
:data:`UNITS`' keys), ``done`` counts what is finished so far and ``total`` is
what there is in all, or ``None`` when unknown. A new stage name means the
previous stage is over. The library never prints: the CLI renders these calls
(``fpi.cli._progress``, Rich on stderr, only on a terminal); a Python caller
may pass any callable, e.g. ``lambda stage, done, total: print(stage, done)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class Progress(Protocol):
    """``progress(stage, done, total)``: ``done`` of ``total`` units of ``stage`` are finished."""

    def __call__(self, stage: str, done: int, total: int | None, /) -> None: ...


#: What each stage counts (the CLI labels counts and rates with it).
UNITS: dict[str, str] = {
    "reading": "bytes",
    "checksums": "bytes",
    "predict": "turns",
    "rates": "steps",
    "attribution": "turns",
    "examples": "turns",
    "writing": "files",
    "features": "turns",
    "boosting": "rounds",
    "boosting (no context)": "rounds",
    "rule baseline": "steps",
    "simulating": "turns",
    "sorting": "buckets",
    "summaries": "files",
}


def unit(stage: str) -> str:
    """The unit ``stage`` counts (``items`` for a stage not in :data:`UNITS`)."""
    return UNITS.get(stage, "items")


def report(progress: Progress | None, stage: str, done: int, total: int | None) -> None:
    """Call ``progress`` if there is one (keeps call sites to one line)."""
    if progress is not None:
        progress(stage, done, total)


class ByteProgress:
    """``callback(bytes_done, bytes_total)``, the form ``fpi.ingest`` reads with, that can
    also report a later stage of the same run (:meth:`stage`, e.g. ingest's sort pass)."""

    def __init__(self, progress: Progress, stage: str) -> None:
        self._progress = progress
        self._stage = stage

    def __call__(self, done: int, total: int) -> None:
        self._progress(self._stage, done, total)

    def stage(self, stage: str, done: int, total: int | None) -> None:
        """Report ``done`` of ``total`` for another ``stage``."""
        self._progress(stage, done, total)


def bytes_callback(progress: Progress | None, stage: str = "reading") -> ByteProgress | None:
    """Adapt ``progress`` to the ``callback(bytes_done, bytes_total)`` form ``fpi.ingest`` takes."""
    return None if progress is None else ByteProgress(progress, stage)


def boosting_callback(progress: Progress | None, stage: str) -> Callable[[object], None] | None:
    """A LightGBM training callback reporting rounds done of ``num_boost_round``.

    Early stopping usually ends training before the last round: the total is an
    upper bound, and the stage simply ends early.
    """
    if progress is None:
        return None
    p = progress

    def on_round(env: object) -> None:
        p(stage, int(getattr(env, "iteration", 0)) + 1, int(getattr(env, "end_iteration", 0)))

    return on_round
