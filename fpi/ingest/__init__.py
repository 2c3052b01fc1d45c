"""Read voice-assistant traces in any supported form into the canonical frame.

Two entry points:

* :func:`read_traces` returns the canonical frame (one row per turn, sorted by
  ``session_id`` then ``turn_index``, dtypes :data:`fpi.schema.TURN_SCHEMA`) and
  an :class:`IngestReport`.
* :func:`ingest` streams the same result into a Parquet file with memory bounded
  by one block, for inputs larger than memory (``fpi ingest`` uses it).

Bad records never stop a run: each goes to the rejects (a
:class:`~fpi.ingest.problems.Problem`: file, line, rule, message, raw text) and
is counted. Only a missing path, an empty input or "nothing good left" raise
:class:`~fpi.errors.InputError`.

The steps, one module each, in the order data flows through them:
:mod:`~fpi.ingest.sources` (find files, tell their form, cut them into blocks of
JSON Lines), :mod:`~fpi.ingest.parse` (blocks into raw tables),
:mod:`~fpi.ingest.validate` (the rules, into canonical rows),
:mod:`~fpi.ingest.events` (stage events assembled into turns) and
:mod:`~fpi.ingest.sort` (the output in key order); :mod:`~fpi.ingest.problems`
holds the record of a record set aside and the rule table. This module runs
them, drops repeated turns and writes the outputs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from fpi.errors import InputError, StrictRejects, TruncatedInput, os_error
from fpi.files import atomic_path, check_writable_file, staged_files
from fpi.ingest.events import EventCollector
from fpi.ingest.parse import ParsedBlock, arrow_mask, parse_block, parse_lines
from fpi.ingest.problems import RULES, Problem
from fpi.ingest.sort import in_key_order, parquet_writer, sort_rewrite
from fpi.ingest.sources import (
    READ_FORMATS,
    Block,
    Broken,
    Source,
    csv_blocks,
    detect,
    expand_paths,
    is_canonical_parquet,
    line_blocks,
    parquet_blocks,
    parquet_frames,
)
from fpi.ingest.validate import validate_table
from fpi.schema import CLASSES, KEY_COLUMNS, empty_frame

__all__ = ["READ_FORMATS", "IngestReport", "Problem", "in_key_order", "ingest",
           "is_canonical_parquet", "read_traces", "rejects_path_for", "strict_error"]

log = logging.getLogger(__name__)

#: Bytes of JSON Lines parsed at once: big enough that per-block overheads
#: vanish, small enough that a block's tables stay in cache between parsing,
#: checking and writing (16 MB was the fastest of 8-64 MB at 1M turns) and
#: that memory stays far below the 3 GB budget.
BLOCK_BYTES = 16 << 20

#: Blocks parsed and validated ahead of the one being reported and written, by
#: ``PARSE_WORKERS`` threads (pyarrow and Polars release the GIL; the ``threads``
#: of :func:`ingest`). Memory holds at most this many blocks in flight (plus one
#: being written). One thread costs about 5% less CPU per turn than two on a
#: 2-core machine (two parses at once slow each other), at about 1.5x the wall time.
PARSE_AHEAD = 2
PARSE_WORKERS = 2

#: Characters of a ``too_large`` or ``too_deep`` record kept in its reject.
RAW_LIMIT = 2000
_BOUND_RULES = ("too_large", "too_deep")

#: How many rejects an :class:`IngestReport` carries when they also went to a file.
REPORT_REJECT_SAMPLE = 100

#: Stages whose presence the report counts, in pipeline order.
PRESENCE_STAGES: tuple[str, ...] = ("device", "wake", "asr", "nlu", "er", "result", "feedback",
                                    "label")

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class IngestReport:
    """What an ingest read, kept and set aside.

    ``records_read == turns_kept + rejected`` always holds. A record is a turn
    record (a line, a CSV row or a Parquet row) or, for stage events, one
    assembled turn or one unusable event line.
    """

    files: tuple[str, ...]
    formats: dict[str, str]  #: file -> detected form
    records_read: int
    turns_kept: int
    rejected: int
    rejects_by_rule: dict[str, int]
    sessions: int
    stage_presence: dict[str, float]  #: stage -> share of kept turns where it is present
    label_counts: dict[str, int]  #: class -> turns with that gold label, plus "unlabeled"
    rejects_path: str | None
    output_path: str | None = None
    #: All rejects when no rejects file was written, else the first few.
    rejects: tuple[Problem, ...] = field(default=(), repr=False)
    #: Empty files, and what was lost from truncated or corrupt files kept under
    #: ``allow_truncated`` (also logged as warnings).
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the ``fpi ingest --json`` summary)."""
        out = asdict(self)
        out["files"] = list(self.files)
        out["rejects"] = [r.to_dict() for r in self.rejects]
        return out


