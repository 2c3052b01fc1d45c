"""Find trace files, tell their form, and turn each into blocks of JSON Lines.

Every input form ends up as :class:`Block` objects: a run of JSON Lines text
plus where each line came from. Turn JSON Lines files are cut into big blocks of
whole lines straight from the (decompressed) byte stream; CSV rows, Parquet rows
and assembled stage events are re-encoded as one JSON object per line so that
one parser and one set of rules serve every form.
"""

from __future__ import annotations

import glob
import io
import logging
import os
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import orjson
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from fpi.errors import InputError
from fpi.files import unique_paths
from fpi.ingest.parse import ParsedBlock, bad_path, bound_problem
from fpi.ingest.problems import TYPE_RULE, Problem, shown
from fpi.schema import BLOCKS, MAX_DEPTH, TURN_SCHEMA, PolarsDType

log = logging.getLogger(__name__)

#: Input forms ``--format`` accepts (compression is always detected from the bytes);
#: the forms fpi.writers writes are :data:`fpi.writers.WRITE_FORMATS`.
READ_FORMATS: tuple[str, ...] = ("jsonl", "parquet", "csv", "events")
_FORMAT_ALIASES = {"jsonl.gz": "jsonl", "jsonl.zst": "jsonl", "ndjson": "jsonl", "json": "jsonl",
                   "events.gz": "events", "events.jsonl": "events", "pq": "parquet"}

_COMPRESSED = (".gz", ".zst", ".zstd")
_TRACE_SUFFIXES = (".jsonl", ".ndjson", ".parquet", ".pq", ".csv")
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

#: Compressed bytes handed to a decompressor at once.
_PIECE = 1 << 16

#: Lines per block for forms that are re-encoded line by line.
SYNTHETIC_BLOCK_LINES = 50_000


class Broken(Exception):
    """A byte stream ended early or is corrupt; what was read before it is still good."""


@dataclass
class Block:
    """A run of JSON Lines and where each line came from.

    Either every line comes from one file (``file_id`` and ``first_line``; line
    ``i`` of the block is line ``first_line + i`` of the file, and its raw text is
    the line itself), or ``locs``/``raws`` give each line's source and raw text
    (CSV rows, Parquet rows, assembled stage events).
    """

    data: bytes | memoryview
    file_id: int = 0
    first_line: int = 1
    locs: list[tuple[int, int]] | None = None
    raws: Sequence[str] | None = None
    involved: Sequence[Sequence[str]] | None = None
    #: Number of lines (newline count, plus one for a last line without newline).
    n_lines: int | None = None
    #: How far into its source file (in file bytes) reading had got: for progress.
    src_pos: int = 0
    _lines: list[bytes] | None = field(default=None, repr=False)

    def loc(self, index: int) -> tuple[int, int]:
        """``(file_id, line)`` of block line ``index``."""
        if self.locs is not None:
            return self.locs[index]
        return self.file_id, self.first_line + index

    def raw(self, index: int) -> str:
        """Raw text of block line ``index`` (only called for rejected lines)."""
        if self.raws is not None:
            return self.raws[index]
        if self._lines is None:
            self._lines = bytes(self.data).split(b"\n")
        return self._lines[index].decode("utf-8", errors="replace")


@dataclass(frozen=True)
class Source:
    """One input file and its detected form."""

    path: Path
    format: str  #: one of :data:`READ_FORMATS`
    compression: str | None  #: "gzip", "zstd" or None


# ---------------------------------------------------------------------------
# Finding files
# ---------------------------------------------------------------------------


def _is_trace_name(path: Path) -> bool:
    name = path.name.lower()
    if name.startswith(".") or name.endswith(".rejects.jsonl"):
        return False
    for suffix in _COMPRESSED:
        name = name.removesuffix(suffix)
    return name.endswith(_TRACE_SUFFIXES)


