"""Run metadata: what a diagnosis ran on, with what, when and where (``summary["run"]``).

Everything here differs from run to run (wall time, CI links, paths) or is only
known at run time, so it lives under one key that golden comparisons leave out;
the rest of the summary stays reproducible. See ``docs/reports.md``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fpi import __version__
from fpi.ci import ci_info
from fpi.files import file_sha256
from fpi.progress import Progress, report

if TYPE_CHECKING:  # fpi trend reads model ids here without loading Polars
    import polars as pl

Span = tuple[datetime, datetime]


def widen(span: Span | None, timestamps: pl.Series) -> Span | None:
    """``span`` grown to cover ``timestamps`` (nulls ignored): the logs' first and last turn."""
    lo, hi = timestamps.min(), timestamps.max()
    if not isinstance(lo, datetime) or not isinstance(hi, datetime):
        return span
    if span is None:
        return lo, hi
    return min(span[0], lo), max(span[1], hi)


def iso(t: datetime) -> str:
    """``2026-11-01T00:00:03Z`` (UTC, whole seconds)."""
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def time_range(span: Span | None) -> dict[str, str] | None:
    """``{"first": ..., "last": ...}`` of a span, or None when no turn had a timestamp."""
    return None if span is None else {"first": iso(span[0]), "last": iso(span[1])}


def sha256_file(path: Path, progress: Progress | None = None, done: int = 0,
                total: int | None = None) -> str:
    """``sha256:<hex>`` of a file, streamed (constant memory), reporting ``checksums``
    progress from ``done`` bytes on."""
    hashed = done

    def on_block(n: int) -> None:
        nonlocal hashed
        hashed += n
        report(progress, "checksums", hashed, total)

    return "sha256:" + file_sha256(path, on_block)


def input_files(paths: Sequence[str | os.PathLike[str]], progress: Progress | None = None
                ) -> list[dict[str, Any]]:
    """Each input file (directories and globs expanded): ``path``, ``bytes``, ``sha256``."""
    from fpi.ingest.sources import expand_paths

    files = expand_paths([os.fspath(p) for p in paths])
    sizes = [f.stat().st_size for f in files]
    total, done, out = sum(sizes), 0, []
    for f, size in zip(files, sizes, strict=True):
        out.append({"path": str(f), "bytes": size,
                    "sha256": sha256_file(f, progress, done, total)})
        done += size
    return out


def baseline_info(base: Mapping[str, Any] | None, source: Any) -> dict[str, Any] | None:
    """The baseline summary's id (sha256 of its file), path, model and logs' time range."""
    if base is None:
        return None
    if isinstance(source, str | os.PathLike) and Path(source).is_file():
        path: str | None = os.fspath(source)
        digest = hashlib.sha256(Path(source).read_bytes()).hexdigest()
    else:
        path = None
        text = json.dumps(base, sort_keys=True, ensure_ascii=False, default=str)
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    run = base.get("run") if isinstance(base.get("run"), Mapping) else {}
    return {"id": "sha256:" + digest, "path": path, "bundle_id": model_id(base),
            "time_range": (run or {}).get("time_range")}


def model_id(summary: Mapping[str, Any]) -> str | None:
    """The model id a summary carries: ``model.id`` (bundle hash) or else ``model.fingerprint``."""
    model = summary.get("model")
    if not isinstance(model, Mapping):
        return None
    value = model.get("id") or model.get("bundle_id") or model.get("fingerprint")
    return None if value is None else str(value)


def run_info(*, span: Span | None, inputs: list[dict[str, Any]], summary: Mapping[str, Any],
             baseline: dict[str, Any] | None, wall_seconds: float,
             env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The ``run`` block of a summary (see ``docs/reports.md``)."""
    return {
        "time_range": time_range(span),
        "inputs": inputs,
        "fpi_version": __version__,
        "bundle_id": model_id(summary),
        "baseline": baseline,
        "wall_seconds": round(wall_seconds, 3),
        "ci": ci_info(os.environ if env is None else env),
    }