def rejects_path_for(output: str | os.PathLike[str]) -> Path:
    """Default rejects file next to ``output``: ``turns.parquet`` -> ``turns.rejects.jsonl``."""
    out = Path(output)
    stem = out.name.removesuffix(".parquet") if out.name.endswith(".parquet") else out.stem
    return out.with_name(f"{stem}.rejects.jsonl")


# ---------------------------------------------------------------------------
# Rejects
# ---------------------------------------------------------------------------


class _Rejects:
    """Counts rejects, writes them to the rejects file as they come, keeps some for the report."""

    def __init__(self, handle: IO[bytes] | None,
                 transform: Callable[[Problem], Problem] | None = None) -> None:
        self.handle = handle
        #: applied before a reject is written or kept (``redact_rejects``)
        self.transform = transform
        self.by_rule: dict[str, int] = {}
        self.kept: list[Problem] = []
        self.count = 0

    def add(self, reject: Problem) -> None:
        assert reject.rule in RULES, reject.rule
        self.count += 1
        self.by_rule[reject.rule] = self.by_rule.get(reject.rule, 0) + 1
        if self.transform is not None:
            reject = self.transform(reject)
        if self.handle is not None:
            self.handle.write(orjson.dumps(reject.to_dict()) + b"\n")
            if len(self.kept) < REPORT_REJECT_SAMPLE:
                self.kept.append(reject)
        else:
            self.kept.append(reject)


# ---------------------------------------------------------------------------
# Sinks: where good rows go
# ---------------------------------------------------------------------------


class _Sink:
    """Receives validated canonical batches; keeps a small per-row summary (keys, where
    the row came from, its label) for the global checks, and how many rows have each
    stage (counted per batch: a stage's null count)."""

    def __init__(self) -> None:
        self.keys: list[pl.DataFrame] = []
        self.rows = 0
        self.present = dict.fromkeys(PRESENCE_STAGES, 0)

    def add(self, table: pa.Table, keys: pl.DataFrame) -> None:
        self.keys.append(keys.with_columns(
            pl.Series("gold", pc.struct_field(table.column("label"), "failure_point"))))
        for s in PRESENCE_STAGES:
            self.present[s] += table.num_rows - table.column(s).null_count
        self.rows += table.num_rows
        self.write(table)

    def stats(self) -> _Stats:
        """The summary of every row added."""
        return _Stats.of(self.all_keys(), self.present)

    def write(self, table: pa.Table) -> None:
        raise NotImplementedError

    def all_keys(self) -> pl.DataFrame:
        if not self.keys:
            return pl.DataFrame(schema={"session_id": pl.String, "turn_index": pl.Int64,
                                        "file_id": pl.Int64, "line": pl.Int64,
                                        "gold": pl.String})
        if len(self.keys) > 1:
            self.keys = [pl.concat(self.keys, rechunk=True)]
        return self.keys[0]


class _MemorySink(_Sink):
    def __init__(self) -> None:
        super().__init__()
        self.tables: list[pa.Table] = []

    def write(self, table: pa.Table) -> None:
        self.tables.append(table)

    def frame(self) -> pl.DataFrame:
        """Everything written, as one canonical frame (the tables are released)."""
        if not self.tables:
            return empty_frame()
        table = pa.concat_tables(self.tables)
        self.tables.clear()
        frame = pl.from_arrow(table)
        assert isinstance(frame, pl.DataFrame)
        return frame