def expand_paths(paths: str | Path | Sequence[str | Path], exclude: Sequence[Path] = ()
                 ) -> list[Path]:
    """Files named by ``paths`` (files, directories searched recursively, globs), in order.

    Raises :class:`InputError` for a path that does not exist, a glob with no
    match, a directory with no trace files, or no paths at all.
    """
    items = [paths] if isinstance(paths, str | Path) else list(paths)
    if not items:
        raise InputError("no input given: name one or more trace files, directories or globs")
    skip = {p.resolve() for p in exclude}
    out: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and _is_trace_name(p)
                           and p.resolve() not in skip)
            if not found:
                raise InputError(
                    f"{path}: no trace files in this directory (looked for "
                    f"{', '.join('*' + s for s in _TRACE_SUFFIXES)}, optionally .gz/.zst)"
                )
            out.extend(found)
        elif path.is_file():
            out.append(path)
        elif any(ch in str(item) for ch in "*?["):
            found = sorted(Path(p) for p in glob.glob(str(item), recursive=True)
                           if Path(p).is_file() and Path(p).resolve() not in skip)
            if not found:
                raise InputError(f"{item}: no file matches this pattern")
            out.extend(found)
        else:
            raise InputError(f"{path}: no such file or directory")
    # The same file named twice would only produce duplicate turns.
    return unique_paths(out)


def detect(path: Path, forced: str | None = None) -> Source:
    """Tell the form of ``path`` from ``forced``, its magic bytes, suffix and first line."""
    with path.open("rb") as fh:
        magic = fh.read(4)
    compression = ("gzip" if magic[:2] == _GZIP_MAGIC
                   else "zstd" if magic == _ZSTD_MAGIC else None)
    if forced is not None:
        fmt = _FORMAT_ALIASES.get(forced.lower(), forced.lower())
        if fmt not in READ_FORMATS:
            raise InputError(f"unknown format {forced!r}: use one of {', '.join(READ_FORMATS)}")
        return Source(path, fmt, compression)
    if magic == b"PAR1":
        return Source(path, "parquet", None)
    name = path.name.lower()
    for suffix in _COMPRESSED:
        name = name.removesuffix(suffix)
    if name.endswith((".parquet", ".pq")):
        return Source(path, "parquet", None)
    if name.endswith((".csv", ".tsv")):
        return Source(path, "csv", compression)
    first = _first_line(path, compression)
    if name.endswith((".jsonl", ".ndjson", ".json")) or first.lstrip().startswith(b"{"):
        return Source(path, "events" if _looks_like_event(first) or ".events." in name
                      else "jsonl", compression)
    if b"session_id" in first:
        return Source(path, "csv", compression)
    if not first.strip():
        return Source(path, "jsonl", compression)
    raise InputError(
        f"{path}: cannot tell the format (not JSON Lines, Parquet or CSV); use --format"
    )


def _first_line(path: Path, compression: str | None) -> bytes:
    buf = b""
    try:
        for chunk in byte_chunks(path, compression, chunk_size=1 << 16):
            buf += chunk
            lines = [ln for ln in buf.split(b"\n")[:-1] if ln.strip()]
            if lines:
                return lines[0]
            if len(buf) > 1 << 20:
                break
    except Broken:
        pass
    return buf.strip().split(b"\n")[0] if buf.strip() else b""


def _looks_like_event(line: bytes) -> bool:
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return isinstance(obj, dict) and "stage" in obj and "data" in obj and "wake" not in obj


# ---------------------------------------------------------------------------
# Byte streams
# ---------------------------------------------------------------------------


def byte_chunks(path: Path, compression: str | None, chunk_size: int = 1 << 22,
                position: list[int] | None = None) -> Iterator[bytes]:
    """Decompressed bytes of ``path`` in chunks; raises :class:`Broken` where it breaks.

    Decompression is done by hand (not ``gzip.open``) so that everything before a
    truncation or corruption is still delivered. ``position[0]``, when given,
    follows how far into the (compressed) file reading has got, for progress.
    """
    produced = 0
    with path.open("rb") as fh:
        if compression is None:
            while chunk := fh.read(chunk_size):
                if position is not None:
                    position[0] = fh.tell()
                yield chunk
            return
        if compression == "gzip":
            dec: Any = zlib.decompressobj(wbits=31)
            error: type[Exception] = zlib.error
            new: Callable[[], Any] = lambda: zlib.decompressobj(wbits=31)  # noqa: E731
        else:
            dec = zstandard.ZstdDecompressor().decompressobj()
            error = zstandard.ZstdError
            new = lambda: zstandard.ZstdDecompressor().decompressobj()  # noqa: E731
        pending = b""
        while True:
            comp = pending or fh.read(chunk_size)
            pending = b""
            if position is not None:
                position[0] = fh.tell()
            if not comp:
                break
            base = fh.tell() - len(comp)  # (approximate after a concatenated member)
            # Fed in small pieces: at a corruption, everything decompressed before
            # it is still delivered, and the message can say about where it was.
            rest: bytes | None = None
            for at in range(0, len(comp), _PIECE):
                try:
                    out = dec.decompress(comp[at : at + _PIECE])
                except error as exc:
                    raise Broken(f"corrupt {compression} data near byte {base + at:,} of "
                                 f"{_size(fh):,} ({produced:,} bytes decompressed before it): "
                                 f"{exc}") from None
                if out:
                    produced += len(out)
                    yield out
                if dec.eof:
                    rest = dec.unused_data + comp[at + _PIECE :]
                    break
            if rest is not None:
                # Concatenated members/frames: start a new decompressor on the rest.
                dec = new()
                pending = rest if rest.strip(b"\x00") else b""
                if not pending:
                    more = fh.read(chunk_size)
                    if not more:
                        return
                    pending = more
        if not dec.eof:
            raise Broken(f"truncated {compression} file: it ends before the end of its "
                         f"compressed stream, after {_size(fh):,} bytes ({produced:,} bytes "
                         "decompressed)")


