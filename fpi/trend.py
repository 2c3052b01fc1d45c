"""Trend over nights: read many ``summary.json`` files, order them, find steps.

The flow: :func:`find_summaries` turns files, directories and globs into
summary paths; :func:`read_night` reads and checks one; :func:`order_nights`
sorts them by the logs' time range (``run.time_range``; file modification time
for older summaries, with a warning); :func:`build_trend` computes each class's
band from the previous nights and the nights that stepped outside it, and
returns a :class:`Trend`, whose :meth:`Trend.to_dict` is ``trend.json``. The
renderers (:mod:`fpi.report.trend`) format that document and nothing else.

**The band rule.** For night *i* and class *c*, take the up to ``window``
latest earlier nights scored by the *same model* (rates of different models
are not comparable). With fewer than ``min_history`` of them the night is not
tested. Otherwise::

    reference = median of their estimates
    half      = max(median of their interval half-widths,
                    3 * 1.4826 * median absolute deviation of their estimates)
    band      = [reference - half, reference + half]

The night *stepped up* when its estimate is above the band **and** its own
interval lies wholly above the reference (down: the mirror image). The first
term is the typical uncertainty of one night, the second the night-to-night
spread actually seen; requiring the night's interval to exclude the reference
keeps a noisy night with a wide interval from being flagged.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fpi import __version__
from fpi.classes import CLASSES
from fpi.errors import InputError
from fpi.files import unique_paths
from fpi.progress import Progress, report

log = logging.getLogger(__name__)

#: Version of ``trend.json``'s keys.
TREND_SCHEMA_VERSION = 1
#: The series of a trend: each failure class, then any failure (``1 - correct``).
TREND_CLASSES: tuple[str, ...] = (*CLASSES[1:], "failure")
DEFAULT_WINDOW = 7
DEFAULT_MIN_HISTORY = 3
#: The MAD multiplier of the band (1.4826 MAD estimates a standard deviation).
SPREAD_SIGMAS = 3.0


@dataclass(frozen=True)
class Rate:
    """A rate with its interval."""

    estimate: float
    low: float
    high: float


@dataclass(frozen=True)
class Night:
    """What the trend keeps of one night's summary."""

    source: str
    label: str
    first: str | None
    last: str | None
    ordered_by: str  # "time_range" or "mtime"
    model_id: str | None
    turns: int
    rates: dict[str, Rate]
    gate_status: str
    gates: dict[str, dict[str, Any]]
    mtime: float = 0.0
    model_changed: bool = False


@dataclass(frozen=True)
class Band:
    """Where a class's rate sat on the previous nights of the same model."""

    reference: float
    low: float
    high: float
    nights: int


@dataclass
class Trend:
    """Nights in order, each class's band and step per night, and what was skipped."""

    nights: list[Night]
    bands: dict[str, list[Band | None]]
    steps: dict[str, list[str | None]]
    window: int
    min_history: int
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """``trend.json``: JSON-ready, deterministic for the same summaries and options."""
        return trend_document(self)


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------


