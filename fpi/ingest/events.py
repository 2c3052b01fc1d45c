"""Stage events: one JSON object per stage per turn, from any files, in any order.

Events are parsed in blocks by ``pyarrow.json`` (``data`` read as the union of
every stage's fields, which share no name with two types), kept as an Arrow
frame of fixed columns, and assembled into turns with Polars joins once every
file has been read: one ``wake`` frame joined with one frame per other stage.
Turns with a repeated stage or without a wake event are rejected whole, with
every ``file:line`` involved. Assembled turns then go through the same
validation as turn records.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
import polars as pl
import pyarrow as pa
import pyarrow.json as pj

from fpi.ingest.parse import (
    EXTRA_COL,
    ParsedBlock,
    _arrow_type,
    bad_path,
    count_lines,
    decoded_lines,
    dumps,
    fast_read,
    flatten,
    prune_block,
    value_at,
)
from fpi.ingest.problems import TYPE_RULE, Problem
from fpi.ingest.sources import Block, Source, _LazyText, line_blocks
from fpi.ingest.validate import field_leaves, json_member, json_value, object_body
from fpi.schema import BLOCKS, EVENT_STAGES, KEY_COLUMNS, PolarsDType

log = logging.getLogger(__name__)


def _union() -> pl.Struct:
    fields: dict[str, PolarsDType] = {}
    for dtype in BLOCKS.values():
        for f in dtype.fields:
            assert fields.setdefault(f.name, f.dtype) == f.dtype, f.name
    return pl.Struct(fields)


#: ``data`` as read: every field any stage has (the names never clash in type).
DATA_UNION: pl.Struct = _union()
_EVENT_KEYS = ("session_id", "turn_index", "stage", "timestamp", "data")
#: Per stage, the fields of :data:`DATA_UNION` that are other stages' (unknown to it).
_FOREIGN: dict[str, frozenset[str]] = {
    stage: frozenset(DATA_UNION.to_schema()) - frozenset(block.to_schema())
    for stage, block in BLOCKS.items()}
_FAST = pa.schema([
    pa.field("session_id", pa.string()), pa.field("turn_index", pa.int64()),
    pa.field("stage", pa.string()), pa.field("timestamp", pa.string()),
    pa.field("data", _arrow_type(DATA_UNION)),
])
#: Per-event unknown fields: inside ``data`` (``EXTRA_COL``, keyed ``<stage>.<name>``)
#: and next to it (``_TOP_COL``), as JSON object text.
_TOP_COL = "__extra_top"
_FALLBACK = pa.schema([*_FAST, pa.field(EXTRA_COL, pa.string()), pa.field(_TOP_COL, pa.string())])

_EVENT_COLUMNS: dict[str, PolarsDType] = {
    "session_id": pl.String, "turn_index": pl.Int64, "stage": pl.String,
    "timestamp": pl.String, "data": DATA_UNION, EXTRA_COL: pl.String, _TOP_COL: pl.String,
    "file_id": pl.Int64, "line": pl.Int64,
}
#: Columns of every collected event frame.
EVENT_COLUMNS = pl.Schema(_EVENT_COLUMNS)

def _read_events(data: bytes | memoryview) -> pa.Table:
    return pj.read_json(pa.BufferReader(data), parse_options=pj.ParseOptions(
        explicit_schema=_FAST, unexpected_field_behavior="infer"))


#: Turns assembled per validation batch.
ASSEMBLE_BATCH = 100_000


def _fixed(frame: pl.DataFrame) -> pl.DataFrame:
    """Reduce a parsed event frame to :data:`EVENT_COLUMNS` (minus file/line).

    Unknown fields (inside ``data``, keyed ``<stage>.<name>``, or next to it) go
    to a per-event ``__extra`` JSON object body.
    """
    data_parts: list[pl.Expr] = []
    top_parts: list[pl.Expr] = []
    data_type = frame.schema["data"]
    known = set(DATA_UNION.to_schema())
    if isinstance(data_type, pl.Struct):
        for f in data_type.fields:
            if f.name in known:
                continue
            for sub, value in field_leaves(pl.col("data").struct.field(f.name), f.dtype,
                                           f.name):
                name = orjson.dumps("." + sub).decode()[1:]  # '.name"', JSON-escaped
                data_parts.append(pl.when(value.is_not_null()).then(
                    pl.concat_str([pl.lit('"'), pl.col("stage"), pl.lit(name + ":"),
                                   json_value(value)])))
    for name, dtype in frame.schema.items():
        if name in _EVENT_KEYS or name in (EXTRA_COL, _TOP_COL):
            continue
        top_parts += [json_member(key, value) for key, value in field_leaves(pl.col(name),
                                                                            dtype, name)]
    for col, parts in ((EXTRA_COL, data_parts), (_TOP_COL, top_parts)):
        if col in frame.columns:
            parts.append(object_body(pl.col(col)))

    def joined(parts: list[pl.Expr]) -> pl.Expr:
        if not parts:
            return pl.lit(None, dtype=pl.String)
        text = pl.concat_str(parts, separator=",", ignore_nulls=True)
        return pl.when(text == "").then(None).otherwise(text)
    data = pl.col("data")
    if data_type != DATA_UNION:
        have = set(data_type.to_schema()) if isinstance(data_type, pl.Struct) else set()
        data = pl.when(data.is_not_null()).then(pl.struct([
            (data.struct.field(f.name) if f.name in have else pl.lit(None, dtype=f.dtype))
            .alias(f.name) for f in DATA_UNION.fields]))
    return frame.select(
        "session_id", "turn_index", "stage", "timestamp", data.alias("data"),
        joined(data_parts).alias(EXTRA_COL), joined(top_parts).alias(_TOP_COL),
    )


#: An event whose ``data`` holds a value of the wrong type, with its turn's key: the
#: whole turn is rejected under the event's rule (found at its block line).
Poisoned = tuple[tuple[str, int], Problem]

#: ``(file_id, line)`` of an event.
Loc = tuple[int, int]


def _parse_event_lines(data: bytes) -> tuple[pl.DataFrame | None, list[int], list[Problem],
                                             list[Poisoned]]:
    """Careful path for a block that failed: one line at a time with orjson.

    Returns the good events, their block line indices, unreadable lines and
    events whose ``data`` has a wrong type (their whole turn will be rejected).
    """
    problems: list[Problem] = []
    poisoned: list[Poisoned] = []
    good: list[bytes] = []
    idx: list[int] = []
    for i, obj in decoded_lines(data):
        if isinstance(obj, Problem):
            problems.append(obj)
            continue
        why = _event_problem(obj)
        if why:
            problems.append(Problem.found(i, "bad_event", why))
            continue
        stage, payload = obj["stage"], obj["data"]
        key = (obj["session_id"], obj["turn_index"])
        found = bad_path(payload, BLOCKS[stage], stage)
        ts = obj.get("timestamp")
        if found is None and ts is not None and not isinstance(ts, str):
            found = ("timestamp", "a string")
        if found:
            path, expected = found
            rule = TYPE_RULE.get(path.replace("[]", ""), "bad_type")
            shown = value_at({"timestamp": ts} if path == "timestamp" else {stage: payload}, path)
            message = f"{path} must be {expected}, got {shown}"
            poisoned.append((key, Problem.found(i, rule, message)))
            continue
        extra: dict[str, Any] = {}
        pruned = prune_block(payload, BLOCKS[stage], stage, extra)
        top: dict[str, Any] = {}
        for k, v in obj.items():
            if k not in _EVENT_KEYS:
                flatten(v, k, top)
        good.append(dumps({
            "session_id": key[0], "turn_index": key[1], "stage": stage, "timestamp": ts,
            "data": pruned,
            EXTRA_COL: dumps(extra).decode() if extra else None,
            _TOP_COL: dumps(top).decode() if top else None,
        }))
        idx.append(i)
    if not good:
        return None, [], problems, poisoned
    table = pj.read_json(pa.BufferReader(b"\n".join(good)), parse_options=pj.ParseOptions(
        explicit_schema=_FALLBACK, unexpected_field_behavior="error"))
    return pl.from_arrow(table), idx, problems, poisoned  # type: ignore[return-value]


#: Why an event is ``bad_event``, by the part of it at fault.
_BAD_EVENT = {
    "session_id": "session_id is missing or not a non-empty string",
    "turn_index": "turn_index is missing or not an integer >= 0",
    "stage": "stage is missing or not one of " + ", ".join(EVENT_STAGES),
    "data": "data is missing or not an object",
}


def _event_problem(obj: dict[str, Any]) -> str | None:
    sid, ti, stage, data = (obj.get(k) for k in ("session_id", "turn_index", "stage", "data"))
    if not isinstance(sid, str) or not sid.strip():
        return _BAD_EVENT["session_id"]
    if not isinstance(ti, int) or isinstance(ti, bool) or ti < 0 or ti >= 2**63:
        return _BAD_EVENT["turn_index"]
    if stage not in EVENT_STAGES:
        return f"stage {stage!r} is not one of {', '.join(EVENT_STAGES)}"
    if not isinstance(data, dict):
        return _BAD_EVENT["data"]
    return None


@dataclass
class EventCollector:
    """Collects stage events from any number of files, then assembles turns."""

    files: list[str]
    sources: dict[int, Source] = field(default_factory=dict)
    frames: list[pl.DataFrame] = field(default_factory=list)
    poisoned: list[Poisoned] = field(default_factory=list)  #: placed in their files
    records: int = 0

    def _fetch_lines(self, wanted: set[tuple[int, int]]) -> dict[tuple[int, int], str]:
        """Raw text of the given (file_id, line)s: one pass over each file concerned."""
        out: dict[tuple[int, int], str] = {}
        by_file: dict[int, set[int]] = {}
        for file_id, line in wanted:
            by_file.setdefault(file_id, set()).add(line)
        for file_id, lines in by_file.items():
            source = self.sources.get(file_id)
            if source is None:
                continue
            last = max(lines)
            number = 0
            try:
                for block in line_blocks(source, file_id, 1 << 24):
                    if isinstance(block, Problem):
                        break
                    for i, text in enumerate(bytes(block.data).split(b"\n")):
                        number = block.first_line + i
                        if number in lines:
                            out[(file_id, number)] = text.decode("utf-8", errors="replace")
                    if number >= last:
                        break
            except OSError:  # the file went away: the rejects keep their file and line
                continue
        return out

    def _placed(self, block: Block, problem: Problem, raw: bool = True) -> Problem:
        """A problem found at a line of ``block``, placed in its file (with its raw text)."""
        file_id, line = block.loc(problem.index)
        return problem.placed(self.files[file_id], line, block.raw(problem.index) if raw else "")

    def add_block(self, block: Block) -> Iterator[Problem]:
        """Parse one block of an events file; yields the lines that cannot be events."""
        n = block.n_lines if block.n_lines is not None else count_lines(block.data)
        frame: pl.DataFrame | None = None
        row_lines: list[int] | None = None
        problems: list[Problem] = []
        try:
            table, row_lines, problems = fast_read(block.data, n, _read_events)
            frame = _fixed(pl.from_arrow(table))  # type: ignore[arg-type]
        except (UnicodeDecodeError, pa.ArrowException, pl.exceptions.PolarsError):
            # (Polars cannot take some inferred shapes from Arrow, e.g. a list of nulls.)
            frame, row_lines, problems, poison = _parse_event_lines(bytes(block.data))
            for key, p in poison:
                self.poisoned.append((key, self._placed(block, p, raw=False)))
            if frame is not None:
                frame = _fixed(frame)
        for p in problems:
            self.records += 1
            yield self._placed(block, p)
        if frame is None or frame.height == 0:
            return
        lines = (pl.Series(row_lines, dtype=pl.Int64) if row_lines is not None
                 else pl.int_range(0, frame.height, dtype=pl.Int64, eager=True))
        self.frames.append(frame.with_columns(
            file_id=pl.lit(block.file_id, dtype=pl.Int64),
            line=lines + block.first_line,
        ))

    def assemble(self) -> Iterator[Problem | tuple[Block, ParsedBlock]]:
        """Turns from every event read: rejects for broken turns, then validated batches."""
        if not self.frames:
            for _, problem in self.poisoned:
                self.records += 1
                yield problem
            return
        events = pl.concat(self.frames, how="vertical_relaxed")
        self.frames.clear()
        events, pending = self._set_aside_bad_events(events)
        turns = _group_turns(events)
        del events
        turns = turns.join(self._poison_frame(), on=list(KEY_COLUMNS), how="full",
                           coalesce=True)
        self.records += turns.height
        is_broken = (pl.col("p_rule").is_not_null() | pl.col("repeated").fill_null(False)
                     | pl.col("wake").is_null())
        broken = [self._broken_turn(r) for r in turns.filter(is_broken).iter_rows(named=True)]
        # (group_by gives turns in no fixed order: set them aside by their first line)
        pending += sorted(broken, key=lambda item: item[1][0])
        yield from self._with_raw_text(pending)
        del pending
        yield from self._turn_batches(_good_turns(turns.filter(~is_broken)))

    def _set_aside_bad_events(self, events: pl.DataFrame
                              ) -> tuple[pl.DataFrame, list[tuple[Problem, list[Loc]]]]:
        """The events that have a key, a known stage and data; a ``bad_event`` problem
        (with the line it names) for each of the others."""
        sid, ti, stage = pl.col("session_id"), pl.col("turn_index"), pl.col("stage")
        why = (
            pl.when(sid.is_null() | (sid.str.strip_chars() == ""))
            .then(pl.lit(_BAD_EVENT["session_id"]))
            .when(ti.is_null() | (ti < 0))
            .then(pl.lit(_BAD_EVENT["turn_index"]))
            .when(~stage.is_in(pl.Series(EVENT_STAGES, dtype=pl.String).implode())
                  | stage.is_null())
            .then(pl.lit(_BAD_EVENT["stage"]))
            .when(pl.col("data").is_null())
            .then(pl.lit(_BAD_EVENT["data"]))
        )
        events = events.with_columns(why.alias("__why"))
        # Rejects here name lines; their raw text is read back from the files at the end.
        pending: list[tuple[Problem, list[Loc]]] = []
        for r in events.filter(pl.col("__why").is_not_null()).iter_rows(named=True):
            self.records += 1
            loc = (r["file_id"], r["line"])
            pending.append((Problem(self.files[loc[0]], loc[1], "bad_event", r["__why"]), [loc]))
        return events.filter(pl.col("__why").is_null()).drop("__why"), pending

    def _poison_frame(self) -> pl.DataFrame:
        """The first poisoned event of each turn, by key (``p_rule``, ``p_msg``, where)."""
        file_ids = {name: i for i, name in enumerate(self.files)}
        return (pl.DataFrame([(key[0], key[1], p.rule, p.message, file_ids[p.file], p.line)
                              for key, p in self.poisoned],
                             schema={"session_id": pl.String, "turn_index": pl.Int64,
                                     "p_rule": pl.String, "p_msg": pl.String,
                                     "p_file": pl.Int64, "p_line": pl.Int64}, orient="row")
                .unique(subset=list(KEY_COLUMNS), keep="first", maintain_order=True))

    def _broken_turn(self, r: dict[str, Any]) -> tuple[Problem, list[Loc]]:
        """The problem of a turn that cannot be assembled (a poisoned event, a stage
        twice, no wake event), placed at its first event, with every event's line."""
        locs = sorted(zip(r["where_file"] or [], r["where_line"] or [], strict=True))
        if r["p_rule"]:
            locs = sorted({*locs, (r["p_file"], r["p_line"])})
        involved = [f"{self.files[f]}:{n}" for f, n in locs]
        key = f"({r['session_id']!r}, {r['turn_index']})"
        stages = r["stages"] or []
        if r["p_rule"]:
            rule, msg = r["p_rule"], f"turn {key}: {r['p_msg']}"
        elif r["repeated"]:
            rule = "duplicate_event"
            twice = sorted({s for s in stages if stages.count(s) > 1})
            msg = (f"turn {key} has more than one {'/'.join(twice)} event: "
                   f"{', '.join(involved)}")
        else:
            rule = "event_without_wake"
            msg = f"turn {key} has events but no wake event: {', '.join(involved)}"
        return Problem(self.files[locs[0][0]], locs[0][1], rule, msg, "", tuple(involved)), locs

    def _with_raw_text(self, pending: list[tuple[Problem, list[Loc]]]) -> Iterator[Problem]:
        """Each problem with the raw text of the lines it names, read back in one pass."""
        texts = self._fetch_lines({loc for _, locs in pending for loc in locs})
        for problem, locs in pending:
            yield replace(problem, raw="\n".join(texts.get(loc, "") for loc in locs))

    def _turn_batches(self, turns: pl.DataFrame) -> Iterator[tuple[Block, ParsedBlock]]:
        """Assembled turns as blocks to validate, :data:`ASSEMBLE_BATCH` at a time."""
        for start in range(0, turns.height, ASSEMBLE_BATCH):
            batch = turns.slice(start, ASSEMBLE_BATCH)
            locs = list(zip(batch.get_column("file_id").to_list(),
                            batch.get_column("line").to_list(), strict=True))
            frame = batch.drop("file_id", "line", "where_file", "where_line")

            def raw_of(i: int, frame: pl.DataFrame = frame) -> str:
                return str(frame[i].select(pl.struct(pl.all()).struct.json_encode()).item())

            def involved_of(i: int, batch: pl.DataFrame = batch) -> list[str]:
                locs = sorted(zip(batch[i, "where_file"], batch[i, "where_line"], strict=True))
                return [f"{self.files[f]}:{n}" for f, n in locs]

            block = Block(b"", 0, 0, locs=locs, raws=_LazyText(batch.height, raw_of),
                          involved=_LazyText(batch.height, involved_of))
            yield block, ParsedBlock(_strays_only(frame), None, [], batch.height)