class _ParquetSink(_Sink):
    """Writes each batch as it comes, so memory holds one batch, not the input."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.writer = parquet_writer(path)
        # One background writer: encoding a row group overlaps the next block's work.
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fpi-write")
        self.pending: Future[None] | None = None

    def write(self, table: pa.Table) -> None:
        if self.pending is not None:
            self.pending.result()
        self.pending = self.pool.submit(self._write, table)

    def _write(self, table: pa.Table) -> None:
        self.writer.write_table(table, row_group_size=table.num_rows or 1)

    def close(self) -> None:
        try:
            if self.pending is not None:
                self.pending.result()
        finally:
            self.pool.shutdown()
            self.writer.close()


# ---------------------------------------------------------------------------
# The ingest run
# ---------------------------------------------------------------------------


@dataclass
class _Prepared:
    """A block parsed and validated, ready to be reported and written."""

    parsed: ParsedBlock
    good: pa.Table | None  #: canonical rows that passed, None if none
    rows: np.ndarray | None  #: parsed row of each good row; None: all rows, in order
    problems: list[Problem]  #: found at their raw row positions


def _prepare(data: bytes | memoryview, n_lines: int | None,
             parsed: ParsedBlock | None = None) -> _Prepared:
    """Parse (unless given) and validate one block; no side effects (runs in a worker)."""
    if parsed is None:
        parsed = parse_block(data, n_lines)
    if parsed.frame is None or len(parsed.frame) == 0:
        return _Prepared(parsed, None, None, [])
    try:
        good, rows, problems = validate_table(parsed.frame, screened=not parsed.careful)
    except (pl.exceptions.PolarsError, pa.ArrowException):
        if not data or parsed.careful:
            raise
        # Unknown fields of a shape Polars cannot take or check: the careful
        # parser moves every unknown field into ``extra`` text first.
        log.debug("re-reading a block line by line", exc_info=True)
        parsed = parse_lines(bytes(data))
        if parsed.frame is None or len(parsed.frame) == 0:
            return _Prepared(parsed, None, None, [])
        good, rows, problems = validate_table(parsed.frame, screened=False)
    return _Prepared(parsed, good, rows, problems)


#: A block's preparation: submitted to a worker, still to run (:func:`_prepare`'s
#: arguments), or none (a problem, not a block).
_Job = Future[_Prepared] | tuple[bytes | memoryview, int | None, ParsedBlock | None] | None


def _done(job: _Job) -> _Prepared | None:
    """The prepared block of ``job`` (run here if no worker took it)."""
    if isinstance(job, Future):
        return job.result()
    return _prepare(*job) if job is not None else None


class _SeenKeys:
    """Hashes of the keys written so far with their positions, as sorted runs.

    New runs are merged into older ones of similar size (like an LSM tree), so a
    lookup is a few vectorized binary searches and the memory is 16 bytes a turn.
    Callers pass hashes already sorted: binary searches for sorted needles walk
    each run in order instead of jumping about in memory (4x faster at 1M keys).
    """

    def __init__(self) -> None:
        self.runs: list[tuple[np.ndarray, np.ndarray]] = []

    def lookup(self, ordered: np.ndarray) -> np.ndarray:
        """For sorted hashes: the position of an earlier key with the same hash, or -1."""
        out = np.full(len(ordered), -1, dtype=np.int64)
        for run_hashes, run_pos in self.runs:
            idx = np.searchsorted(run_hashes, ordered)
            idx[idx == len(run_hashes)] = 0
            hit = run_hashes[idx] == ordered
            out[hit] = run_pos[idx[hit]]
        return out

    def add(self, ordered: np.ndarray, positions: np.ndarray) -> None:
        """Remember sorted hashes and the sink position of each."""
        if not len(ordered):
            return
        self.runs.append((ordered, positions))
        while len(self.runs) > 1 and len(self.runs[-2][0]) <= 2 * len(self.runs[-1][0]):
            (h2, p2), (h1, p1) = self.runs.pop(), self.runs.pop()
            h, p = np.concatenate([h1, h2]), np.concatenate([p1, p2])
            order = np.argsort(h, kind="stable")  # two sorted runs: a linear merge
            self.runs.append((h[order], p[order]))


def _key_hashes(keys: pl.DataFrame) -> np.ndarray:
    """64-bit hashes of the (session_id, turn_index) of each row of ``keys``."""
    return keys.select(pl.struct(*KEY_COLUMNS).hash(seed=7)).to_series().to_numpy()


class _Run:
    def __init__(self, sources: list[Source], rejects: _Rejects, sink: _Sink,
                 progress: Progress | None, block_bytes: int,
                 allow_truncated: bool = False, threads: int = PARSE_WORKERS) -> None:
        if threads < 1:
            raise InputError(f"threads {threads}: give 1 or more")
        self.threads = threads
        self.allow_truncated = allow_truncated
        self.warnings: list[str] = []
        self.events = EventCollector([str(s.path) for s in sources])
        self.file_start = 0  #: records read before the current file
        self.sources = sources
        self.files = [str(s.path) for s in sources]
        self.rejects = rejects
        self.sink = sink
        self.progress = progress
        self.stats = _Stats(0, 0, dict.fromkeys(PRESENCE_STAGES, 0.0), {})
        self.seen = _SeenKeys()
        #: Every key kept so far came in strictly increasing order, ending at ``last_key``
        #: (then :attr:`seen` stays empty until a block breaks the order).
        self.in_order = True
        self.last_key: tuple[str, int] | None = None
        self.first_seen: dict[tuple[Any, Any], str] = {}
        self.block_bytes = block_bytes
        self.records = 0
        self.total_bytes = sum(s.path.stat().st_size for s in sources)
        self.done_bytes = 0

    # -- rejects --------------------------------------------------------
    def _reject(self, p: Problem) -> None:
        """Set a placed problem's record aside (the raw text of one over a size or
        depth limit cut short)."""
        if p.rule in _BOUND_RULES and len(p.raw) > RAW_LIMIT:
            p = replace(p, raw=f"{p.raw[:RAW_LIMIT]}... ({len(p.raw):,} characters in all)")
        self.rejects.add(p)

    def _problem(self, p: Problem) -> None:
        if p.rule == "unreadable":
            self._broken(p.file, p.message, counted=1)
        self._reject(p)

    def _broken(self, file: str, message: str, counted: int = 0) -> None:
        """A file that ends early or is corrupt: an error, unless ``allow_truncated``
        (then a warning, and the readable part is kept). ``counted``: records already
        counted for the break itself."""
        n = self.records + self.events.records - self.file_start - counted
        read = f"{n:,} record{'s' if n != 1 else ''} read before the break"
        if not self.allow_truncated:
            raise TruncatedInput(
                f"{file}: {message}; {read}, nothing written (rerun with "
                "--allow-truncated to keep the readable part)")
        self.warnings.append(f"{file}: {message}; kept the {read}, the rest is lost")

    # -- main loop ------------------------------------------------------
    def run(self) -> None:
        events = self.events
        for file_id, source in enumerate(self.sources):
            before = self.records + events.records
            self.file_start = before
            rejected_before = self.rejects.count
            if source.format == "events":
                events.sources[file_id] = source
                for item in line_blocks(source, file_id, self.block_bytes):
                    if isinstance(item, Problem):
                        self.records += 1
                        self._problem(item)
                    else:
                        for p in events.add_block(item):
                            self._problem(p)
            elif source.format == "parquet" and is_canonical_parquet(source.path):
                self._canonical_parquet(source, file_id)
            else:
                items: Iterator[Block | Problem | tuple[Block, ParsedBlock]]
                if source.format == "jsonl":
                    items = line_blocks(source, file_id, self.block_bytes)
                elif source.format == "csv":
                    items = csv_blocks(source, file_id)
                else:
                    items = parquet_blocks(source, file_id)
                for item, prepared in self._parse_ahead(items):
                    if isinstance(item, Problem):
                        self.records += 1
                        self._problem(item)
                    else:
                        self._block(item, prepared)
                        if self.progress and item.src_pos:
                            self.progress(self.done_bytes + item.src_pos, self.total_bytes)
            self.done_bytes += source.path.stat().st_size
            if self.progress:
                self.progress(self.done_bytes, self.total_bytes)
            if source.format != "events" and self.records == before and \
                    self.rejects.count == rejected_before:
                self.warnings.append(f"{source.path}: no records (the file is empty)")
        for assembled in events.assemble():
            if isinstance(assembled, Problem):
                self._problem(assembled)
            else:
                self._block(assembled[0], _prepare(b"", None, assembled[1]), count=False)
        self.records += events.records

    def _parse_ahead(self, items: Iterator[Block | Problem | tuple[Block, ParsedBlock]]
                     ) -> Iterator[tuple[Any, Any]]:
        """Items in order, each block parsed and validated :data:`PARSE_AHEAD` early.

        Parsing and validation are pure and release the GIL (pyarrow, Polars), so
        worker threads prepare the next blocks while this one is reported and written.
        The workers start with a file's second block: a file of one block is prepared
        here (the same pure call), which spares small inputs a thread's start and join.
        """
        pending: deque[tuple[Any, _Job]] = deque()
        pool: ThreadPoolExecutor | None = None
        blocks = 0
        try:
            for item in items:
                job: _Job = None
                if isinstance(item, Block):
                    job = (item.data, item.n_lines, None)
                elif isinstance(item, tuple):  # already parsed (CSV)
                    job = (b"", None, item[1])
                    item = item[0]
                blocks += job is not None
                if pool is None and blocks == 2:
                    pool = ThreadPoolExecutor(max_workers=self.threads,
                                              thread_name_prefix="fpi-parse")
                    pending = deque((i, pool.submit(_prepare, *j) if isinstance(j, tuple)
                                     else j) for i, j in pending)
                if isinstance(job, tuple) and pool is not None:
                    job = pool.submit(_prepare, *job)
                pending.append((item, job))
                while len(pending) > PARSE_AHEAD:
                    done, job = pending.popleft()
                    yield done, _done(job)
            while pending:
                done, job = pending.popleft()
                yield done, _done(job)
        finally:
            if pool is not None:
                for _, job in pending:
                    if isinstance(job, Future):
                        job.cancel()
                pool.shutdown()

    def _block(self, block: Block, prepared: _Prepared, count: bool = True) -> None:
        """Report a prepared block's rejects, drop repeated turns, hand the rest on."""
        parsed, good, problems = prepared.parsed, prepared.good, prepared.problems
        if count:
            self.records += parsed.records
        for p in parsed.problems:
            self._line_reject(block, p.index, p)
        row_lines = parsed.row_lines
        for rp in problems:
            self._line_reject(block, row_lines[rp.index] if row_lines is not None else rp.index,
                              rp)
        if good is None:
            return
        index = (prepared.rows if prepared.rows is not None
                 else np.arange(good.num_rows, dtype=np.int64))
        if row_lines is not None:
            index = np.asarray(row_lines, dtype=np.int64)[index]
        if block.locs is None:
            file_ids = np.full(len(index), block.file_id, dtype=np.int64)
            lines = index + block.first_line
        else:
            locs = np.asarray(block.locs, dtype=np.int64).reshape(-1, 2)[index]
            file_ids, lines = locs[:, 0], locs[:, 1]

        def reject_dup(i: int, message: str) -> None:
            at = int(index[i])
            self._line_reject(block, at, Problem.found(at, "duplicate_turn", message))

        self._keep(good, file_ids, lines, reject_dup)

    def _line_reject(self, block: Block, index: int, problem: Problem) -> None:
        """Set aside ``problem``, found at block line ``index``, placed in its file."""
        file_id, line = block.loc(index)
        involved = block.involved[index] if block.involved is not None else ()
        self._reject(problem.placed(self.files[file_id], line, block.raw(index),
                                    tuple(involved)))

    def _canonical_parquet(self, source: Source, file_id: int) -> None:
        """Fast path for Parquet already in the canonical layout: validate, no re-parse."""
        row = 1
        try:
            for frame in parquet_frames(source):
                self.records += frame.height
                good, rows, problems = validate_table(frame)

                def raw(i: int, frame: pl.DataFrame = frame) -> str:
                    return str(frame[i].select(pl.struct(pl.all()).struct.json_encode()).item())

                for rp in problems:
                    self._reject(rp.placed(self.files[file_id], row + rp.index, raw(rp.index)))
                if good is not None:
                    index = rows if rows is not None else np.arange(good.num_rows)

                    def reject_dup(i: int, message: str, first: int = row,
                                   index: np.ndarray = index, raw: Callable[[int], str] = raw
                                   ) -> None:
                        src_row = int(index[i])
                        self._reject(Problem(self.files[file_id], first + src_row,
                                             "duplicate_turn", message, raw(src_row)))

                    self._keep(good, np.full(len(index), file_id, dtype=np.int64),
                               index + row, reject_dup)
                row += frame.height
        except Broken as exc:
            self._broken(self.files[file_id], str(exc))
            self.records += 1
            self._reject(Problem(self.files[file_id], row, "unreadable", str(exc)))

    def _keep(self, good: pa.Table, file_ids: np.ndarray, lines: np.ndarray,
              reject_dup: Callable[[int, str], None]) -> None:
        """Hand ``good`` to the sink, less the rows whose turn was already read (each
        rejected through ``reject_dup(row, message)``); ``file_ids`` and ``lines`` say
        where each row came from."""
        keys = pl.from_arrow(good.select(list(KEY_COLUMNS)))
        assert isinstance(keys, pl.DataFrame)
        keys = keys.with_columns(file_id=pl.Series(file_ids, dtype=pl.Int64),
                                 line=pl.Series(lines, dtype=pl.Int64))
        dup = self._duplicates(keys)
        for i in dup:
            reject_dup(i, self._dup_message(keys, i))
        if dup:
            mask = np.ones(good.num_rows, dtype=bool)
            mask[dup] = False
            good, keys = good.filter(arrow_mask(mask)), keys.filter(pl.Series(mask))
        if good.num_rows:
            self.sink.add(good, keys)

    # -- global checks --------------------------------------------------
    def _duplicates(self, keys: pl.DataFrame) -> list[int]:
        """Rows of ``keys`` whose (session_id, turn_index) was already read; the first wins.

        Checked block by block, so a duplicate is rejected with its own raw text
        and never written. Earlier blocks are searched through 64-bit key hashes
        (:class:`_SeenKeys`, vectorized); a hash hit is confirmed on the real key,
        so a collision never rejects a turn. Repeats inside the block are found
        on the exact keys. While the keys come in order (:meth:`_continues_order`),
        none can repeat and nothing is hashed.
        """
        if self._continues_order(keys):
            return []
        hashes = _key_hashes(keys)
        order = np.argsort(hashes, kind="stable")
        ordered = hashes[order]
        prior = np.empty(len(hashes), dtype=np.int64)
        prior[order] = self.seen.lookup(ordered)
        # A row whose hash an earlier row of the block shares (the sort is stable,
        # so within equal hashes rows stay in block order).
        repeat = np.zeros(len(hashes), dtype=bool)
        repeat[order[1:][ordered[1:] == ordered[:-1]]] = True
        dup = np.zeros(len(hashes), dtype=bool)
        suspects = np.nonzero((prior >= 0) | repeat)[0]
        if len(suspects):
            frame = self.sink.all_keys()
            for i in suspects.tolist():
                key = (keys[i, "session_id"], keys[i, "turn_index"])
                if prior[i] >= 0:
                    r = frame.row(int(prior[i]), named=True)
                    if (r["session_id"], r["turn_index"]) == key:
                        dup[i] = True
                        self.first_seen[key] = f"{self.files[r['file_id']]}:{r['line']}"
                        continue
                if repeat[i]:
                    j = int(np.nonzero(((keys.get_column("session_id") == key[0])
                                        & (keys.get_column("turn_index") == key[1])
                                        ).to_numpy())[0][0])
                    if j < i:  # else only the hash was shared
                        dup[i] = True
                        self.first_seen.setdefault(
                            key, f"{self.files[keys[j, 'file_id']]}:{keys[j, 'line']}")
        kept = ~dup
        positions = self.sink.rows + np.cumsum(kept) - 1
        kept_order = order[kept[order]]
        self.seen.add(hashes[kept_order], positions[kept_order])
        return np.nonzero(dup)[0].tolist()

    def _continues_order(self, keys: pl.DataFrame) -> bool:
        """Whether every key kept so far and then ``keys`` are in strictly increasing
        order (logs written session by session): then no key of ``keys`` was read
        before. At the first block that breaks the order, the keys kept so far go
        into :attr:`seen`, and every block after it is searched there."""
        if not self.in_order:
            return False
        if not keys.height:
            return True
        first = (keys[0, "session_id"], keys[0, "turn_index"])
        if in_key_order(keys) and (self.last_key is None or first > self.last_key):
            self.last_key = (keys[-1, "session_id"], keys[-1, "turn_index"])
            return True
        self.in_order = False
        kept = self.sink.all_keys()
        if kept.height:  # (row i of the sink's keys is written row i)
            hashes = _key_hashes(kept)
            order = np.argsort(hashes, kind="stable")
            self.seen.add(hashes[order], order.astype(np.int64))
        return False

    def _dup_message(self, keys: pl.DataFrame, i: int) -> str:
        sid, ti = keys[i, "session_id"], keys[i, "turn_index"]
        return (f"(session_id, turn_index) = ({sid!r}, {ti}) was already read at "
                f"{self.first_seen[(sid, ti)]}; the first is kept")

    def finish(self) -> bool:
        """Summarize what was kept; return whether it is already sorted by key."""
        self.stats = self.sink.stats()
        # (while :attr:`in_order` holds, every block kept was checked to continue it)
        return self.in_order or in_key_order(self.sink.all_keys())