def _size(fh: Any) -> int:
    return os.fstat(fh.fileno()).st_size


def _count_newlines(data: bytes, end: int) -> int:
    """Newlines in ``data[:end]``, counted in slices that stay in cache."""
    whole = np.frombuffer(data, dtype=np.uint8)
    step = 1 << 20  # (its compare mask then fits in L2: a third less time than 4 MB)
    return sum(int(np.count_nonzero(whole[i : min(i + step, end)] == 0x0A))
               for i in range(0, end, step))


def _plain_blocks(source: Source, file_id: int, block_size: int) -> Iterator[Block]:
    """Blocks of whole lines from an uncompressed file.

    Each block is one read of about ``block_size`` bytes, cut after its last
    newline; the next read starts right there. No buffer is zero-filled and no
    partial line is carried and joined, and a block's bytes never change once
    read (reject texts are taken from them later). Not a memory map: a file
    truncated while mapped would kill the process (SIGBUS); a read just ends.
    """
    offset, line, want = 0, 1, block_size
    with source.path.open("rb", buffering=0) as fh:
        while True:
            fh.seek(offset)
            data = fh.read(want)
            if not data:
                return
            at_end = len(data) < want
            end = len(data) if at_end else data.rfind(b"\n") + 1
            if end == 0:  # a line longer than a block: read more of it
                want *= 2
                continue
            newlines = _count_newlines(data, end)
            n = newlines + (0 if data[end - 1] == 0x0A else 1)
            yield Block(memoryview(data)[:end], file_id, line, n_lines=n, src_pos=offset + end)
            if at_end:
                return
            line += newlines
            offset += end
            want = block_size


def line_blocks(source: Source, file_id: int, block_size: int
                ) -> Iterator[Block | Problem]:
    """Blocks of whole lines from a JSON Lines file.

    Yields :class:`Block` objects, and at a break in the stream one
    ``unreadable`` :class:`Problem` for the rest.
    """
    if source.compression is None:
        yield from _plain_blocks(source, file_id, block_size)
        return
    parts: list[bytes] = []
    size = 0
    line = 1
    chunk_size = 1 << 22
    position = [0]
    try:
        for chunk in byte_chunks(source.path, source.compression, chunk_size, position):
            parts.append(chunk)
            size += len(chunk)
            if size >= block_size:
                buf = parts[0] if len(parts) == 1 else b"".join(parts)
                cut = buf.rfind(b"\n")
                if cut < 0:
                    parts, size = [buf], len(buf)
                    continue
                n = buf.count(b"\n", 0, cut + 1)
                yield Block(memoryview(buf)[: cut + 1], file_id, line, n_lines=n,
                            src_pos=position[0])
                line += n
                parts = [buf[cut + 1 :]]
                size = len(parts[0])
    except Broken as exc:
        buf = b"".join(parts)
        cut = buf.rfind(b"\n")
        if cut >= 0:
            yield Block(buf[: cut + 1], file_id, line)
            line += buf[: cut + 1].count(b"\n")
        partial = buf[cut + 1 :].decode("utf-8", errors="replace")
        yield Problem(str(source.path), line, "unreadable", str(exc), partial[:2000])
        return
    buf = b"".join(parts)
    if buf:
        yield Block(buf, file_id, line)


