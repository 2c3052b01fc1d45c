"""Session partitioning: ``fpi ingest RAW... -o turns/ --partitions N``.

Every turn goes to bucket ``bucket_of(hash_series(session_id), N)`` (the stable
hash of :mod:`fpi.hashing`, named :data:`HASH_NAME` in the manifest), so a
session is always whole in one part, whatever the input files and their order.
The output directory holds ``part-00000.parquet`` ... (each sorted by session and
turn, each in the canonical layout, like a single ``fpi ingest`` output) and the
manifest :data:`MANIFEST`; it is written as a whole set
(:func:`fpi.files.staged_output_dir`).

A two-stage shuffle, each stage a pure function run through an
:class:`~fpi.engine.Engine` (so on a Dask cluster with ``--engine dask``):

1. per input file: today's ingest run (read, validate, duplicate rules within
   the file) writes its good rows to one Arrow file per bucket in staging, with
   the file and line each row came from. Stage-event files go together in one
   task, last, since one turn's events may lie in several files.
2. per bucket: the bucket's rows from every file, in input order, are joined;
   a turn read again in a later file is rejected (the first is kept: the rule of
   a single ingest, exact per bucket because a duplicate shares its session);
   the rest is sorted, checked and written as the part.

The rows kept are exactly those a single ``fpi ingest`` of the same inputs keeps.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.ipc as ipc

from fpi import __version__
from fpi.engine import Engine, LocalEngine
from fpi.errors import InputError, OutputError
from fpi.files import atomic_path, file_sha256, staged_output_dir
from fpi.hashing import bucket_of, hash_series
from fpi.ingest import (
    BLOCK_BYTES,
    PARSE_WORKERS,
    REPORT_REJECT_SAMPLE,
    IngestReport,
    Problem,
    _MemorySink,
    _Rejects,
    _Run,
    _Sink,
    _sources,
    rejects_path_for,
    strict_error,
)
from fpi.ingest.parse import CANONICAL_ARROW
from fpi.ingest.sort import in_key_order, parquet_writer
from fpi.ingest.sources import Source
from fpi.schema import KEY_COLUMNS, TURN_SCHEMA

__all__ = ["HASH_NAME", "MANIFEST", "PartitionManifest", "check_partition",
           "ingest_partitioned", "part_name", "read_partition", "read_partitions",
           "session_buckets"]

#: The manifest of a partitioned directory.
MANIFEST = "_partitions.json"
#: The name of the session hash in the manifest (:func:`fpi.hashing.hash_series`).
HASH_NAME = "fnv1a64-splitmix"
#: Kind of the output directory (its :data:`fpi.files.MARKER`).
KIND = "partitions"
#: Most parts a directory may have.
MAX_PARTITIONS = 100_000

log = logging.getLogger(__name__)

_FILE, _LINE = "__file", "__line"
_SHUFFLE = ".shuffle"


def part_name(index: int) -> str:
    """``part-00003.parquet`` for part 3."""
    return f"part-{index:05d}.parquet"


def session_buckets(session_ids: pl.Series, partitions: int) -> np.ndarray:
    """The part (0 .. partitions-1) of each session id."""
    return bucket_of(hash_series(session_ids), partitions)


# ---------------------------------------------------------------------------
# The manifest and reading parts
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PartitionManifest:
    """What ``_partitions.json`` says: the hash, N, and each part's rows and SHA-256."""

    partitions: int
    rows: tuple[int, ...]
    sha256: tuple[str, ...]
    hash: str = HASH_NAME
    fpi_version: str = __version__

    def to_dict(self) -> dict[str, Any]:
        return {"hash": self.hash, "partitions": self.partitions, "fpi_version": self.fpi_version,
                "parts": [{"name": part_name(i), "rows": r, "sha256": h}
                          for i, (r, h) in enumerate(zip(self.rows, self.sha256, strict=True))]}

    @staticmethod
    def from_dict(doc: Any, where: str) -> PartitionManifest:
        """Parse a manifest; :class:`InputError` naming ``where`` if it is not one."""
        try:
            n, parts = int(doc["partitions"]), list(doc["parts"])
            names = [str(p["name"]) for p in parts]
            manifest = PartitionManifest(n, tuple(int(p["rows"]) for p in parts),
                                         tuple(str(p["sha256"]) for p in parts),
                                         str(doc["hash"]), str(doc.get("fpi_version", "")))
        except (TypeError, KeyError, ValueError):
            raise InputError(f"{where}: not an fpi partition manifest") from None
        if manifest.hash != HASH_NAME:
            raise InputError(f"{where}: parts made with hash {manifest.hash!r}; this fpi "
                             f"uses {HASH_NAME!r} (ingest the traces again)")
        if names != [part_name(i) for i in range(n)]:
            raise InputError(f"{where}: lists {len(names)} parts for {n} partitions")
        return manifest