def _strays_only(turns: pl.DataFrame) -> pl.DataFrame:
    """Each stage column of assembled ``turns`` cut to its own block's fields and those
    of the other stages' fields that hold a value somewhere in ``turns``.

    A stage's ``data`` is read as :data:`DATA_UNION`, every stage's fields; another
    stage's field is an unknown field of this stage, null unless an event carried a
    stray one. Left in, each null one (172 of them) would be a leaf for validation to
    turn into ``extra`` text, a fixed 0.15 CPU-s per batch for nothing.
    """
    stages = [s for s in BLOCKS if s in turns.columns]
    held = _held(turns.select(stages))
    return turns.with_columns([
        pl.when(pl.col(s).is_not_null()).then(pl.struct([
            pl.col(s).struct.field(f.name) for f in DATA_UNION.fields
            if f.name not in _FOREIGN[s] or (s, f.name) in held])).alias(s)
        for s in stages])


def _held(stages: pl.DataFrame) -> set[tuple[str, str]]:
    """(stage, field) of each field of another stage that holds a value in some row of
    ``stages`` (stage columns of :data:`DATA_UNION`). Counted in Arrow, where a struct's
    flattened fields are null where it is (as Polars' ``struct.field``): one expression
    per field (172 of them) cost a fixed 7 ms a batch to build and run."""
    held: set[tuple[str, str]] = set()
    table = stages.to_arrow(compat_level=pl.CompatLevel.newest())
    for stage in stages.columns:
        for chunk in table.column(stage).chunks:
            for f, values in zip(chunk.type, chunk.flatten(), strict=True):
                if f.name in _FOREIGN[stage] and values.null_count < len(values):
                    held.add((stage, f.name))
    return held