# ---------------------------------------------------------------------------
# CSV with dotted columns
# ---------------------------------------------------------------------------


def _leaf_types() -> dict[str, PolarsDType]:
    """Dotted path -> dtype for every known field (lists are leaves: JSON-encoded in CSV)."""
    out: dict[str, PolarsDType] = {}
    for name, dtype in TURN_SCHEMA.items():
        if isinstance(dtype, pl.Struct):
            for f in dtype.fields:
                out[f"{name}.{f.name}"] = f.dtype
        else:
            out[name] = dtype
    return out


_LEAVES = _leaf_types()
_TRUE = {"true", "1", "yes", "t", "y"}
_FALSE = {"false", "0", "no", "f", "n"}
_BOOLEANS = {**dict.fromkeys(_TRUE, True), **dict.fromkeys(_FALSE, False)}


def _csv_value(path: str, text: str) -> Any:
    """A CSV cell as the JSON value the field expects; left as text when it does not fit
    (the parser then rejects it with ``bad_type`` and the field name)."""
    dtype = _LEAVES.get(path)
    if dtype is None:
        if path in BLOCKS or path == "extra":
            return text if path == "extra" else _json_or_text(text)
        return text
    if isinstance(dtype, pl.List | pl.Struct):
        return _json_or_text(text)
    base = dtype.base_type()
    try:
        if base == pl.Float64:
            return float(text)
        if base == pl.Int64:
            return int(text)
    except ValueError:
        return text
    if base == pl.Boolean:
        low = text.strip().lower()
        return True if low in _TRUE else False if low in _FALSE else text
    return text


def _json_or_text(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def _csv_column(cells: pl.Series, path: str) -> tuple[pl.Series, pl.Series | None, str]:
    """A CSV column converted to its field's dtype: (values, rows that did not fit, expected)."""
    dtype = _LEAVES.get(path)
    if dtype is None or dtype == pl.String or path == "timestamp":  # timestamps: validation
        return cells, None, ""
    if isinstance(dtype, pl.List):
        try:
            values = cells.str.json_decode(dtype)
            return values, None, "a JSON list"
        except pl.exceptions.PolarsError:
            # Some cell is not a list of the right shape: find which, one by one.
            out: list[Any] = []
            bad: list[bool] = []
            for text in cells.to_list():
                value = None if text is None else _json_or_text(text)
                wrong = text is not None and bad_path(value, dtype, path) is not None
                out.append(None if wrong else value)
                bad.append(wrong)
            return pl.Series(cells.name, out, dtype=dtype, strict=False), pl.Series(bad), \
                "a JSON list"
    base = dtype.base_type()
    text = cells.str.strip_chars()
    if base == pl.Boolean:
        values = text.str.to_lowercase().replace_strict(_BOOLEANS, default=None,
                                                        return_dtype=pl.Boolean)
        expected = "true or false"
    else:
        values = text.cast(base, strict=False)
        expected = "an integer" if base == pl.Int64 else "a number"
    return values.alias(cells.name), cells.is_not_null() & values.is_null(), expected


def _csv_parsed(frame: pl.DataFrame, rows: list[int], file_id: int
                ) -> tuple[Block, ParsedBlock]:
    """One slice of a CSV file (all cells text) as a raw frame for validation.

    Vectorized per column: numbers, booleans and JSON lists are converted by
    Polars; a cell that does not fit rejects its row (``bad_type``, or the rule
    of that field) naming the column.
    """
    frame = frame.select(pl.when(pl.col(c).str.len_bytes() > 0).then(pl.col(c)).alias(c)
                         for c in frame.columns)  # an empty cell is null
    converted: dict[str, pl.Series] = {}
    problems: dict[int, Problem] = {}
    for name in frame.columns:
        cells = frame.get_column(name)
        values, bad, expected = _csv_column(cells, name)
        converted[name] = values
        if bad is not None and bad.any():
            rule = TYPE_RULE.get(name, "bad_type")
            for i in bad.arg_true().to_list():
                if i not in problems:
                    problems[i] = Problem.found(
                        i, rule, f"{name} must be {expected}, got {shown(cells[i])}")
    # Columns in turn-record order (known fields, blocks, then unknown fields), so
    # that ``extra`` lists unknown fields as the other forms do.
    top: list[str] = []
    blocks: dict[str, list[str]] = {b: [] for b in BLOCKS}
    for name in frame.columns:
        head, _, tail = name.partition(".")
        if tail and head in BLOCKS:
            blocks[head].append(name)
        else:
            top.append(name)
    raw = pl.DataFrame(converted)
    columns = [pl.col(n) for n in top if n in TURN_SCHEMA]
    for head, names in blocks.items():
        if names:
            present = pl.any_horizontal([pl.col(n).is_not_null() for n in names])
            columns.append(pl.when(present).then(pl.struct(
                [pl.col(n).alias(n.partition(".")[2]) for n in names])).alias(head))
    columns += [pl.col(n) for n in top if n not in TURN_SCHEMA]
    parsed = raw.select(columns)
    kept = [i for i in range(frame.height) if i not in problems]
    if problems:
        parsed = parsed[kept]
    texts = frame  # raw text of a rejected row: its cells, as a JSON object

    def raw_text(i: int) -> str:
        return str(texts[i].select(pl.struct(pl.all()).struct.json_encode()).item())

    block = Block(b"", file_id, 0, locs=[(file_id, r) for r in rows],
                  raws=_LazyText(frame.height, raw_text))
    return block, ParsedBlock(parsed, kept, sorted(problems.values(), key=lambda p: p.index),
                              frame.height)


_T = TypeVar("_T")


class _LazyText(Sequence[_T]):
    """Raw text per row (or another per-row value), computed only for the rows that
    are rejected."""

    def __init__(self, n: int, get: Callable[[int], _T]) -> None:
        self.n, self.get = n, get

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: Any) -> Any:
        return self.get(i)