@dataclass(frozen=True)
class _Stats:
    sessions: int
    turns: int
    presence: dict[str, float]
    labels: dict[str, int]

    @staticmethod
    def of(kept: pl.DataFrame, present: dict[str, int]) -> _Stats:
        """``kept``: keys and gold label of every row; ``present``: rows with each stage."""
        n = kept.height
        sessions = kept.get_column("session_id").n_unique()
        counts = dict(kept.get_column("gold").fill_null("unlabeled").value_counts().iter_rows())
        labels = {c: int(counts.get(c, 0)) for c in (*CLASSES, "unlabeled")}
        return _Stats(int(sessions), n,
                      {s: (present[s] / n if n else 0.0) for s in PRESENCE_STAGES}, labels)


def _sources(paths: Any, format: str | None, exclude: Sequence[Path]) -> list[Source]:
    files = expand_paths(paths, exclude)
    sources = []
    for path in files:
        try:
            sources.append(detect(path, format))
        except OSError as exc:
            raise InputError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    if all(s.path.stat().st_size == 0 for s in sources):
        names = ", ".join(str(s.path) for s in sources)
        raise InputError(f"{names}: empty input (no records to read)")
    return sources


def _report(run: _Run, rejects: _Rejects, rejects_path: Path | None,
            output: Path | None) -> IngestReport:
    # Logged only now, for a run that succeeded: a failed one says why in its error.
    for warning in run.warnings:
        log.warning("%s", warning)
    stats = run.stats
    return IngestReport(
        files=tuple(run.files),
        formats={str(s.path): s.format for s in run.sources},
        records_read=run.records,
        turns_kept=stats.turns,
        rejected=rejects.count,
        rejects_by_rule=dict(sorted(rejects.by_rule.items())),
        sessions=stats.sessions,
        stage_presence=stats.presence,
        label_counts=stats.labels,
        rejects_path=str(rejects_path) if rejects_path else None,
        output_path=str(output) if output else None,
        rejects=tuple(rejects.kept),
        warnings=tuple(run.warnings),
    )


