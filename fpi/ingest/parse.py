"""Parse blocks of JSON Lines into raw tables, setting unreadable records aside.

The fast path hands a whole block (tens of MB of complete lines) to
``pyarrow.json`` with the canonical schema, so a clean block costs one C++
parse (single-threaded: ingest parses several blocks at once in its own
workers, which costs less CPU than splitting each block again). Only when a
block fails (bad JSON, a field of the wrong type, invalid UTF-8, two values on
one line) is it parsed again line by line with orjson to find and set aside
the bad lines; the rest of the block still goes through pyarrow. The careful
path moves unknown fields into an ``__extra`` text column; on the fast path
they stay as Arrow columns and validation folds them into ``extra``.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import polars as pl
import pyarrow as pa
import pyarrow.json as pj

from fpi.ingest.problems import TYPE_RULE, Problem, shown
from fpi.schema import BLOCKS, MAX_DEPTH, MAX_RECORD_BYTES, TURN_SCHEMA, PolarsDType

log = logging.getLogger(__name__)

#: Column carrying unknown fields (JSON object text) out of the fallback parser.
EXTRA_COL = "__extra"


@dataclass
class ParsedBlock:
    """The result of parsing one block of JSON Lines."""

    #: One row per good record (raw, not yet validated): an Arrow table straight from
    #: the JSON reader, or a Polars frame from the CSV and stage-event readers.
    frame: pa.Table | pl.DataFrame | None
    row_lines: list[int] | None  #: block line index of each row; None when row i is line i
    problems: list[Problem]  #: found at their block line index
    records: int  #: non-blank lines in the block
    careful: bool = False  #: parsed line by line (unknown fields already in ``__extra``)


# ---------------------------------------------------------------------------
# Schemas
# ---------------------------------------------------------------------------


def _arrow_type(dtype: PolarsDType) -> pa.DataType:
    """The pyarrow type ``pyarrow.json`` can convert to (no large_* types)."""
    if isinstance(dtype, pl.Struct):
        return pa.struct([pa.field(f.name, _arrow_type(f.dtype)) for f in dtype.fields])
    if isinstance(dtype, pl.List):
        return pa.list_(_arrow_type(dtype.inner))
    if isinstance(dtype, pl.Datetime):
        return pa.timestamp(dtype.time_unit or "us", tz=dtype.time_zone)
    mapping: dict[Any, pa.DataType] = {
        pl.String: pa.string(),
        pl.Float64: pa.float64(),
        pl.Int64: pa.int64(),
        pl.Boolean: pa.bool_(),
    }
    return mapping[dtype.base_type()]


#: Fields the JSON reader converts; ``timestamp`` stays text, parsed later by Polars
#: so that one bad timestamp rejects one record, not the whole block.
_KNOWN_FIELDS: dict[str, pl.DataType] = {
    name: (pl.String() if name == "timestamp" else dtype)
    for name, dtype in TURN_SCHEMA.items()
    if name != "extra"
}

FAST_SCHEMA = pa.schema([pa.field(n, _arrow_type(d)) for n, d in _KNOWN_FIELDS.items()])
FALLBACK_SCHEMA = pa.schema([*FAST_SCHEMA, pa.field(EXTRA_COL, pa.string())])

#: The canonical frame as Arrow: what ingest writes to Parquet. ``pl.from_arrow``
#: of a table of this schema has exactly :data:`fpi.schema.TURN_SCHEMA`.
CANONICAL_ARROW = pa.schema([pa.field(n, _arrow_type(d)) for n, d in TURN_SCHEMA.items()])


#: Bytes the JSON reader parses at once inside a block (one chunk of its table each):
#: a piece's builders then stay in cache, 10% less CPU for the parse than in one
#: piece of 16 MB. Far above the longest record parsed (MAX_RECORD_BYTES).
PARSE_PIECE = 4 << 20


def _read(data: bytes | memoryview, schema: pa.Schema, unexpected: str) -> pa.Table:
    return pj.read_json(
        pa.BufferReader(data),
        read_options=pj.ReadOptions(block_size=PARSE_PIECE, use_threads=False),
        parse_options=pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior=unexpected),
    )


# ---------------------------------------------------------------------------
# Arrow values from NumPy and Python, without pandas
# ---------------------------------------------------------------------------
# ``pa.array`` and ``pa.scalar`` (also behind a Python value passed to a
# ``pyarrow.compute`` function) import pandas, when it is installed, the first time
# they convert anything, only to ask whether it is a pandas object: 0.3 CPU-s that a
# clean ingest needs for nothing. These build the few arrays and scalars it needs
# from buffers instead, which asks nothing (a test checks that an ingest imports no
# pandas). The ``fpi`` executable asks that question once with pandas hidden
# (:mod:`fpi.lightgbm_import`); a library caller keeps pyarrow's usual answer.


def arrow_ints(values: np.ndarray) -> pa.Int64Array:
    """An int64 array of ``values`` (any integer NumPy array)."""
    data = np.ascontiguousarray(values, dtype=np.int64)
    return pa.Array.from_buffers(pa.int64(), len(data), [None, pa.py_buffer(data)])


def arrow_int(value: int) -> pa.Int64Scalar:
    """``value`` as an int64 scalar."""
    return arrow_ints(np.array([value]))[0]


def arrow_mask(mask: np.ndarray) -> pa.BooleanArray:
    """A boolean array of a NumPy boolean ``mask`` (a filter for ``Table.filter``)."""
    bits = np.packbits(np.asarray(mask, dtype=bool), bitorder="little")
    return pa.Array.from_buffers(pa.bool_(), len(mask), [None, pa.py_buffer(bits)])


def arrow_strings(values: tuple[str, ...]) -> pa.StringArray:
    """A string array of ``values``."""
    encoded = [v.encode() for v in values]
    offsets = np.cumsum([0, *map(len, encoded)], dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), len(encoded),
                                 [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))])


# ---------------------------------------------------------------------------
# Bounds: depth and size
# ---------------------------------------------------------------------------

#: A block in which every window of this many bytes holds a newline has no line
#: of 2 * SCREEN_WINDOW bytes or more, so none nested SCREEN_WINDOW levels deep:
#: shallow enough for pyarrow's recursive parser (it crashes the process at some
#: tens of thousands of levels). The exact MAX_DEPTH check then runs on the
#: parsed schema (:func:`schema_too_deep`), before Polars (which crashes at a
#: few thousand) ever sees it.
SCREEN_WINDOW = 4096

_NEWLINE = re.compile(b"\n")
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_BRACKETS = np.zeros(256, dtype=np.int64)
_BRACKETS[[ord("["), ord("{")]] = 1
_BRACKETS[[ord("]"), ord("}")]] = -1


def json_depth(line: bytes) -> int:
    """Nesting depth of the JSON text ``line`` (an object of scalars is 1), counted on
    the bytes outside strings, without parsing (no recursion, whatever the depth)."""
    if line.count(b"[") + line.count(b"{") <= MAX_DEPTH:
        return min(line.count(b"[") + line.count(b"{"), MAX_DEPTH)
    bare = _STRING.sub(b"", line)
    steps = _BRACKETS[np.frombuffer(bare, dtype=np.uint8)]
    return int(np.cumsum(steps).max(initial=0))


def bound_problem(index: int, line: bytes) -> Problem | None:
    """``too_large`` or ``too_deep`` for one line over the limits, else None."""
    if len(line) > MAX_RECORD_BYTES:
        return Problem.found(index, "too_large", f"the record is {len(line):,} bytes long; "
                                                 f"the limit is {MAX_RECORD_BYTES:,}")
    depth = json_depth(line)
    if depth > MAX_DEPTH:
        return Problem.found(index, "too_deep", f"the record is nested {depth:,} levels deep; "
                                                f"the limit is {MAX_DEPTH}")
    return None


def screen_bounds(data: bytes | memoryview) -> tuple[bytes | memoryview, list[Problem]]:
    """Blank out the lines of a block that are too long or too deep to parse safely.

    Cheap for ordinary blocks: one ``find`` per :data:`SCREEN_WINDOW` bytes proves
    every line short. Only the lines around a window without a newline are checked
    exactly; those over a limit are replaced by blank lines (line numbers stay) and
    returned as problems.
    """
    n = len(data)
    # (a regex search, not bytes.find: the block may be a memoryview)
    long_at = [p for p in range(0, n - SCREEN_WINDOW, SCREEN_WINDOW)
               if _NEWLINE.search(data, p, p + SCREEN_WINDOW) is None]
    if not long_at:
        return data, []
    raw = bytes(data)
    problems: list[Problem] = []
    spans: list[tuple[int, int]] = []
    seen_start = -1
    for p in long_at:
        start = raw.rfind(b"\n", 0, p) + 1
        if start == seen_start:
            continue
        seen_start = start
        end = raw.find(b"\n", p)
        end = n if end < 0 else end
        problem = bound_problem(raw.count(b"\n", 0, start), raw[start:end])
        if problem is not None:
            problems.append(problem)
            spans.append((start, end))
    if not spans:
        return data, []
    out = bytearray(raw)
    for start, end in spans:
        out[start:end] = b" " * (end - start)
    return bytes(out), problems


def type_depth(dtype: pa.DataType, limit: int = MAX_DEPTH + 1) -> int:
    """Nesting depth of an Arrow type (scalars 0, a list or struct 1 + its deepest
    child), counted no further than ``limit`` (so the recursion stays shallow)."""
    if dtype.num_fields == 0 or limit <= 0:
        return 0
    return 1 + max(type_depth(dtype.field(i).type, limit - 1) for i in range(dtype.num_fields))


def has_nul_name(dtype: pa.DataType | pa.Schema) -> bool:
    """Whether a field name anywhere in ``dtype`` holds a NUL character (lost on the way
    to Polars, whose Arrow import reads names as C strings)."""
    fields = list(dtype) if isinstance(dtype, pa.Schema) else [
        dtype.field(i) for i in range(dtype.num_fields)]
    return any("\x00" in f.name or has_nul_name(f.type) for f in fields)


def schema_too_deep(schema: pa.Schema) -> bool:
    """Whether some record of a table of ``schema`` may be nested deeper than MAX_DEPTH."""
    return 1 + max((type_depth(f.type) for f in schema), default=0) > MAX_DEPTH


# ---------------------------------------------------------------------------
# Block parsing
# ---------------------------------------------------------------------------


def loads(index: int, line: bytes) -> Any:
    """Parse one JSON value, or return the ``invalid_json`` problem of block line ``index``.

    orjson first; a line it refuses is tried once more with the standard library,
    which (like pyarrow's block parser) also takes ``NaN`` and ``Infinity``, so
    both parsing paths accept the same lines.
    """
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        try:
            return json.loads(line)
        except (ValueError, RecursionError):
            return Problem.found(index, "invalid_json", f"invalid JSON: {exc}")


def decode_object(index: int, line: bytes) -> dict[str, Any] | Problem:
    """One line as a JSON object, or the problem that keeps it out (by the spec's rules:
    ``invalid_utf8``, ``invalid_json``, ``not_an_object``, ``too_large``, ``too_deep``);
    ``index`` is its place in the block."""
    bound = bound_problem(index, line)
    if bound is not None:
        return bound
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Problem.found(index, "invalid_utf8", f"invalid UTF-8 at byte {exc.start}")
    obj = loads(index, line)
    if isinstance(obj, Problem):
        return obj
    if not isinstance(obj, dict):
        return Problem.found(index, "not_an_object",
                             f"a JSON {type(obj).__name__}, not an object")
    return obj


def decoded_lines(data: bytes) -> Iterator[tuple[int, dict[str, Any] | Problem]]:
    """Each line of ``data`` with content: its index in the block, and its JSON object
    or the problem that keeps it out (:func:`decode_object`)."""
    for i, line in enumerate(data.split(b"\n")):
        if line.strip():
            yield i, decode_object(i, line)


def dumps(obj: Any) -> bytes:
    """JSON text of ``obj``, keeping non-finite numbers (orjson would turn them to null)."""
    try:
        text = orjson.dumps(obj)
    except TypeError:
        return json.dumps(obj, allow_nan=True).encode()
    if b"null" in text and _has_nonfinite(obj):
        return json.dumps(obj, allow_nan=True).encode()
    return text


def _has_nonfinite(obj: Any) -> bool:
    if isinstance(obj, float):
        return not math.isfinite(obj)
    if isinstance(obj, dict):
        return any(_has_nonfinite(v) for v in obj.values())
    if isinstance(obj, list):
        return any(_has_nonfinite(v) for v in obj)
    return False


def check_utf8(data: bytes | memoryview) -> None:
    """Raise ``pa.ArrowInvalid`` unless ``data`` is valid UTF-8.

    pyarrow's JSON reader does not check; Arrow's string validation does, an
    order of magnitude faster than decoding, and without a copy.
    """
    offsets = pa.py_buffer(np.array([0, len(data)], dtype=np.int64).tobytes())
    pa.Array.from_buffers(pa.large_string(), 1, [None, offsets, pa.py_buffer(data)]
                          ).validate(full=True)


#: A line that is a bare JSON ``null``.
_NULL_LINE = re.compile(rb"(?:^|\n)[ \t\r]*null[ \t\r]*(?:\n|$)")
_LEADING_SPACE = re.compile(rb"\s*")


def starts_with_null(data: bytes | memoryview) -> bool:
    """Whether the first line with content is a bare ``null``: pyarrow's JSON reader
    crashes the process on such a block, so it must never see one."""
    start = _LEADING_SPACE.match(data)
    at = start.end() if start else 0
    return bytes(data[at : at + 4]) == b"null"


def has_null_line(table: pa.Table, data: bytes | memoryview) -> bool:
    """Whether a block pyarrow has read holds a bare ``null`` line: pyarrow reads one
    as a record with every field null, so only a block with a record lacking its
    session_id is searched for it."""
    return bool(table.column("session_id").null_count) and _NULL_LINE.search(data) is not None


def count_lines(data: bytes | memoryview) -> int:
    """Lines in ``data``: its newlines, plus one for a last line without a newline."""
    raw = bytes(data)
    return raw.count(b"\n") + (0 if raw.endswith(b"\n") or not raw else 1)


def fast_read(data: bytes | memoryview, n_lines: int,
              read: Callable[[bytes | memoryview], pa.Table]
              ) -> tuple[pa.Table, list[int] | None, list[Problem]]:
    """One pyarrow parse (``read``) of a block of ``n_lines`` whole JSON Lines, guarded.

    Lines too long or too deep to parse safely are blanked first and returned as
    problems. Raises ``pa.ArrowInvalid`` for whatever the careful line-by-line
    parser must take over: invalid UTF-8, a bare ``null`` line, a record nested
    too deeply, rows that do not match lines. Returns the table, the block line
    of each row (None when row i is line i) and the problems.
    """
    data, bounded = screen_bounds(data)
    check_utf8(data)
    if starts_with_null(data):
        raise pa.ArrowInvalid("the first line is a bare null")
    table = read(data)
    if schema_too_deep(table.schema):
        raise pa.ArrowInvalid("a record is nested too deeply")
    if has_nul_name(table.schema):
        raise pa.ArrowInvalid("a field name holds a NUL character")
    if has_null_line(table, data):  # the careful path rejects it as not an object
        raise pa.ArrowInvalid("a line is a bare null")
    row_lines: list[int] | None = None
    if table.num_rows != n_lines or bounded:
        # Blank lines are skipped by pyarrow; anything else (two objects on one
        # line) breaks the row -> line mapping, so take the careful path.
        lines = bytes(data).split(b"\n")
        row_lines = [i for i, ln in enumerate(lines[:n_lines]) if ln.strip()]
        if table.num_rows != len(row_lines):
            raise pa.ArrowInvalid("rows do not match lines")
    return table, row_lines, bounded


def parse_block(data: bytes | memoryview, n_lines: int | None = None) -> ParsedBlock:
    """Parse ``data`` (complete lines of JSON Lines) into a raw Arrow table and problems."""
    if n_lines is None:
        n_lines = count_lines(data)
    try:
        table, row_lines, bounded = fast_read(data, n_lines,
                                              lambda d: _read(d, FAST_SCHEMA, "infer"))
    except pa.ArrowException as exc:
        log.debug("block of %d lines needs the line-by-line parser: %s", n_lines, exc)
        return parse_lines(bytes(data))
    records = n_lines if row_lines is None else len(row_lines) + len(bounded)
    return ParsedBlock(table, row_lines, bounded, records)


def parse_lines(data: bytes) -> ParsedBlock:
    """Careful path: one line at a time with orjson (only for blocks that failed).

    A Python loop per line is the price of pinpointing the bad ones; clean blocks
    never come here.
    """
    problems: list[Problem] = []
    good: list[bytes] = []
    good_idx: list[int] = []
    records = 0
    for i, obj in decoded_lines(data):
        records += 1
        if isinstance(obj, Problem):
            problems.append(obj)
            continue
        bad = check_types(obj)
        if bad is not None:
            problems.append(Problem.found(i, *bad))
            continue
        good.append(dumps(split_extra(obj)))
        good_idx.append(i)
    if not good:
        return ParsedBlock(None, [], problems, records, careful=True)
    try:
        table = _read(b"\n".join(good), FALLBACK_SCHEMA, "error")
    except pa.ArrowInvalid:
        # Should not happen after check_types; parse one by one rather than crash.
        tables = []
        kept = []
        for i, text in zip(good_idx, good, strict=True):
            try:
                tables.append(_read(text, FALLBACK_SCHEMA, "error"))
                kept.append(i)
            except pa.ArrowInvalid as exc:
                problems.append(Problem.found(i, "bad_type", str(exc)))
        good_idx = kept
        if not tables:
            return ParsedBlock(None, [], problems, records, careful=True)
        table = pa.concat_tables(tables)
    return ParsedBlock(table, good_idx, problems, records, careful=True)


# ---------------------------------------------------------------------------
# Per-record checks (careful path only)
# ---------------------------------------------------------------------------

_PY_TYPES: dict[Any, str] = {
    pl.String: "a string",
    pl.Float64: "a number",
    pl.Int64: "an integer",
    pl.Boolean: "true or false",
}


def bad_path(value: Any, dtype: PolarsDType, path: str) -> tuple[str, str] | None:
    """First path under ``value`` whose type does not fit ``dtype``, with what was expected."""
    if value is None:
        return None
    if isinstance(dtype, pl.Struct):
        if not isinstance(value, dict):
            return path, "an object"
        for field in dtype.fields:
            found = bad_path(value.get(field.name), field.dtype, f"{path}.{field.name}")
            if found:
                return found
        return None
    if isinstance(dtype, pl.List):
        if not isinstance(value, list):
            return path, "a list"
        for item in value:
            found = bad_path(item, dtype.inner, f"{path}[]")
            if found:
                return found
        return None
    base = dtype.base_type()
    if base == pl.String:
        ok = isinstance(value, str)
    elif base == pl.Float64:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif base == pl.Int64:
        ok = isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63
    else:
        ok = isinstance(value, bool)
    return None if ok else (path, _PY_TYPES[base])


def check_types(obj: dict[str, Any]) -> tuple[str, str] | None:
    """``(rule, message)`` for the first known field of ``obj`` with a wrong type, else None."""
    for name, dtype in _KNOWN_FIELDS.items():
        found = bad_path(obj.get(name), dtype, name)
        if found:
            path, expected = found
            top = path.replace("[]", "")
            rule = TYPE_RULE.get(top) or TYPE_RULE.get(top.split(".")[0], "bad_type")
            if top == "turn_index" and isinstance(obj.get("turn_index"), float):
                expected = "an integer >= 0"
            return rule, f"{path} must be {expected}, got {value_at(obj, path)}"
    return None


def value_at(obj: dict[str, Any], path: str) -> str:
    """The value at ``path`` in ``obj`` (for a list, its first non-null item), as
    a message quotes it."""
    value: Any = obj
    for part in path.split("."):
        part = part.removesuffix("[]")
        value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, list) and part != path.split(".")[-1].removesuffix("[]"):
            value = next((v for v in value if v is not None), None)
    return shown(value)


def flatten(value: Any, key: str, out: dict[str, Any]) -> None:
    """Unknown objects are kept leaf by leaf under dotted keys (lists kept whole)."""
    if isinstance(value, dict):
        for k, v in value.items():
            flatten(v, f"{key}.{k}", out)
    elif value is not None:
        out[key] = value


def prune_block(value: dict[str, Any], dtype: pl.Struct, key: str,
                extra: dict[str, Any]) -> dict[str, Any]:
    """A block's known fields only: unknown ones go to ``extra`` (dotted keys); unknown
    keys inside list items are dropped (as the fast path does)."""
    fields = dtype.to_schema()
    out: dict[str, Any] = {}
    for k, v in value.items():
        if k not in fields:
            flatten(v, f"{key}.{k}", extra)
            continue
        inner = fields[k]
        if (isinstance(inner, pl.List) and isinstance(inner.inner, pl.Struct)
                and isinstance(v, list)):
            item_fields = inner.inner.to_schema()
            v = [{ik: iv for ik, iv in item.items() if ik in item_fields}
                 if isinstance(item, dict) else item for item in v]
        out[k] = v
    return out


def split_extra(obj: dict[str, Any]) -> dict[str, Any]:
    """Known fields of ``obj``, with unknown ones in ``__extra`` (JSON keyed by dotted path)."""
    known: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in obj.items():
        if key in _KNOWN_FIELDS:
            if key in BLOCKS and isinstance(value, dict):
                known[key] = prune_block(value, BLOCKS[key], key, extra)
            else:
                known[key] = value
        elif key != "extra":
            flatten(value, key, extra)
    if isinstance(obj.get("extra"), str):
        # A canonical frame written back out carries its extras as a JSON string.
        try:
            parsed = orjson.loads(obj["extra"])
            if isinstance(parsed, dict):
                extra = {**parsed, **extra}
        except orjson.JSONDecodeError:
            extra["extra"] = obj["extra"]
    known[EXTRA_COL] = dumps(extra).decode() if extra else None
    return known