REQUIRED_CSV_COLUMNS = ("session_id", "turn_index")


def _csv_rows(frame: pl.DataFrame, file_id: int, line_map: list[int] | None
              ) -> Iterator[Block]:
    """Per-row path (a Python step per row) for CSV files with whole-block JSON cells."""
    columns = frame.columns
    locs: list[tuple[int, int]] = []
    raws: list[str] = []
    lines: list[bytes] = []
    for i, values in enumerate(frame.iter_rows()):
        record: dict[str, Any] = {}
        deep = None
        for col, text in zip(columns, values, strict=True):
            if text is None or text == "":
                continue
            if len(text) > MAX_DEPTH and bound_problem(0, text.encode()) is not None:
                deep = orjson.dumps(col) + b":" + text.encode()
                break
            head, _, tail = col.partition(".")
            if tail and head in BLOCKS:
                record.setdefault(head, {})
                if isinstance(record[head], dict):
                    record[head][tail] = _csv_value(col, text)
            else:
                record[col] = _csv_value(col, text)
        row_no = i + 2 if line_map is None else line_map[min(i + 1, len(line_map) - 1)]
        # A cell too deep or too long to decode: the line is that cell as it is, so the
        # parser rejects the row (too_deep / too_large) without ever recursing into it.
        lines.append(b"{" + deep + b"}" if deep is not None else orjson.dumps(record))
        raws.append(orjson.dumps(dict(zip(columns, values, strict=True))).decode())
        locs.append((file_id, row_no))
        if len(lines) >= SYNTHETIC_BLOCK_LINES:
            yield Block(b"\n".join(lines), file_id, 0, locs, raws)
            lines, locs, raws = [], [], []
    if lines:
        yield Block(b"\n".join(lines), file_id, 0, locs, raws)