def _is_url(path: str) -> bool:
    return "://" in path


@contextlib.contextmanager
def _open(path: str) -> Iterator[IO[bytes]]:
    """Open a local path or an fsspec URL (``memory://``, ``file://``, ``s3://``)."""
    if not _is_url(path):
        with open(path, "rb") as fh:
            yield fh
        return
    try:
        import fsspec
    except ImportError:
        raise InputError(f"{path}: reading URLs needs fsspec: pip install 'fpi[dask]'"
                         ) from None
    with fsspec.open(path, "rb") as fh:
        yield fh


def read_partitions(directory: str | os.PathLike[str]) -> tuple[list[str], PartitionManifest]:
    """The part paths (or URLs) of a partitioned directory, in order, and its manifest.

    ``directory`` is a path or an fsspec URL. Raises :class:`InputError` when it has no
    manifest or the manifest is not one fpi can use.
    """
    base = os.fspath(directory).rstrip("/")
    where = f"{base}/{MANIFEST}"
    try:
        with _open(where) as fh:
            doc = json.loads(fh.read())
    except FileNotFoundError:
        raise InputError(f"{base}: not a partitioned fpi directory (no {MANIFEST}; write "
                         "one with fpi ingest --partitions N)") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{where}: cannot be read: {exc}") from None
    manifest = PartitionManifest.from_dict(doc, where)
    return [f"{base}/{part_name(i)}" for i in range(manifest.partitions)], manifest


def check_partition(frame: pl.DataFrame, index: int, partitions: int,
                    where: str | None = None) -> None:
    """Refuse part ``index`` of ``partitions`` unless it is canonical, sorted and holds
    only sessions of its own bucket (:class:`InputError`, one line naming ``where``)."""
    where = where or part_name(index)
    if frame.schema != TURN_SCHEMA:
        raise InputError(f"{where}: not in the canonical layout (write it with fpi ingest)")
    if not in_key_order(frame.select(KEY_COLUMNS)):
        raise InputError(f"{where}: not sorted by session_id, turn_index (or a turn is "
                         "repeated); write it with fpi ingest --partitions")
    sessions = frame.get_column("session_id").unique(maintain_order=True)
    buckets = session_buckets(sessions, partitions)
    wrong = np.nonzero(buckets != index)[0]
    if len(wrong):
        sid = sessions[int(wrong[0])]
        raise InputError(f"{where}: session {sid!r} belongs to part {int(buckets[wrong[0]])} "
                         f"of {partitions}, not part {index} ({len(wrong)} such sessions); "
                         "the parts were not written together by fpi ingest --partitions")


def read_partition(path: str, index: int, partitions: int) -> pl.DataFrame:
    """Part ``index`` read from a path or URL, checked by :func:`check_partition`."""
    try:
        with _open(path) as fh:
            frame = pl.read_parquet(fh)
    except FileNotFoundError:
        raise InputError(f"{path}: no such part file") from None
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise InputError(f"{path}: cannot be read: {' '.join(str(exc).split())[:200]}"
                         ) from None
    check_partition(frame, index, partitions, path)
    return frame


# ---------------------------------------------------------------------------
# Stage 1: one input file (or all stage-event files) -> one Arrow file per bucket
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Unit:
    """What one stage-1 task reads and where it writes."""

    index: int
    sources: tuple[Source, ...]
    file_ids: tuple[int, ...]  #: global index of each source (for stage 2's messages)
    partitions: int
    scratch: str
    block_bytes: int
    allow_truncated: bool
    redact: Callable[[Problem], Problem] | None
    threads: int  #: blocks parsed at once