def find_summaries(inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Summary files named by ``inputs``: files, directories holding ``summary.json``
    (searched recursively when not directly inside), and globs of either."""
    if not inputs:
        raise InputError("no input given: name summary.json files, their directories or globs")
    out: list[Path] = []
    for item in inputs:
        s = os.fspath(item)
        matches = ([Path(p) for p in sorted(glob.glob(s, recursive=True))]
                   if any(ch in s for ch in "*?[") and not Path(s).exists() else [Path(s)])
        if not matches:
            raise InputError(f"{s}: no file or directory matches this pattern")
        for path in matches:
            out.extend(_summaries_at(path))
    return unique_paths(out)


def _summaries_at(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        if (path / "summary.json").is_file():
            return [path / "summary.json"]
        found = sorted(path.rglob("summary.json"))
        if not found:
            raise InputError(f"{path}: no summary.json in this directory or below")
        return found
    raise InputError(f"{path}: no such file or directory")


def _number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _rate(doc: Any) -> Rate | None:
    if not isinstance(doc, Mapping) or not all(_number(doc.get(k))
                                               for k in ("estimate", "low", "high")):
        return None
    return Rate(float(doc["estimate"]), float(doc["low"]), float(doc["high"]))


def read_night(path: Path) -> Night:
    """Read and check one summary; :class:`InputError` naming the file and the problem."""
    from fpi.report import SUMMARY_SCHEMA_VERSION
    from fpi.runmeta import model_id

    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})"
                         ) from None
    except (json.JSONDecodeError, RecursionError) as exc:
        raise InputError(f"{path}: not JSON ({exc})") from None
    if not isinstance(doc, dict) or "schema_version" not in doc or "rates" not in doc:
        raise InputError(f"{path}: not an fpi summary.json (no schema_version/rates)")
    if doc["schema_version"] != SUMMARY_SCHEMA_VERSION:
        raise InputError(f"{path}: summary schema {doc['schema_version']!r} is not "
                         f"{SUMMARY_SCHEMA_VERSION}: re-run fpi diagnose on that night")
    rates = {c: _rate((doc["rates"] or {}).get(c) if isinstance(doc["rates"], Mapping)
                      else None) for c in CLASSES[1:]}
    rates["failure"] = _rate(doc.get("failure"))
    bad = [c for c, r in rates.items() if r is None]
    if bad:
        raise InputError(f"{path}: rates of {', '.join(bad)} are missing or not numbers "
                         "(estimate, low, high)")
    run = doc.get("run") if isinstance(doc.get("run"), Mapping) else {}
    tr = (run or {}).get("time_range")
    first, last = ((str(tr["first"]), str(tr["last"])) if isinstance(tr, Mapping)
                   and tr.get("first") and tr.get("last") else (None, None))
    gates = {str(g.get("name")): {k: g.get(k) for k in ("status", "value", "bound", "op", "key")}
             for g in doc.get("gates") or [] if isinstance(g, Mapping)}
    return Night(
        source=str(path), label=first[:10] if first else path.parent.name or path.stem,
        first=first, last=last, ordered_by="time_range" if first else "mtime",
        model_id=model_id(doc), turns=int(doc.get("turns") or 0),
        rates={c: r for c, r in rates.items() if r is not None},
        gate_status=str(doc.get("gate_status", "none")), gates=gates,
        mtime=path.stat().st_mtime)


def read_nights(paths: Sequence[Path], *, skip_bad: bool = False,
                progress: Progress | None = None) -> tuple[list[Night], list[str]]:
    """Every readable night and the warnings; a bad file raises unless ``skip_bad``."""
    nights, warnings = [], []
    for i, path in enumerate(paths):
        report(progress, "summaries", i, len(paths))
        try:
            nights.append(read_night(path))
        except InputError as exc:
            if not skip_bad:
                raise
            warnings.append(f"skipped {exc}")
    report(progress, "summaries", len(paths), len(paths))
    if not nights:
        raise InputError(f"no usable summary among the {len(paths)} given"
                         + (f" ({warnings[0]})" if warnings else ""))
    return nights, warnings


# ---------------------------------------------------------------------------
# Order, bands, steps
# ---------------------------------------------------------------------------


def _order_key(n: Night) -> tuple[str, str, str]:
    if n.first is not None:
        return n.first, n.last or "", n.source
    t = datetime.fromtimestamp(n.mtime, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return t, t, n.source


def order_nights(nights: Iterable[Night]) -> tuple[list[Night], list[str]]:
    """Nights by their logs' time range; unique labels; model changes marked."""
    ordered = sorted(nights, key=_order_key)
    warnings = []
    old = [n for n in ordered if n.first is None]
    if old:
        names = ", ".join(n.source for n in old[:3]) + (" ..." if len(old) > 3 else "")
        warnings.append(f"{len(old)} summar{'y has' if len(old) == 1 else 'ies have'} no "
                        f"run.time_range (written by an older fpi): ordered by file "
                        f"modification time ({names})")
    days: dict[str, int] = {}
    for n in ordered:
        days[n.label] = days.get(n.label, 0) + 1
    seen: dict[str, int] = {}
    out = []
    for i, n in enumerate(ordered):
        label = n.label
        if days[label] > 1 and n.first is not None:  # several nights a day: add the time
            label = n.first[:16].replace("T", " ")
        k = seen[label] = seen.get(label, 0) + 1
        label = label if k == 1 else f"{label} #{k}"
        changed = i > 0 and n.model_id != ordered[i - 1].model_id
        out.append(replace(n, label=label, model_changed=changed))
    return out, warnings


def band(history: Sequence[Rate]) -> Band:
    """The band of a class's rate on earlier nights (see the module docstring)."""
    est = [r.estimate for r in history]
    ref = statistics.median(est)
    mad = statistics.median(abs(e - ref) for e in est)
    half = max(statistics.median((r.high - r.low) / 2 for r in history),
               SPREAD_SIGMAS * 1.4826 * mad)
    return Band(ref, ref - half, ref + half, len(history))


def step(rate: Rate, b: Band | None) -> str | None:
    """``up``/``down`` when ``rate`` left band ``b`` and its interval excludes the reference."""
    if b is None:
        return None
    if rate.estimate > b.high and rate.low > b.reference:
        return "up"
    if rate.estimate < b.low and rate.high < b.reference:
        return "down"
    return None


def bands_and_steps(nights: Sequence[Night], cls: str, window: int, min_history: int
                    ) -> tuple[list[Band | None], list[str | None]]:
    """For one class: each night's band from earlier nights of its model, and its step."""
    bands: list[Band | None] = []
    steps: list[str | None] = []
    for i, n in enumerate(nights):
        history = [m.rates[cls] for m in nights[:i] if m.model_id == n.model_id][-window:]
        b = band(history) if len(history) >= min_history else None
        bands.append(b)
        steps.append(step(n.rates[cls], b))
    return bands, steps


def build_trend(inputs: Sequence[str | os.PathLike[str]], *, window: int = DEFAULT_WINDOW,
                min_history: int = DEFAULT_MIN_HISTORY, skip_bad: bool = False,
                progress: Progress | None = None) -> Trend:
    """Read the summaries named by ``inputs`` and compute the trend.

    Raises :class:`InputError` for a missing path or a bad summary (unless
    ``skip_bad``, which skips it with a warning), or when nothing usable is left.
    """
    if window < 1 or min_history < 1:
        raise InputError(f"--window ({window}) and --min-history ({min_history}) must be >= 1")
    if min_history > window:
        raise InputError(f"--min-history ({min_history}) cannot exceed --window ({window})")
    read, warnings = read_nights(find_summaries(inputs), skip_bad=skip_bad, progress=progress)
    nights, more = order_nights(read)
    bands, steps = {}, {}
    for c in TREND_CLASSES:
        bands[c], steps[c] = bands_and_steps(nights, c, window, min_history)
    for w in warnings + more:
        log.warning("%s", w)
    return Trend(nights, bands, steps, window, min_history, warnings + more)


# ---------------------------------------------------------------------------
# trend.json
# ---------------------------------------------------------------------------

_RULE = {
    "band": "previous `window` nights of the same model (at least `min_history`): "
            "reference = median estimate; half-width = max(median interval half-width, "
            "3 * 1.4826 * MAD of the estimates)",
    "step": "up: estimate > band high and interval low > reference; "
            "down: estimate < band low and interval high < reference",
}


def _r6(x: float) -> float:
    return round(x, 6) + 0.0


def _models(nights: Sequence[Night]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for n in nights:
        if out and out[-1]["id"] == n.model_id:
            out[-1]["last"], out[-1]["nights"] = n.label, out[-1]["nights"] + 1
        else:
            out.append({"id": n.model_id, "first": n.label, "last": n.label, "nights": 1})
    return out


def trend_document(t: Trend) -> dict[str, Any]:
    """The ``trend.json`` document of a :class:`Trend` (keys in ``docs/reports.md``)."""
    gate_names: list[str] = []
    for n in t.nights:
        gate_names += [g for g in n.gates if g not in gate_names]
    nights, steps = [], []
    for i, n in enumerate(t.nights):
        rates = {}
        for c in TREND_CLASSES:
            r, b, s = n.rates[c], t.bands[c][i], t.steps[c][i]
            bd = None if b is None else {"reference": _r6(b.reference), "low": _r6(b.low),
                                         "high": _r6(b.high), "nights": b.nights}
            rates[c] = {"estimate": _r6(r.estimate), "low": _r6(r.low), "high": _r6(r.high),
                        "band": bd, "step": s}
            if s is not None:
                steps.append({"night": n.label, "index": i, "class": c, "direction": s,
                              **{k: rates[c][k] for k in ("estimate", "low", "high", "band")},
                              "model_id": n.model_id})
        nights.append({
            "label": n.label, "source": n.source,
            "time_range": None if n.first is None else {"first": n.first, "last": n.last},
            "ordered_by": n.ordered_by, "model_id": n.model_id,
            "model_changed": n.model_changed, "turns": n.turns, "gate_status": n.gate_status,
            "gates": n.gates, "rates": rates})
    return {
        "schema_version": TREND_SCHEMA_VERSION, "kind": "fpi-trend", "fpi_version": __version__,
        "classes": list(TREND_CLASSES),
        "rule": {"window": t.window, "min_history": t.min_history, **_RULE},
        "nights": nights, "gates": gate_names, "steps": steps, "models": _models(t.nights),
        "warnings": list(t.warnings),
    }