def _nothing_left(run: _Run, rejects_path: Path | None) -> InputError:
    names = ", ".join(run.files)
    if run.records == 0:
        return InputError(f"{names}: empty input (no records to read)")
    where = f"; see {rejects_path}" if rejects_path else ""
    top = ", ".join(f"{k} {v}" for k, v in sorted(run.rejects.by_rule.items()))
    return InputError(f"{names}: no valid turns: all {run.records} records were rejected "
                      f"({top}){where}")


def _progress(progress: bool | Progress | None) -> Progress | None:
    if callable(progress):
        return progress
    if progress:
        return lambda done, total: log.info("ingest: %d of %d bytes", done, total)
    return None


def _sort_progress(progress: bool | Progress | None) -> Callable[[int, int], None] | None:
    """The sort pass's ``(buckets done, total)`` as a stage of its own, when the caller's
    progress callback can report stages (:class:`fpi.progress.ByteProgress`)."""
    stage = getattr(progress, "stage", None)
    if stage is None:
        return None
    return lambda done, total: stage("sorting", done, total)


@contextlib.contextmanager
def _rejects_file(path: Path | None) -> Iterator[IO[bytes] | None]:
    if path is None:
        yield None
        return
    with atomic_path(path) as tmp, tmp.open("wb") as fh:
        yield fh


