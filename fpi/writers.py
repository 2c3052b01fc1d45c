"""Writers of every input form fpi reads: turn JSON Lines (plain, gzip, zstd),
Parquet, CSV and stage events.

The readers live in :mod:`fpi.ingest`; these are their inverses, used by the
simulator, the sample logs and the round-trip tests. Every writer takes a
canonical frame (:data:`fpi.schema.TURN_SCHEMA`) and writes atomically.

Conventions (the trace format, docs/traces.md):

- Timestamps are ISO 8601 UTC with a ``Z``; milliseconds when the value has no
  finer part, else microseconds, so the written text is lossless.
- ``extra`` (unknown fields, a JSON object keyed by dotted path) is written back
  where the fields came from: ``{"asr.model_version": "7"}`` becomes
  ``"asr": {..., "model_version": "7"}``; in CSV each key is its own dotted
  column; in stage events a stage-prefixed key goes into that stage's ``data``
  and any other key onto the ``wake`` event, next to ``data``, under its dotted name.
- JSON Lines and events write null fields as ``null`` (absent means unknown).
- Parquet holds the canonical frame itself (with its ``extra`` column): the
  fast path ingest reads back without validation.
- CSV flattens structs to dotted columns (``asr.confidence``) and JSON-encodes
  list fields (``asr.nbest``); an empty cell is null.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final

import orjson
import polars as pl
import pyarrow.parquet as pq

from fpi.errors import InputError, SchemaError
from fpi.files import atomic_path
from fpi.schema import BLOCKS, TURN_SCHEMA, conform

#: Every format the writers know, by name (ingest reads each of them back; the forms
#: it tells apart are :data:`fpi.ingest.READ_FORMATS`).
WRITE_FORMATS: Final[tuple[str, ...]] = ("jsonl", "jsonl.gz", "jsonl.zst", "parquet", "csv",
                                         "events")

#: Order in which a turn's stage events are written (device and label ride along).
EVENT_ORDER: Final[tuple[str, ...]] = ("device", "wake", "asr", "nlu", "er", "result",
                                       "feedback", "label")


def infer_format(path: str | os.PathLike[str]) -> str:
    """The format a file name implies.

    ``*.events.jsonl[.gz]`` is stage events; ``*.jsonl``/``*.ndjson``/``*.json``
    turn JSON Lines, with ``.gz``/``.zst`` compression; ``*.parquet``/``*.pq``;
    ``*.csv``.

    Raises
    ------
    InputError
        When the suffix names no known format.
    """
    name = Path(path).name.lower()
    if ".events." in name or name.endswith(".events"):
        return "events"
    if name.endswith((".jsonl.gz", ".ndjson.gz", ".json.gz")) or name.endswith(".gz"):
        return "jsonl.gz"
    if name.endswith(".zst"):
        return "jsonl.zst"
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith(".csv"):
        return "csv"
    raise InputError(
        f"{path}: cannot tell the format from the file name; use one of "
        f"{', '.join(WRITE_FORMATS)} (e.g. --format jsonl.gz)"
    )


def _check_format(fmt: str) -> str:
    if fmt not in WRITE_FORMATS:
        raise InputError(f"unknown format {fmt!r}; known formats: {', '.join(WRITE_FORMATS)}")
    return fmt


# ---------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------


def timestamp_text(expr: pl.Expr) -> pl.Expr:
    """ISO 8601 UTC text with ``Z``: milliseconds, or microseconds when needed (lossless)."""
    return (
        pl.when(expr.dt.microsecond() % 1000 == 0)
        .then(expr.dt.to_string("%Y-%m-%dT%H:%M:%S%.3fZ"))
        .otherwise(expr.dt.to_string("%Y-%m-%dT%H:%M:%S%.6fZ"))
    )


def _prepare(batch: pl.DataFrame) -> pl.DataFrame:
    """Conform to the canonical dtypes (writers accept any frame ingest could produce)."""
    if batch.schema != TURN_SCHEMA:
        batch = conform(batch)
    return batch


def _place(obj: dict[str, Any], dotted: str, value: Any) -> None:
    """Put ``value`` at ``dotted`` inside ``obj``, creating objects on the way.

    A path blocked by a non-object value keeps the dotted key at the top level
    (nothing is lost).
    """
    parts = dotted.split(".")
    node: Any = obj
    for part in parts[:-1]:
        nxt = node.get(part)
        if nxt is None:
            nxt = {}
            node[part] = nxt
        if not isinstance(nxt, dict):
            obj[dotted] = value
            return
        node = nxt
    node[parts[-1]] = value


def _patch_lines(lines: list[str], extras: list[str | None], patch: Any) -> list[str]:
    """Re-encode only the lines whose row carries extra fields (``patch(obj, extra)``)."""
    for i, extra in enumerate(extras):
        if extra is None:
            continue
        try:
            fields = orjson.loads(extra)
        except orjson.JSONDecodeError as exc:
            raise SchemaError(f"extra of row {i} is not a JSON object: {exc}") from exc
        if not isinstance(fields, dict) or not fields:
            continue
        obj = orjson.loads(lines[i])
        patch(obj, fields)
        lines[i] = orjson.dumps(obj).decode()
    return lines


def turn_lines(batch: pl.DataFrame) -> list[str]:
    """One JSON object per turn (no newline), extra fields written back at their place."""
    batch = _prepare(batch)
    cols = [c for c in TURN_SCHEMA if c != "extra"]
    encoded = pl.struct(
        *[timestamp_text(pl.col(c)).alias(c) if c == "timestamp" else pl.col(c) for c in cols]
    ).struct.json_encode()
    lines = batch.select(encoded).to_series().to_list()

    def patch(obj: dict[str, Any], fields: dict[str, Any]) -> None:
        for key, value in fields.items():
            head = key.partition(".")[0]
            if head in BLOCKS and obj.get(head) is None:
                # an absent stage stays absent: keep the field under its dotted name
                obj[key] = value
            else:
                _place(obj, key, value)

    return _patch_lines(lines, batch.get_column("extra").to_list(), patch)


def _list_json(expr: pl.Expr) -> pl.Expr:
    """A list-of-structs column as JSON text (null stays null)."""
    inner = expr.list.eval(pl.element().struct.json_encode()).list.join(",")
    return pl.when(expr.is_null()).then(None).otherwise(pl.concat_str(pl.lit("["), inner,
                                                                      pl.lit("]")))


def csv_frame(batch: pl.DataFrame) -> pl.DataFrame:
    """The flat CSV view of a canonical frame: dotted columns, list fields as JSON text."""
    batch = _prepare(batch)
    exprs: list[pl.Expr] = [
        pl.col("schema_version"),
        pl.col("session_id"),
        pl.col("turn_index"),
        timestamp_text(pl.col("timestamp")).alias("timestamp"),
    ]
    for block, dtype in BLOCKS.items():
        for f in dtype.fields:
            field = pl.col(block).struct.field(f.name)
            name = f"{block}.{f.name}"
            if isinstance(f.dtype, pl.List):
                exprs.append(_list_json(field).alias(name))
            else:
                exprs.append(field.alias(name))
    flat = batch.select(exprs)
    extra = batch.get_column("extra")
    if extra.null_count() < len(extra):
        # field names from the union of the objects; values as text (a CSV cell is
        # text: strings as they are, anything else as its JSON)
        decoded = extra.str.json_decode(infer_schema_length=None)
        names = [f.name for f in decoded.dtype.fields] if isinstance(
            decoded.dtype, pl.Struct) else []
        for name in names:
            if name in flat.columns:
                raise SchemaError(f"extra field {name!r} collides with a trace-format column")
            if "'" in name or "\\" in name:
                values = [None if e is None else _text_value(orjson.loads(e).get(name))
                          for e in extra.to_list()]
                col = pl.Series(name, values, dtype=pl.String)
            else:
                col = extra.str.json_path_match(f"$['{name}']")
            flat = flat.with_columns(col.alias(name))
    return flat


def _text_value(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def event_lines(batch: pl.DataFrame) -> list[str]:
    """Stage events of a canonical frame: one JSON object per present stage per turn.

    Event timestamps follow the pipeline: ``wake``, ``device`` and ``label`` at
    the turn's timestamp, ``asr`` after the audio and recognition, then ``nlu``,
    ``er``, ``result`` after their latencies, ``feedback`` a second later. The
    earliest event of a turn carries the turn's timestamp.
    """
    batch = _prepare(batch).with_row_index("_row")
    ts = pl.col("timestamp")

    def ms(expr: pl.Expr) -> pl.Expr:
        return pl.duration(milliseconds=expr.fill_null(0).round(0).cast(pl.Int64))

    t_asr = ts + ms(pl.col("asr").struct.field("audio_ms")) + ms(
        pl.col("asr").struct.field("latency_ms")
    )
    t_nlu = t_asr + pl.duration(milliseconds=25)
    t_er = t_nlu + ms(pl.col("er").struct.field("latency_ms"))
    t_result = t_er + ms(pl.col("result").struct.field("latency_ms"))
    times = {
        "device": ts, "wake": ts, "label": ts, "asr": t_asr, "nlu": t_nlu, "er": t_er,
        "result": t_result, "feedback": t_result + pl.duration(seconds=1),
    }
    parts = []
    for rank, stage in enumerate(EVENT_ORDER):
        parts.append(
            batch.filter(pl.col(stage).is_not_null()).select(
                pl.col("_row"),
                pl.lit(rank, dtype=pl.Int64).alias("_rank"),
                pl.lit(stage).alias("_stage"),
                pl.col("extra"),
                pl.struct(
                    pl.col("session_id"),
                    pl.col("turn_index"),
                    pl.lit(stage).alias("stage"),
                    timestamp_text(times[stage]).alias("timestamp"),
                    pl.col(stage).alias("data"),
                )
                .struct.json_encode()
                .alias("line"),
            )
        )
    events = pl.concat(parts).sort("_row", "_rank")
    lines = events.get_column("line").to_list()
    stages = events.get_column("_stage").to_list()
    stage_names = set(EVENT_ORDER)

    rows = events.get_column("_row").to_list()
    present = {(r, s) for r, s in zip(rows, stages, strict=True)}

    def patch_for(i: int) -> Any:
        stage = stages[i]
        row = rows[i]

        def patch(obj: dict[str, Any], fields: dict[str, Any]) -> None:
            for key, value in fields.items():
                head, _, rest = key.partition(".")
                if head == stage and rest:
                    if obj.get("data") is None:
                        obj["data"] = {}
                    _place(obj["data"], rest, value)
                elif stage == "wake" and (head not in stage_names or (row, head) not in present):
                    # turn-level unknown fields, and those of a stage with no event,
                    # ride on the wake event under their dotted name
                    obj[key] = value

        return patch

    extras = events.get_column("extra").to_list()
    for i, extra in enumerate(extras):
        if extra is not None:
            _patch_lines_one(lines, i, extra, patch_for(i))
    return lines


def _patch_lines_one(lines: list[str], i: int, extra: str, patch: Any) -> None:
    fields = orjson.loads(extra)
    if isinstance(fields, dict) and fields:
        obj = orjson.loads(lines[i])
        patch(obj, fields)
        lines[i] = orjson.dumps(obj).decode()


# ---------------------------------------------------------------------------
# The streaming writer
# ---------------------------------------------------------------------------


class TurnWriter(contextlib.AbstractContextManager["TurnWriter"]):
    """Stream canonical frames to one file in any format, atomically.

    The file appears only when the ``with`` block ends without an error.

    Parameters
    ----------
    path
        Output file. Its parent directory is created.
    format
        One of :data:`WRITE_FORMATS`; inferred from the suffix when None.
    compression_level
        gzip (1-9) or zstd (1-22) level for the compressed forms.

    Examples
    --------
    >>> with TurnWriter("night.jsonl.gz") as w:  # doctest: +SKIP
    ...     for batch in simulate(100_000, seed=1):
    ...         w.write(batch)
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        format: str | None = None,
        *,
        compression_level: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.format = _check_format(format) if format else infer_format(path)
        self.compression_level = compression_level
        self.rows = 0
        self._atomic: contextlib.AbstractContextManager[Path] | None = None
        self._raw: IO[bytes] | None = None
        self._stream: IO[bytes] | gzip.GzipFile | None = None
        self._parquet: pq.ParquetWriter | None = None
        self._csv_columns: list[str] | None = None
        self._gz_events = False

    def __enter__(self) -> TurnWriter:
        self._atomic = atomic_path(self.path)
        tmp = self._atomic.__enter__()
        if self.format == "parquet":
            self._tmp = tmp
            return self
        self._raw = open(tmp, "wb")
        compressed_events = self.format == "events" and self.path.name.lower().endswith(".gz")
        if self.format == "jsonl.gz" or compressed_events:
            level = self.compression_level or 6
            # mtime=0: the same data gives the same bytes
            self._stream = gzip.GzipFile(filename="", fileobj=self._raw, mode="wb",
                                         compresslevel=level,
                                         mtime=0)
        elif self.format == "jsonl.zst":
            import zstandard

            level = self.compression_level or 3
            self._stream = zstandard.ZstdCompressor(level=level).stream_writer(
                self._raw, closefd=False
            )
        else:
            self._stream = self._raw
        return self

    def write(self, batch: pl.DataFrame) -> None:
        """Append the turns of ``batch`` (a canonical frame)."""
        if self._atomic is None:
            raise RuntimeError("TurnWriter.write outside a 'with' block")
        if batch.height == 0:
            return
        batch = _prepare(batch)
        self.rows += batch.height
        if self.format == "parquet":
            table = batch.to_arrow()
            if self._parquet is None:
                self._parquet = pq.ParquetWriter(self._tmp, table.schema, compression="zstd")
            self._parquet.write_table(table)
            return
        assert self._stream is not None
        if self.format == "csv":
            self._write_csv(batch)
            return
        lines = event_lines(batch) if self.format == "events" else turn_lines(batch)
        self._stream.write(("\n".join(lines) + "\n").encode())

    def _write_csv(self, batch: pl.DataFrame) -> None:
        assert self._stream is not None
        flat = csv_frame(batch)
        if self._csv_columns is None:
            self._csv_columns = flat.columns
            header = True
        else:
            new = [c for c in flat.columns if c not in self._csv_columns]
            if new:
                raise SchemaError(
                    f"{self.path}: extra field(s) {', '.join(new)} first appear after the CSV "
                    "header was written; write the whole frame at once with write_turns"
                )
            missing = [c for c in self._csv_columns if c not in flat.columns]
            flat = flat.with_columns(pl.lit(None).alias(c) for c in missing).select(
                self._csv_columns
            )
            header = False
        buf = io.BytesIO()
        flat.write_csv(buf, include_header=header)
        self._stream.write(buf.getvalue())

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._atomic is not None
        try:
            if self._parquet is not None:
                self._parquet.close()
            elif self.format == "parquet" and exc is None:
                pq.write_table(_prepare(pl.DataFrame(schema=TURN_SCHEMA)).to_arrow(), self._tmp)
            if self._stream is not None and self._stream is not self._raw:
                self._stream.close()
            if self._raw is not None:
                self._raw.close()
        finally:
            self._atomic.__exit__(exc_type, exc, tb)
            self._atomic = None


def write_turns(
    frame: pl.DataFrame, path: str | os.PathLike[str], format: str | None = None
) -> Path:
    """Write a canonical frame to ``path`` in ``format`` (inferred from the suffix when None).

    Returns the path written. See :class:`TurnWriter` for the formats.
    """
    with TurnWriter(path, format) as writer:
        writer.write(frame)
    return Path(path)