@dataclass(frozen=True)
class _UnitResult:
    records: int
    rejects_by_rule: dict[str, int]
    rejects: tuple[Problem, ...]  #: the first few (all are in the unit's rejects file)
    warnings: tuple[str, ...]


def _unit_dir(scratch: str, index: int) -> Path:
    return Path(scratch) / f"u{index:05d}"


def _bucket_file(scratch: str, unit: int, bucket: int) -> Path:
    return _unit_dir(scratch, unit) / f"b{bucket:05d}.arrow"


class _BucketSink(_Sink):
    """Spreads good rows over one Arrow file per bucket, with their file and line."""

    def __init__(self, unit: _Unit) -> None:
        super().__init__()
        self.unit = unit
        self.writers: dict[int, ipc.RecordBatchFileWriter] = {}
        self.origin: pl.DataFrame | None = None

    def add(self, table: pa.Table, keys: pl.DataFrame) -> None:
        ids = np.asarray(self.unit.file_ids, dtype=np.int64)
        self.origin = pl.DataFrame({_FILE: ids[keys.get_column("file_id").to_numpy()],
                                    _LINE: keys.get_column("line")})
        super().add(table, keys)

    def write(self, table: pa.Table) -> None:
        assert self.origin is not None
        bucket = session_buckets(pl.Series(table.column("session_id")), self.unit.partitions)
        table = (table.append_column(_FILE, self.origin.get_column(_FILE).to_arrow())
                 .append_column(_LINE, self.origin.get_column(_LINE).to_arrow()))
        for b in np.unique(bucket).tolist():
            if b not in self.writers:
                self.writers[b] = ipc.new_file(_bucket_file(self.unit.scratch, self.unit.index, b),
                                               table.schema,
                                               options=ipc.IpcWriteOptions(compression="lz4"))
            self.writers[b].write_table(table.filter(pa.array(bucket == b)))

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()


def _spread_unit(unit: _Unit) -> _UnitResult:
    """Stage 1 (runs on a worker): ingest one unit's files into bucket files."""
    _unit_dir(unit.scratch, unit.index).mkdir(parents=True, exist_ok=True)
    rejects_file = _unit_dir(unit.scratch, unit.index) / "rejects.jsonl"
    sink = _BucketSink(unit)
    with rejects_file.open("wb") as fh:
        rejects = _Rejects(fh, unit.redact)
        run = _Run(list(unit.sources), rejects, sink, None, unit.block_bytes,
                   unit.allow_truncated, unit.threads)
        try:
            run.run()
        finally:
            sink.close()
    return _UnitResult(run.records, dict(rejects.by_rule), tuple(rejects.kept),
                       tuple(run.warnings))


def _units(sources: list[Source], partitions: int, scratch: Path, block_bytes: int,
           allow_truncated: bool, redact: Callable[[Problem], Problem] | None,
           threads: int) -> list[_Unit]:
    """One unit per input file, and one for all stage-event files (last: a single
    ingest assembles events after reading every other file)."""
    plain = [i for i, s in enumerate(sources) if s.format != "events"]
    events = [i for i, s in enumerate(sources) if s.format == "events"]
    groups = [[i] for i in plain] + ([events] if events else [])
    return [_Unit(k, tuple(sources[i] for i in g), tuple(g), partitions, str(scratch),
                  block_bytes, allow_truncated, redact, threads) for k, g in enumerate(groups)]


# ---------------------------------------------------------------------------
# Stage 2: one bucket from every unit -> one part
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Bucket:
    index: int
    partitions: int
    units: int
    scratch: str
    part: str  #: the part file to write
    files: tuple[str, ...]  #: every input file, by global index
    redact: Callable[[Problem], Problem] | None


@dataclass(frozen=True)
class _BucketResult:
    rows: int
    sha256: str
    sessions: int
    presence: dict[str, int]  #: stage -> turns where it is present
    labels: dict[str, int]
    rejects: tuple[Problem, ...] = field(default=())  #: turns already read in an earlier file