def read_traces(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    format: str | None = None,
    rejects_path: str | os.PathLike[str] | None = None,
    strict: bool = False,
    progress: bool | Progress | None = False,
    block_bytes: int = BLOCK_BYTES,
    allow_truncated: bool = False,
    threads: int = PARSE_WORKERS,
) -> tuple[pl.DataFrame, IngestReport]:
    """Read traces into the canonical frame.

    Parameters
    ----------
    paths
        Files, directories (searched recursively) and glob patterns, in any of
        the supported forms (turn JSON Lines plain/.gz/.zst, Parquet, CSV with
        dotted columns, stage-event JSON Lines); the form is detected per file.
    format
        Force the form of every file: ``jsonl``, ``parquet``, ``csv`` or ``events``.
    rejects_path
        Also write the rejects there (JSON Lines, atomically). Without it the
        report carries every reject in ``report.rejects``.
    strict
        Raise :class:`~fpi.errors.StrictRejects` (after writing the rejects) if
        any record was rejected.
    progress
        A ``callback(bytes_done, bytes_total)``, or True to log progress.
    allow_truncated
        Keep the readable part of a truncated or corrupt file (gzip, zstd,
        Parquet, CSV) with a warning (logged and in ``report.warnings``) instead
        of raising :class:`~fpi.errors.TruncatedInput`.
    threads
        Blocks parsed and checked at once (:data:`PARSE_WORKERS` by default); 1 costs
        less CPU per turn and more wall time.

    Returns
    -------
    (frame, report)
        The canonical frame (``TURN_SCHEMA``, sorted by session and turn) and an
        :class:`IngestReport`.
    """
    rpath = Path(rejects_path) if rejects_path is not None else None
    sources = _sources(paths, format, [rpath] if rpath else [])
    sink = _MemorySink()
    with _rejects_file(rpath) as fh:
        rejects = _Rejects(fh)
        run = _Run(sources, rejects, sink, _progress(progress), block_bytes, allow_truncated,
                   threads)
        run.run()
        frame = sink.frame()
        if run.finish():
            frame = frame.rechunk()
        else:
            frame = frame.sort(list(KEY_COLUMNS), maintain_order=True).rechunk()
    if frame.height == 0:
        # Raised only now, so that the rejects file (the reason why) is kept.
        raise _nothing_left(run, rpath)
    report = _report(run, rejects, rpath, None)
    if strict and rejects.count:
        raise strict_error(report, f"rejects written to {rpath}" if rpath else "")
    return frame, report