def _group_turns(events: pl.DataFrame) -> pl.DataFrame:
    """One row per turn key: each stage's data as its column, the wake event's time and
    place, every event's place, and whether a stage came twice."""
    is_wake = pl.col("stage") == "wake"
    # Unknown fields in the order a turn record would give them: stage blocks in
    # pipeline order, then the turn-level ones.
    rank = pl.col("stage").replace_strict({s: i for i, s in enumerate(BLOCKS)},
                                          return_dtype=pl.Int64)
    # One pass over the events: each stage's data becomes its turn's column.
    return events.group_by(*KEY_COLUMNS).agg(
        pl.col("timestamp").filter(is_wake).first(),
        *[pl.col("data").filter(pl.col("stage") == s).first().alias(s) for s in BLOCKS],
        pl.col(EXTRA_COL).sort_by(rank).drop_nulls().str.join(",").alias("__d"),
        pl.col(_TOP_COL).sort_by(rank).drop_nulls().str.join(",").alias("__t"),
        pl.col("file_id").filter(is_wake).first(),
        pl.col("line").filter(is_wake).first(),
        pl.col("file_id").alias("where_file"),
        pl.col("line").alias("where_line"),
        pl.col("stage").alias("stages"),
        (pl.col("stage").n_unique() < pl.len()).alias("repeated"),
    )


def _good_turns(turns: pl.DataFrame) -> pl.DataFrame:
    """Assembled turns with their unknown fields as one ``extra`` object, in file order."""
    extra = pl.concat_str([pl.when(pl.col("__d") != "").then(pl.col("__d")),
                           pl.when(pl.col("__t") != "").then(pl.col("__t"))],
                          separator=",", ignore_nulls=True)
    return (turns.with_columns(pl.when(extra.is_not_null() & (extra != ""))
                               .then("{" + extra + "}").alias(EXTRA_COL))
            .drop("__d", "__t", "stages", "repeated", "p_rule", "p_msg", "p_file", "p_line")
            .sort("file_id", "line"))
