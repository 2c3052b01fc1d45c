"""Validate raw turn frames against the trace format with vectorized rules.

A raw frame comes out of a parser: the canonical columns (``timestamp`` may
still be text) plus any unknown columns or struct fields. :func:`validate`
returns the canonical rows that pass every rule and, for the rows that do not,
the first rule each broke with a one-line message.

:func:`validate_table` is the entry point for everything ingest parses: it
returns canonical Arrow tables, the form ingest writes. A block straight from
the JSON reader is first screened in Arrow compute (:func:`screen`): when every
row passes every rule and nothing needs rewriting (the usual case), the block
becomes canonical without a round trip through Polars. Anything else (a broken
rule, a label alias, an unusual timestamp, unknown nested fields) goes through
:func:`validate`, which finds each bad row's rule and message. The screen is
conservative: it may send a clean block the slow way, never pass a bad one, and
a test checks that both ways give the same table.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from fpi.ingest.parse import CANONICAL_ARROW, EXTRA_COL, FAST_SCHEMA, arrow_int, arrow_strings
from fpi.ingest.problems import RULES, Problem, shown
from fpi.schema import (
    BLOCKS,
    CLASSES,
    ENUM_FIELDS,
    FORMAT_VERSION,
    NON_NEGATIVE_FIELDS,
    TURN_SCHEMA,
    UNIT_INTERVAL_FIELDS,
    PolarsDType,
    normalize_label_expr,
)

if TYPE_CHECKING:
    from polars.expr.whenthen import ChainedThen, Then

#: Row position in the raw frame, carried through validation.
ROW_COL = "__row"

_TIMESTAMP_FORMATS = (
    "%Y-%m-%dT%H:%M:%S%.f%#z",
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%d %H:%M:%S%.f%#z",
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%dT%H:%M%#z",
    "%Y-%m-%dT%H:%M",
    "%Y-%m-%d",
)


# ---------------------------------------------------------------------------
# Field access
# ---------------------------------------------------------------------------


def _field_expr(path: str) -> tuple[pl.Expr, str | None]:
    """Expression for a dotted path; for ``a.b[].c``: the list ``a.b`` and element field ``c``."""
    head, _, elem = path.partition("[].")
    parts = head.split(".")
    expr = pl.col(parts[0])
    for part in parts[1:]:
        expr = expr.struct.field(part)
    return expr, (elem or None)


def _any(path: str, cond: Any) -> pl.Expr:
    """``cond(value)`` for a scalar path, or "any element" for a list path."""
    expr, elem = _field_expr(path)
    if elem is None:
        return cond(expr).fill_null(False)
    return (
        expr.list.eval(cond(pl.element().struct.field(elem)).fill_null(False))
        .list.any()
        .fill_null(False)
    )


def parse_timestamp(expr: pl.Expr) -> pl.Expr:
    """Parse ISO 8601 text to Datetime(us, UTC); naive times are taken as UTC."""
    return pl.coalesce(
        [
            expr.str.to_datetime(fmt, strict=False, time_unit="us", time_zone="UTC")
            for fmt in _TIMESTAMP_FORMATS
        ]
    )


def _timestamp(frame: pl.DataFrame) -> pl.Expr:
    dtype = frame.schema["timestamp"]
    col = pl.col("timestamp")
    if dtype == pl.String:
        # Arrow's ISO 8601 cast is the fastest when every value has a zone (the
        # usual "...Z" form); any other spelling falls back to Polars formats.
        try:
            parsed = frame.get_column("timestamp").to_arrow().cast(pa.timestamp("us", tz="UTC"))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return parse_timestamp(col)
        return pl.lit(pl.Series("timestamp", parsed, dtype=pl.Datetime("us", "UTC")))
    if isinstance(dtype, pl.Datetime):
        as_utc = (col.dt.replace_time_zone("UTC") if dtype.time_zone is None
                  else col.dt.convert_time_zone("UTC"))
        return as_utc.dt.cast_time_unit("us")
    return pl.lit(None, dtype=pl.Datetime("us", "UTC"))


# ---------------------------------------------------------------------------
# Conforming
# ---------------------------------------------------------------------------


def _conform_struct(expr: pl.Expr, src: PolarsDType, dst: pl.Struct) -> pl.Expr:
    """Rebuild ``expr`` as ``dst`` by field *name* (extra fields dropped, missing ones null)."""
    if src == dst:
        return expr
    if not isinstance(src, pl.Struct):
        return pl.lit(None, dtype=dst)
    have = {f.name: f.dtype for f in src.fields}
    fields = []
    for f in dst.fields:
        if f.name not in have:
            fields.append(pl.lit(None, dtype=f.dtype).alias(f.name))
            continue
        sub = expr.struct.field(f.name)
        if isinstance(f.dtype, pl.Struct):
            sub = _conform_struct(sub, have[f.name], f.dtype)
        elif isinstance(f.dtype, pl.List) and isinstance(f.dtype.inner, pl.Struct):
            src_inner = have[f.name]
            if isinstance(src_inner, pl.List) and src_inner.inner != f.dtype.inner:
                sub = sub.list.eval(
                    _conform_struct(pl.element(), src_inner.inner, f.dtype.inner)
                )
            sub = sub.cast(f.dtype, strict=False)
        elif have[f.name] != f.dtype:
            sub = sub.cast(f.dtype, strict=False)
        fields.append(sub.alias(f.name))
    return pl.when(expr.is_not_null()).then(pl.struct(fields)).otherwise(None)


def json_value(expr: pl.Expr) -> pl.Expr:
    """JSON text of each value (vectorized: encode a one-field struct, strip the wrapper)."""
    return pl.struct(expr.alias("v")).struct.json_encode().str.slice(5).str.strip_suffix("}")


def json_member(key: str, value: pl.Expr) -> pl.Expr:
    """The JSON object member ``"key":value`` of each value (null where it is null)."""
    return pl.when(value.is_not_null()).then(pl.lit(orjson.dumps(key).decode() + ":")
                                             + json_value(value))


def object_body(text: pl.Expr) -> pl.Expr:
    """The members of JSON object text (its inside, without braces), null when none."""
    body = text.str.strip_prefix("{").str.strip_suffix("}")
    return pl.when(body.str.len_chars() > 0).then(body)


def field_leaves(expr: pl.Expr, dtype: PolarsDType, key: str) -> list[tuple[str, pl.Expr]]:
    """Dotted keys and values of the leaves under an unknown field (objects are flattened,
    lists kept whole)."""
    if dtype == pl.Null:
        return []
    if isinstance(dtype, pl.Struct):
        return [leaf for f in dtype.fields
                for leaf in field_leaves(expr.struct.field(f.name), f.dtype, f"{key}.{f.name}")]
    return [(key, expr)]


def _extra_parts(frame: pl.DataFrame) -> tuple[list[pl.Expr], list[tuple[str, pl.Expr]], bool]:
    """The pieces of the ``extra`` text: one ``"key":value`` (or null) expression per
    unknown leaf or extras text, the unknown leaves, and whether extras text is among them."""
    parts: list[pl.Expr] = []
    all_leaves: list[tuple[str, pl.Expr]] = []
    texts = False
    for name, dtype in frame.schema.items():
        if name in (ROW_COL, EXTRA_COL) or dtype == pl.Null:
            continue
        if name == "extra" and dtype == pl.String:
            # Extras already gathered by an earlier ingest, written back out as text.
            parts.append(object_body(pl.col(name).str.strip_chars()))
            texts = True
            continue
        if name in BLOCKS and isinstance(dtype, pl.Struct):
            known = set(BLOCKS[name].to_schema())
            leaves = [leaf for f in dtype.fields if f.name not in known
                      for leaf in field_leaves(pl.col(name).struct.field(f.name), f.dtype,
                                               f"{name}.{f.name}")]
        elif name in TURN_SCHEMA:
            continue
        else:
            leaves = field_leaves(pl.col(name), dtype, name)
        all_leaves += leaves
        parts += [json_member(key, value) for key, value in leaves]
    if EXTRA_COL in frame.schema:
        parts.append(object_body(pl.col(EXTRA_COL)))
        texts = True
    return parts, all_leaves, texts


def extra_column(frame: pl.DataFrame) -> pl.Series:
    """The ``extra`` column of a raw frame: its unknown fields as a JSON object keyed by
    dotted path (null leaves left out), or null when it has none.

    Rows that carry every unknown field (the usual case: one logger's output)
    are encoded in one pass, rows with none are null without encoding anything
    (the usual case when a few loggers add fields), and only the others are
    pieced together leaf by leaf.
    """
    parts, leaves, texts = _extra_parts(frame)
    nulls = pl.repeat(None, frame.height, dtype=pl.String, eager=True).alias("extra")
    if not parts:
        return nulls
    joined = pl.concat_str(parts, separator=",", ignore_nulls=True)
    piecewise = pl.when(joined.is_null() | (joined == "")).then(None).otherwise(
        "{" + joined + "}")
    if texts:
        return frame.select(piecewise.alias("extra")).to_series()
    whole = pl.struct([v.alias(k) for k, v in leaves]).struct.json_encode()
    present = frame.select(pl.sum_horizontal([v.is_not_null() for _, v in leaves])
                           ).to_series()
    complete = present == len(leaves)
    if complete.all():
        return frame.select(whole.alias("extra")).to_series()
    # Same text every way: with no null leaf, the leaf-by-leaf join is the object;
    # with every leaf null, it is null.
    out = nulls
    for rows, expr in ((complete, whole), ((present > 0) & ~complete, piecewise)):
        if rows.any():
            out = out.scatter(rows.arg_true(), frame.filter(rows).select(expr).to_series())
    return out


# ---------------------------------------------------------------------------
# Rules
# ---------------------------------------------------------------------------


@functools.cache
def _checks(timestamps: bool) -> tuple[tuple[str, str, pl.Expr], ...]:
    """(rule, field, condition) in the order a record's first broken rule is reported;
    the timestamp rule where the frame has timestamps (``timestamps``: its column is not
    all-null). Built once for each (about 150 expressions, 1.7 ms a block to build)."""
    ts = pl.col("__ts")
    checks: list[tuple[str, str, pl.Expr]] = []
    sv = pl.col("schema_version")
    checks.append(("bad_schema_version", "schema_version",
                   (sv.is_not_null() & (sv != FORMAT_VERSION))))
    sid = pl.col("session_id")
    checks.append(("missing_session_id", "session_id",
                   sid.is_null() | (sid.str.strip_chars().str.len_chars() == 0)))
    ti = pl.col("turn_index")
    checks.append(("bad_turn_index", "turn_index", ti.is_null() | (ti < 0)))
    checks.append(("missing_wake", "wake", pl.col("wake").is_null()))
    if timestamps:
        checks.append(("bad_timestamp", "timestamp",
                       pl.col("timestamp").is_not_null() & ts.is_null()))
    for path in UNIT_INTERVAL_FIELDS:
        checks.append(("out_of_range", path,
                       _any(path, lambda e: (e < 0) | (e > 1) | e.is_nan())))
    for path in NON_NEGATIVE_FIELDS:
        checks.append(("negative_duration", path, _any(path, lambda e: e < 0)))
    for path, allowed in ENUM_FIELDS.items():
        checks.append(("bad_enum", path,
                       _any(path, lambda e, v=allowed: e.is_not_null() & ~_one_of(e, v))))
    for name in ("failure_point", "failure_point_2"):
        raw = pl.col("label").struct.field(name)
        checks.append(("bad_label", f"label.{name}",
                       (raw.is_not_null() & normalize_label_expr(raw).is_null()).fill_null(False)))
    return tuple(checks)


def _one_of(expr: pl.Expr, values: tuple[str, ...]) -> pl.Expr:
    out = expr == values[0]
    for v in values[1:]:
        out = out | (expr == v)
    return out


def _message(rule: str, path: str, row: dict[str, Any]) -> str:
    if rule == "missing_wake":
        return f"wake is missing: {RULES[rule].description}"
    if rule == "bad_enum":
        detail = "must be one of " + ", ".join(ENUM_FIELDS[path])
    else:
        detail = RULES[rule].detail
    value: Any = row
    if "[]" not in path:
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return f"{path} {detail} (got {shown(value)})"
    return f"{path} {detail}"


def validate(frame: pl.DataFrame) -> tuple[pl.DataFrame, list[Problem]]:
    """Split a raw frame into canonical good rows and problems.

    Returns the good rows as a canonical frame (``TURN_SCHEMA`` columns, labels
    normalized, timestamps parsed) plus :data:`ROW_COL` (the raw row position),
    and one :class:`~fpi.ingest.problems.Problem` per rejected row (found at its raw
    row position).
    """
    frame = _typed(frame)
    checks = _checks(frame.get_column("timestamp").dtype not in (pl.Null,))
    # One pass marks the rows that break any rule (usually none); which rule, and
    # the message, are worked out for those rows only.
    frame = frame.with_columns(pl.any_horizontal([c for _, _, c in checks]).alias("__bad"))
    problems: list[Problem] = []
    bad = frame.filter(pl.col("__bad"))
    if bad.height:
        problems = _problems(bad, checks)
        frame = frame.filter(~pl.col("__bad"))
    return _canonical(frame), problems


def _typed(frame: pl.DataFrame) -> pl.DataFrame:
    """A raw frame with :data:`ROW_COL`, its keys cast, its blocks conformed to the
    canonical structs, the parsed timestamp (``__ts``) and ``extra`` (``__extra_out``)."""
    frame = frame.with_row_index(ROW_COL)
    for name in ("schema_version", "session_id", "turn_index", "timestamp"):
        if name not in frame.columns:
            frame = frame.with_columns(pl.lit(None, dtype=TURN_SCHEMA[name]).alias(name))
    ts = _timestamp(frame)
    extra = extra_column(frame)
    schema = frame.schema  # (built anew, nested dtypes and all, on each access)
    conformed = [
        _conform_struct(pl.col(name), schema[name], dtype).alias(name)
        if name in schema
        else pl.lit(None, dtype=dtype).alias(name)
        for name, dtype in BLOCKS.items()
    ]
    return frame.with_columns(
        pl.col("schema_version").cast(pl.Int64, strict=False),
        pl.col("turn_index").cast(pl.Int64, strict=False),
        pl.col("session_id").cast(pl.String, strict=False),
        ts.alias("__ts"),
        extra.alias("__extra_out"),
        *conformed,
    )


def _problems(bad: pl.DataFrame, checks: Sequence[tuple[str, str, pl.Expr]]) -> list[Problem]:
    """For rows that break a rule: the first rule each breaks, with its message."""
    rule_expr: Then | ChainedThen = pl.when(checks[0][2]).then(pl.lit(checks[0][0]))
    field_expr: Then | ChainedThen = pl.when(checks[0][2]).then(pl.lit(checks[0][1]))
    for rule, path, cond in checks[1:]:
        rule_expr = rule_expr.when(cond).then(pl.lit(rule))
        field_expr = field_expr.when(cond).then(pl.lit(path))
    bad = bad.with_columns(rule_expr.otherwise(None).alias("__rule"),
                           field_expr.otherwise(None).alias("__field"))
    problems: list[Problem] = []
    for row in bad.select([ROW_COL, "__rule", "__field", *BLOCKS, "schema_version",
                           "session_id", "turn_index", "timestamp"]).iter_rows(named=True):
        message = _message(row["__rule"], row["__field"], row)
        problems.append(Problem.found(row[ROW_COL], row["__rule"], message))
    return problems


def _canonical(frame: pl.DataFrame) -> pl.DataFrame:
    """Typed rows that passed, as a canonical frame (labels normalized) plus :data:`ROW_COL`."""
    return frame.select(_canonical_columns())


@functools.cache
def _canonical_columns() -> tuple[pl.Expr | str, ...]:
    """The columns of :func:`_canonical` (built once)."""
    label = pl.col("label")
    return (
        pl.col("schema_version").fill_null(FORMAT_VERSION),
        "session_id",
        "turn_index",
        pl.col("__ts").alias("timestamp"),
        *[n for n in BLOCKS if n != "label"],
        pl.when(label.is_not_null())
        .then(
            pl.struct(
                normalize_label_expr(label.struct.field("failure_point")).alias("failure_point"),
                label.struct.field("annotator"),
                normalize_label_expr(label.struct.field("failure_point_2")).alias(
                    "failure_point_2"
                ),
            )
        )
        .alias("label"),
        pl.col("__extra_out").alias("extra"),
        ROW_COL,
    )


# ---------------------------------------------------------------------------
# Arrow: the fast screen and the canonical table
# ---------------------------------------------------------------------------


def _arrow_values(table: pa.Table, path: str) -> pa.ChunkedArray:
    """The values at a dotted path (``a.b[].c``: every element's ``c``, flattened)."""
    head, _, elem = path.partition("[].")
    parts = head.split(".")
    values = table.column(parts[0])
    for part in parts[1:]:
        values = pc.struct_field(values, part)
    if elem:
        values = pc.struct_field(pc.list_flatten(values), elem)
    return values


def _some(mask: Any) -> bool:
    """Whether any value of a boolean array is true (nulls count as false)."""
    return bool(pc.any(mask).as_py())


def _broken(table: pa.Table) -> bool:
    """Whether any row may break a rule of :func:`_checks` (or needs a label rewritten).

    Errs on the side of True: a block it passes must pass :func:`validate` whole.
    """
    sid = table.column("session_id")
    if sid.null_count or table.column("turn_index").null_count or table.column("wake").null_count:
        return True
    # Blank session ids. Arrow and Polars agree on what whitespace is in ASCII; beyond
    # it they may not, so there an id must hold a printable ASCII character (which
    # no definition calls whitespace).
    if not pc.all(pc.string_is_ascii(sid)).as_py():
        if not pc.all(pc.match_substring_regex(sid, "[!-~]")).as_py():
            return True
    elif len(sid) and pc.min(pc.utf8_length(pc.utf8_trim_whitespace(sid))).as_py() == 0:
        return True
    if _some(pc.not_equal(table.column("schema_version"), _VERSION)):
        return True
    if _some(pc.less(table.column("turn_index"), _ZERO)):
        return True
    for path in UNIT_INTERVAL_FIELDS:
        values = _arrow_values(table, path)
        if _some(pc.or_kleene(pc.or_kleene(pc.less(values, _ZERO), pc.greater(values, _ONE)),
                              pc.is_nan(values))):
            return True
    for path in NON_NEGATIVE_FIELDS:
        if _some(pc.less(_arrow_values(table, path), _ZERO)):
            return True
    for path, allowed in _ALLOWED.items():
        values = _arrow_values(table, path)
        # Labels must already be spelled canonically: aliases are rewritten by validate.
        if _some(pc.and_(pc.is_valid(values), pc.invert(pc.is_in(values, value_set=allowed)))):
            return True
    return False


# Built once, from buffers (see fpi.ingest.parse.arrow_ints: no pandas question).
_VERSION, _ZERO, _ONE = arrow_int(FORMAT_VERSION), arrow_int(0), arrow_int(1)
_ALLOWED: dict[str, pa.StringArray] = {
    path: arrow_strings(allowed) for path, allowed in
    {**ENUM_FIELDS, **{f"label.{name}": CLASSES for name in ("failure_point", "failure_point_2")}
     }.items()}


def _split_block(column: pa.ChunkedArray, canonical: pa.StructType
                 ) -> tuple[pa.ChunkedArray, pa.ChunkedArray] | None:
    """A block with unknown fields as (its canonical struct, a struct of the unknown
    fields), both null where the block is; None unless every known field is there
    with its canonical type."""
    have: pa.StructType = column.type
    names = [have.field(i).name for i in range(have.num_fields)]
    if len(set(names)) != len(names) or any(
        f.name not in names or have.field(f.name).type != f.type for f in canonical
    ):
        return None
    unknown = [n for n in names if canonical.get_field_index(n) < 0]
    known_chunks, unknown_chunks = [], []
    for chunk in column.chunks:
        absent = chunk.is_null()
        known_chunks.append(pa.StructArray.from_arrays(
            [pc.struct_field(chunk, f.name) for f in canonical], fields=list(canonical),
            mask=absent))
        unknown_chunks.append(pa.StructArray.from_arrays(
            [pc.struct_field(chunk, n) for n in unknown], names=unknown, mask=absent))
    return (pa.chunked_array(known_chunks, canonical),
            pa.chunked_array(unknown_chunks, pa.struct([have.field(n) for n in unknown])))


def screen(table: pa.Table) -> pa.Table | None:
    """The canonical table of a clean block straight from the JSON reader, or None.

    None means the block needs :func:`validate`: a rule may be broken, a label
    is an alias, a timestamp is not in a form Arrow parses, a known field has an
    unexpected type, or unknown fields are of a shape Polars cannot take.
    Unknown fields (top-level, or directly inside a block) go to ``extra``,
    written by :func:`extra_column`, as :func:`validate` writes them.
    """
    names = table.schema.names
    if EXTRA_COL in names or len(set(names)) != len(names):
        return None
    known: dict[str, pa.ChunkedArray] = {}
    others: dict[str, pa.ChunkedArray] = {}  # what goes to ``extra``, in the raw order
    for name in names:
        column = table.column(name)
        if name not in FAST_SCHEMA.names:
            others[name] = column
            continue
        want = FAST_SCHEMA.field(name).type
        if column.type == want:
            known[name] = column
            continue
        split = _split_block(column, want) if name in BLOCKS and pa.types.is_struct(
            column.type) else None
        if split is None:
            return None
        known[name], others[name] = split
    if len(known) != len(FAST_SCHEMA) or _broken(pa.table(known)):
        return None
    try:
        timestamp = known["timestamp"].cast(pa.timestamp("us", tz="UTC"))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    if others:
        try:
            unknown = pl.from_arrow(pa.table(others))
            assert isinstance(unknown, pl.DataFrame)
            extra = extra_column(unknown).to_arrow()
        except (pl.exceptions.PolarsError, pa.ArrowException):
            return None
        extra = extra.cast(pa.string())
    else:
        extra = pa.nulls(table.num_rows, pa.string())
    known.update(schema_version=pc.fill_null(known["schema_version"], _VERSION),
                 timestamp=timestamp,
                 extra=extra)
    return pa.Table.from_arrays([known[n] for n in CANONICAL_ARROW.names],
                                schema=CANONICAL_ARROW)


def to_arrow(good: pl.DataFrame) -> pa.Table:
    """A canonical Polars frame as a table of :data:`CANONICAL_ARROW` (what ingest writes)."""
    return good.select(CANONICAL_ARROW.names).to_arrow().cast(CANONICAL_ARROW)


def validate_table(frame: pa.Table | pl.DataFrame, screened: bool = True
                   ) -> tuple[pa.Table | None, np.ndarray | None, list[Problem]]:
    """Validate a raw table or frame into canonical Arrow rows.

    Returns the good rows (None if none), the raw row position of each good row
    (None when every row passed, in order) and the problems. ``screened=False``
    skips the fast screen (for tables whose unknown fields are already text).
    """
    if isinstance(frame, pa.Table):
        if screened:
            fast = screen(frame)
            if fast is not None:
                return fast, None, []
        frame = pl.from_arrow(frame)
        assert isinstance(frame, pl.DataFrame)
    good, problems = validate(frame)
    if not good.height:
        return None, None, problems
    rows = good.get_column(ROW_COL).cast(pl.Int64).to_numpy()
    return to_arrow(good), rows, problems