def strict_error(report: IngestReport, written: str = "") -> StrictRejects:
    """The error ``--strict`` raises when ``report`` counts rejects (its ``report``
    attribute is the report); ``written`` says where the outputs went."""
    top = ", ".join(f"{k} {v}" for k, v in report.rejects_by_rule.items())
    exc = StrictRejects(f"{report.rejected} of {report.records_read} records were rejected "
                        f"under --strict ({top})" + (f"; {written}" if written else ""))
    exc.report = report  # type: ignore[attr-defined]
    return exc


def ingest(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    format: str | None = None,
    rejects_path: str | os.PathLike[str] | None = None,
    strict: bool = False,
    progress: bool | Progress | None = False,
    block_bytes: int = BLOCK_BYTES,
    redact_rejects: Callable[[Problem], Problem] | None = None,
    allow_truncated: bool = False,
    threads: int = PARSE_WORKERS,
) -> IngestReport:
    """Ingest traces straight into a canonical Parquet file, in bounded memory.

    Same inputs, rules and ``threads`` as :func:`read_traces`. ``output`` is replaced
    atomically; the rejects go to ``rejects_path`` (default: next to the output,
    ``turns.parquet`` -> ``turns.rejects.jsonl``). Raises
    :class:`~fpi.errors.StrictRejects` after writing both files when ``strict``
    and any record was rejected. ``redact_rejects`` (e.g.
    :meth:`fpi.redact.Redactor.reject`) rewrites each reject before it is written
    or kept, so raw log text never reaches the disk.
    """
    out = Path(output)
    check_writable_file(out)  # (before naming the rejects after it: '.' has no name)
    rpath = Path(rejects_path) if rejects_path is not None else rejects_path_for(out)
    sources = _sources(paths, format, [out, rpath])
    for target in (out, rpath):
        check_writable_file(target)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise os_error(exc, "the output", out) from None
    return _ingest(sources, out, rpath, strict=strict, progress=progress,
                   block_bytes=block_bytes, redact_rejects=redact_rejects,
                   allow_truncated=allow_truncated, threads=threads)