def _read_bucket(task: _Bucket) -> pl.DataFrame:
    tables = []
    for unit in range(task.units):
        path = _bucket_file(task.scratch, unit, task.index)
        if path.exists():
            with pa.memory_map(str(path)) as source:
                tables.append(ipc.open_file(source).read_all())
    if not tables:
        return pl.DataFrame(schema={**TURN_SCHEMA, _FILE: pl.Int64, _LINE: pl.Int64})
    frame = pl.from_arrow(pa.concat_tables(tables))
    assert isinstance(frame, pl.DataFrame)
    return frame


def _cross_file_duplicates(frame: pl.DataFrame, task: _Bucket) -> tuple[pl.DataFrame,
                                                                         list[Problem]]:
    """``frame`` less the turns an earlier file already had, and their rejects."""
    first = pl.struct(*KEY_COLUMNS).is_first_distinct()
    dups = frame.filter(~first)
    if dups.height == 0:
        return frame, []
    kept = frame.filter(first)
    where = kept.select(*KEY_COLUMNS, pl.col(_FILE).alias("__f0"), pl.col(_LINE).alias("__l0"))
    dups = dups.join(where, on=list(KEY_COLUMNS), how="left", maintain_order="left")
    raws = dups.select(pl.struct(*TURN_SCHEMA).struct.json_encode()).to_series().to_list()
    rejects = []
    for row, raw in zip(dups.select(*KEY_COLUMNS, _FILE, _LINE, "__f0", "__l0").iter_rows(),
                        raws, strict=True):
        sid, ti, f, line, f0, l0 = row
        message = (f"(session_id, turn_index) = ({sid!r}, {ti}) was already read at "
                   f"{task.files[f0]}:{l0}; the first is kept")
        reject = Problem(task.files[f], int(line), "duplicate_turn", message, raw)
        rejects.append(task.redact(reject) if task.redact is not None else reject)
    return kept, rejects


def _merge_bucket(task: _Bucket) -> _BucketResult:
    """Stage 2 (runs on a worker): join, de-duplicate, sort, check and write one part."""
    frame, rejects = _cross_file_duplicates(_read_bucket(task), task)
    keys = frame.select(*KEY_COLUMNS, pl.col(_FILE).alias("file_id"), pl.col(_LINE).alias("line"))
    frame = frame.drop(_FILE, _LINE).sort(list(KEY_COLUMNS), maintain_order=True)
    check_partition(frame, task.index, task.partitions, task.part)
    table = frame.to_arrow().cast(CANONICAL_ARROW)
    with parquet_writer(Path(task.part)) as writer:
        writer.write_table(table, row_group_size=max(table.num_rows, 1))
    summary = _MemorySink()  # ingest's own per-row summary (stages present, gold label)
    summary.add(table, keys.sort(list(KEY_COLUMNS)))
    stats = summary.stats()
    return _BucketResult(frame.height, file_sha256(Path(task.part)), stats.sessions,
                         {s: round(v * stats.turns) for s, v in stats.presence.items()},
                         stats.labels, tuple(rejects))


# ---------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------