def csv_blocks(source: Source, file_id: int
               ) -> Iterator[Block | Problem | tuple[Block, ParsedBlock]]:
    """Parsed slices of a CSV file with dotted column names (``asr.confidence``).

    Cells are converted column by column (vectorized); row numbers are as a
    spreadsheet shows them: the header is row 1.
    """
    parts: list[bytes] = []
    broken: Problem | None = None
    try:
        parts.extend(byte_chunks(source.path, source.compression))
    except Broken as exc:
        data = b"".join(parts)
        cut = data.rfind(b"\n")
        broken = Problem(str(source.path), data[: cut + 1].count(b"\n") + 1, "unreadable",
                         str(exc), data[cut + 1 :].decode("utf-8", errors="replace")[:2000])
        parts = [data[: cut + 1]]
    data = b"".join(parts)
    if not data.strip():
        if broken:
            yield broken
        return
    bad_utf8: list[Problem] = []
    line_map: list[int] | None = None
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        # Drop the undecodable lines (rejected on their own) and keep the rest.
        kept = []
        line_map = []
        for i, ln in enumerate(data.split(b"\n")):
            try:
                ln.decode("utf-8")
            except UnicodeDecodeError as exc:
                bad_utf8.append(Problem(str(source.path), i + 1, "invalid_utf8",
                                        f"invalid UTF-8 at byte {exc.start}",
                                        ln.decode("utf-8", errors="replace")))
                continue
            kept.append(ln)
            line_map.append(i + 1)
        data = b"\n".join(kept)
    try:
        header = data[: data.find(b"\n")] if b"\n" in data else data
        # Tab-separated exports are common too: a header with tabs and no commas.
        sep = "\t" if b"\t" in header and b"," not in header else ","
        frame = pl.read_csv(io.BytesIO(data), infer_schema=False, separator=sep)
    except pl.exceptions.PolarsError as exc:
        raise InputError(f"{source.path}: not a readable CSV file: {str(exc).splitlines()[0]}"
                         ) from None
    missing = [c for c in REQUIRED_CSV_COLUMNS if c not in frame.columns]
    if not any(c == "wake" or c.startswith("wake.") for c in frame.columns):
        missing.append("wake.* (e.g. wake.detected)")
    if missing:
        raise InputError(f"{source.path}: CSV is missing required column(s): {', '.join(missing)}")
    yield from bad_utf8
    if any(c in BLOCKS for c in frame.columns):
        # A whole block as a JSON object in one cell: the per-row path reads it.
        yield from _csv_rows(frame, file_id, line_map)
    else:
        for start in range(0, frame.height, SYNTHETIC_BLOCK_LINES):
            part = frame.slice(start, SYNTHETIC_BLOCK_LINES)
            rows = [i + 2 if line_map is None else line_map[min(i + 1, len(line_map) - 1)]
                    for i in range(start, start + part.height)]
            yield _csv_parsed(part, rows, file_id)
    if broken:
        yield broken


# ---------------------------------------------------------------------------
# Parquet
# ---------------------------------------------------------------------------


def is_canonical_parquet(path: Path) -> bool:
    """Whether ``path`` was written by ``fpi ingest`` (exactly the canonical dtypes)."""
    try:
        return pl.read_parquet_schema(path) == TURN_SCHEMA
    except Exception:  # unreadable files are reported by the reader
        return False


def parquet_frames(source: Source, batch_rows: int = 100_000) -> Iterator[pl.DataFrame]:
    """Record batches of a Parquet file as Polars frames; raises :class:`Broken`."""
    try:
        pq.ParquetFile(source.path)  # a clear error for a damaged file, before streaming
        # Polars' streaming reader: faster than pyarrow's batches, memory bounded.
        yield from pl.scan_parquet(source.path).collect_batches(chunk_size=batch_rows)
    except (OSError, pa.ArrowException, pl.exceptions.PolarsError) as exc:
        raise Broken(f"unreadable Parquet: {str(exc).splitlines()[0]}") from None


def parquet_blocks(source: Source, file_id: int) -> Iterator[Block | Problem]:
    """Blocks from a Parquet file that is not in the canonical layout.

    Each row is encoded as JSON by Polars (vectorized) and parsed like a JSON
    Lines record, so nested or flat, typed or not, every rule applies the same way.
    """
    row = 1
    try:
        for frame in parquet_frames(source, SYNTHETIC_BLOCK_LINES):
            frame = _unflatten(frame)
            texts = frame.select(pl.struct(pl.all()).struct.json_encode()).to_series().to_list()
            n = len(texts)
            yield Block("\n".join(texts).encode(), file_id, row,
                        locs=[(file_id, row + i) for i in range(n)], raws=texts)
            row += n
    except Broken as exc:
        yield Problem(str(source.path), row, "unreadable", str(exc), "")


def _unflatten(frame: pl.DataFrame) -> pl.DataFrame:
    """Gather flat dotted columns (``asr.confidence``) into structs."""
    dotted: dict[str, list[str]] = {}
    for c in frame.columns:
        head, _, tail = c.partition(".")
        if tail and head in BLOCKS and head not in frame.columns:
            dotted.setdefault(head, []).append(c)
    if not dotted:
        return frame
    new = [
        pl.struct([pl.col(c).alias(c.partition(".")[2]) for c in cols]).alias(head)
        for head, cols in dotted.items()
    ]
    return frame.with_columns(new).drop([c for cols in dotted.values() for c in cols])