def _check_replaceable(path: Path, what: str, magic: tuple[bytes, ...]) -> None:
    """Refuse to overwrite an existing file unless it looks like a previous fpi output."""
    if not path.exists() or path.is_dir():
        return
    try:
        with path.open("rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise InputError(f"{path}: cannot read the existing {what}: {exc.strerror}") from None
    if head and not head.startswith(magic):
        raise InputError(f"{path}: exists and is not an fpi {what}; refusing to replace it "
                         "(choose another path or remove it)")


def _ingest(sources: list[Source], out: Path, rpath: Path, *, strict: bool,
            progress: bool | Progress | None, block_bytes: int,
            redact_rejects: Callable[[Problem], Problem] | None = None,
            allow_truncated: bool = False, threads: int = PARSE_WORKERS) -> IngestReport:
    _check_replaceable(out, "Parquet output", (b"PAR1",))
    _check_replaceable(rpath, "rejects file (JSON Lines)", (b"{",))
    # The Parquet and its rejects are one set: staged beside their targets and renamed
    # into place together at the end (fpi.files.staged_files); scratch lives in staging.
    with (staged_files([out, rpath]) as (out_stage, rejects_stage),
          tempfile.TemporaryDirectory(prefix=".scratch-", dir=out_stage.parent) as tmp_name):
        scratch = Path(tmp_name)
        with rejects_stage.open("wb") as fh:
            rejects = _Rejects(fh, redact_rejects)
            first_tmp = scratch / "batches.parquet"
            sink = _ParquetSink(first_tmp)
            run = _Run(sources, rejects, sink, _progress(progress), block_bytes,
                       allow_truncated, threads)
            try:
                run.run()
            finally:
                sink.close()
        if sink.rows == 0:
            # Nothing is replaced: the previous output and rejects stay as they were.
            raise _nothing_left(run, None)
        if run.finish():
            # Already in order (the usual case for logs written session by session):
            # the batches file is the output, no second pass.
            os.replace(first_tmp, out_stage)
        else:
            sort_rewrite(first_tmp, out_stage, run.sink.all_keys(), scratch,
                         on_bucket=_sort_progress(progress))
    report = _report(run, rejects, rpath, out)
    if strict and rejects.count:
        raise strict_error(report, f"good records were written to {out}, rejects to {rpath}")
    return report