def ingest_partitioned(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    partitions: int,
    *,
    format: str | None = None,
    rejects_path: str | os.PathLike[str] | None = None,
    strict: bool = False,
    engine: Engine | None = None,
    block_bytes: int = BLOCK_BYTES,
    redact_rejects: Callable[[Problem], Problem] | None = None,
    allow_truncated: bool = False,
    threads: int = PARSE_WORKERS,
) -> IngestReport:
    """Ingest traces into directory ``output`` of ``partitions`` parts (see the module).

    Same inputs, rules, rejects and ``threads`` (for each file) as
    :func:`fpi.ingest.ingest`; the rejects go to
    ``rejects_path`` (default beside the directory: ``turns/`` -> ``turns.rejects.jsonl``).
    ``engine`` runs the per-file and per-bucket tasks (default: here, in order);
    with a Dask engine every worker must read the inputs and write ``output``
    (shared storage). ``output`` is replaced as a whole, only on success.
    """
    if not 1 <= partitions <= MAX_PARTITIONS:
        raise InputError(f"--partitions {partitions}: give 1 to {MAX_PARTITIONS:,}")
    out = Path(output)
    rpath = Path(rejects_path) if rejects_path is not None else rejects_path_for(out)
    # (an earlier run's parts are never read as input, as ingest skips its own output)
    previous = [p for p in out.rglob("*") if p.is_file()] if out.is_dir() else []
    sources = _sources(paths, format, [rpath, *previous])
    files = tuple(str(s.path) for s in sources)
    engine = engine or LocalEngine()
    with staged_output_dir(out, KIND) as stage:
        scratch = stage / _SHUFFLE
        scratch.mkdir()
        units = _units(sources, partitions, scratch, block_bytes, allow_truncated,
                       redact_rejects, threads)
        unit_results: list[_UnitResult] = engine.gather(engine.map(_spread_unit, units))
        tasks = [_Bucket(b, partitions, len(units), str(scratch), str(stage / part_name(b)),
                         files, redact_rejects) for b in range(partitions)]
        bucket_results: list[_BucketResult] = engine.gather(engine.map(_merge_bucket, tasks))
        report = _partition_report(sources, unit_results, bucket_results, rpath, out)
        for warning in report.warnings:
            log.warning("%s", warning)
        if report.turns_kept == 0:
            raise _nothing_kept(report)  # nothing replaced: the previous set stays
        manifest = PartitionManifest(partitions, tuple(r.rows for r in bucket_results),
                                     tuple(r.sha256 for r in bucket_results))
        (stage / MANIFEST).write_text(json.dumps(manifest.to_dict(), indent=2) + "\n",
                                      encoding="utf-8")
        _write_rejects(rpath, [_unit_dir(str(scratch), u.index) / "rejects.jsonl"
                               for u in units], bucket_results)
        shutil.rmtree(scratch)
    if strict and report.rejected:
        raise strict_error(report)
    return report


def _write_rejects(path: Path, unit_files: list[Path], buckets: list[_BucketResult]) -> None:
    """The rejects file: each file's rejects in input order, then the repeated turns."""
    import orjson

    with atomic_path(path) as tmp, tmp.open("wb") as out:
        try:
            for unit_file in unit_files:
                with unit_file.open("rb") as fh:
                    shutil.copyfileobj(fh, out)
            for result in buckets:
                for reject in result.rejects:
                    out.write(orjson.dumps(reject.to_dict()) + b"\n")
        except OSError as exc:
            raise OutputError(f"cannot write the rejects {path}: {exc.strerror}") from None


def _partition_report(sources: list[Source], units: list[_UnitResult],
                      buckets: list[_BucketResult], rpath: Path, out: Path) -> IngestReport:
    by_rule: dict[str, int] = {}
    for counts in [u.rejects_by_rule for u in units]:
        for rule, n in counts.items():
            by_rule[rule] = by_rule.get(rule, 0) + n
    repeated = [r for b in buckets for r in b.rejects]
    if repeated:
        by_rule["duplicate_turn"] = by_rule.get("duplicate_turn", 0) + len(repeated)
    turns = sum(b.rows for b in buckets)
    presence = {s: sum(b.presence[s] for b in buckets) for s in buckets[0].presence}
    labels = {c: sum(b.labels[c] for b in buckets) for c in buckets[0].labels}
    kept = [r for u in units for r in u.rejects] + repeated
    warnings = tuple(w for u in units for w in u.warnings)
    return IngestReport(
        files=tuple(str(s.path) for s in sources),
        formats={str(s.path): s.format for s in sources},
        records_read=sum(u.records for u in units),
        turns_kept=turns,
        rejected=sum(by_rule.values()),
        rejects_by_rule=dict(sorted(by_rule.items())),
        sessions=sum(b.sessions for b in buckets),
        stage_presence={s: (n / turns if turns else 0.0) for s, n in presence.items()},
        label_counts=labels,
        rejects_path=str(rpath),
        output_path=str(out),
        rejects=tuple(kept[:REPORT_REJECT_SAMPLE]),
        warnings=warnings,
    )


def _nothing_kept(report: IngestReport) -> InputError:
    names = ", ".join(report.files)
    if report.records_read == 0:
        return InputError(f"{names}: empty input (no records to read)")
    top = ", ".join(f"{k} {v}" for k, v in report.rejects_by_rule.items())
    return InputError(f"{names}: no valid turns: all {report.records_read} records were "
                      f"rejected ({top})")
