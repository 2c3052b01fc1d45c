"""Read labels back from annotation tools: Label Studio exports and a generic CSV/JSONL.

Every input becomes rows of :data:`LABELS_SCHEMA`, keyed by ``(session_id, turn_index,
annotator)``. Rows that cannot be used are set aside as :class:`fpi.ingest.Reject`
records (file, line, rule, message, raw), the same shape as ingest's rejects file:

- a missing ``session_id``, ``turn_index`` or ``annotator`` (``missing_key``), a
  ``turn_index`` that is not an integer >= 0 (``bad_turn_index``);
- a ``failure_point`` that is not one of the six classes (``unknown_class``; the
  spellings of :data:`fpi.schema.LABEL_ALIASES` are accepted);
- a Label Studio annotation without a choice (``missing_label``);
- the same key with two different classes (``conflicting_duplicate``: every row of
  that key is rejected, since nothing says which one is right; the same key with
  the same class twice is kept once);
- a turn that is not in the logs, when logs are given (``unknown_turn``).

Columns of the generic form other than the four above (``failure_point_2``,
``comment``, ...) are kept aside, as a JSON object, in the ``extra`` column.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson
import polars as pl

from fpi.errors import InputError
from fpi.files import atomic_path
from fpi.ingest import Problem as Reject
from fpi.ingest import rejects_path_for
from fpi.ingest.problems import Rule
from fpi.labels.taskformat import LS_FROM_NAME, VIEW_FIELDS
from fpi.schema import KEY_COLUMNS, normalize_label_expr

#: One row per (turn, annotator): the labels file ``fpi labels import`` writes.
LABELS_SCHEMA: Final = pl.Schema({
    "session_id": pl.String,
    "turn_index": pl.Int64,
    "annotator": pl.String,
    "failure_point": pl.String,
    "source": pl.String,
    "extra": pl.String,
})

#: Columns a generic labels file must have.
REQUIRED: Final = ("session_id", "turn_index", "annotator", "failure_point")


#: Every rule a labels row can be rejected for, by id.
LABEL_RULES: Final[dict[str, Rule]] = {
    r.id: r for r in (
        Rule("unreadable", "the file could not be read or parsed (not CSV, JSON or JSON Lines)"),
        Rule("invalid_json", "a JSON Lines line is not valid JSON"),
        Rule("not_an_object", "a record is not a JSON object"),
        Rule("missing_key", "session_id, turn_index or annotator is missing or empty"),
        Rule("bad_turn_index", "turn_index is not an integer >= 0"),
        Rule("unknown_class", "failure_point is not one of the six classes"),
        Rule("missing_label", "a Label Studio annotation has no failure_point choice"),
        Rule("conflicting_duplicate", "the same (session, turn, annotator) has two classes"),
        Rule("unknown_turn", "the (session_id, turn_index) is not in the given logs"),
    )
}

_RAW_SCHEMA: Final = pl.Schema({
    "file": pl.String, "line": pl.Int64, "session_id": pl.String, "turn_index": pl.String,
    "annotator": pl.String, "failure_point": pl.String, "extra": pl.String, "raw": pl.String,
})
_RAW_CHARS: Final = 500


@dataclass(frozen=True)
class LabelImport:
    """Labels read from annotation files: the kept rows and what was set aside."""

    labels: pl.DataFrame  #: :data:`LABELS_SCHEMA`, sorted by key
    rejects: tuple[Reject, ...]
    files: tuple[str, ...]
    rows_read: int
    duplicates_merged: int
    output_path: str | None = None
    rejects_path: str | None = None
    by_annotator: dict[str, int] = field(default_factory=dict)

    @property
    def rejects_by_rule(self) -> dict[str, int]:
        """Reject counts by rule id."""
        out: dict[str, int] = {}
        for r in self.rejects:
            out[r.rule] = out.get(r.rule, 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON summary (the ``fpi labels import --json`` document)."""
        return {"files": list(self.files), "rows_read": self.rows_read,
                "labels_kept": self.labels.height, "duplicates_merged": self.duplicates_merged,
                "rejected": len(self.rejects), "rejects_by_rule": self.rejects_by_rule,
                "by_annotator": self.by_annotator, "output_path": self.output_path,
                "rejects_path": self.rejects_path,
                "rejects": [r.to_dict() for r in self.rejects[:20]]}


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def _row(file: str, line: int, obj: dict[str, Any], raw: str | None = None) -> dict[str, Any]:
    """One raw labels row (every value as text; unknown fields into ``extra``)."""
    extra = {k: v for k, v in obj.items()
             if k not in REQUIRED and k not in VIEW_FIELDS and v is not None}
    return {"file": file, "line": line, **{k: _text(obj.get(k)) for k in REQUIRED},
            "extra": orjson.dumps(extra, option=orjson.OPT_SORT_KEYS).decode() if extra else None,
            "raw": (raw if raw is not None else orjson.dumps(obj).decode())[:_RAW_CHARS]}


def _reject(file: str, line: int, rule: str, message: str, raw: str) -> Reject:
    assert rule in LABEL_RULES, rule
    return Reject(file, line, rule, message, raw[:_RAW_CHARS])


def _annotator(completed_by: Any) -> str | None:
    """Label Studio's ``completed_by``: a user id (JSON export) or a user object (older)."""
    if isinstance(completed_by, dict):
        completed_by = completed_by.get("email") or completed_by.get("id")
    return None if completed_by is None else str(completed_by)


def _choice(annotation: dict[str, Any]) -> str | None:
    for res in annotation.get("result") or ():
        if (isinstance(res, dict) and res.get("type") == "choices"
                and res.get("from_name", LS_FROM_NAME) == LS_FROM_NAME):
            choices = (res.get("value") or {}).get("choices") or []
            if choices:
                return str(choices[0])
    return None


def _label_studio_task(file: str, index: int, task: dict[str, Any]
                       ) -> Iterator[dict[str, Any] | Reject]:
    """Rows of one exported Label Studio task: one per submitted (not cancelled) annotation."""
    data = task.get("data") or {}
    for ann in task.get("annotations") or ():
        if not isinstance(ann, dict) or ann.get("was_cancelled"):
            continue
        raw = orjson.dumps({"task": task.get("id"), "data_session_id": data.get("session_id"),
                            "data_turn_index": data.get("turn_index"),
                            "annotation": ann.get("id"), "result": ann.get("result")}).decode()
        label = _choice(ann)
        if label is None:
            yield _reject(file, index, "missing_label",
                          f"task {task.get('id')} annotation {ann.get('id')} has no "
                          f"{LS_FROM_NAME!r} choice", raw)
            continue
        obj = {"session_id": data.get("session_id"), "turn_index": data.get("turn_index"),
               "annotator": _annotator(ann.get("completed_by")), "failure_point": label,
               "ls_task_id": task.get("id"), "ls_annotation_id": ann.get("id")}
        yield _row(file, index, obj, raw)


def _json_records(file: str, records: list[Any]) -> Iterator[dict[str, Any] | Reject]:
    for i, rec in enumerate(records, start=1):
        if not isinstance(rec, dict):
            yield _reject(file, i, "not_an_object", f"record {i} is not a JSON object",
                          _text(rec) or "")
        elif "annotations" in rec:
            yield from _label_studio_task(file, i, rec)
        else:
            yield _row(file, i, rec)


def _jsonl_records(file: str, text: str) -> Iterator[dict[str, Any] | Reject]:
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            yield _reject(file, i, "invalid_json", f"line {i} is not JSON: {exc}", line)
            continue
        yield from _json_records_at(file, i, rec)


def _json_records_at(file: str, line: int, rec: Any) -> Iterator[dict[str, Any] | Reject]:
    for item in _json_records(file, [rec]):
        if isinstance(item, Reject):
            yield Reject(item.file, line, item.rule, item.message, item.raw)
        else:
            yield {**item, "line": line}


def _csv_records(file: str, text: str) -> Iterator[dict[str, Any] | Reject]:
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in REQUIRED if c not in (reader.fieldnames or ())]
    if missing:
        raise InputError(f"{file}: CSV header lacks column(s) {', '.join(missing)} (a labels "
                         f"file needs {', '.join(REQUIRED)})")
    for i, rec in enumerate(reader, start=2):  # the header is line 1
        clean = {k: (v if v != "" else None) for k, v in rec.items() if k is not None}
        yield _row(file, i, clean, ",".join(v or "" for v in rec.values() if isinstance(v, str)))


def read_records(path: Path) -> Iterator[dict[str, Any] | Reject]:
    """Raw rows and early rejects of one labels file (the form from its suffix)."""
    file = str(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"labels file {file} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"{file} is a directory: give labels files (.json, .jsonl, .csv)"
                         ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read labels file {file}: {exc}") from exc
    suffix = path.suffix.lower()
    if suffix == ".csv":
        yield from _csv_records(file, text)
    elif suffix in (".jsonl", ".ndjson"):
        yield from _jsonl_records(file, text)
    elif suffix == ".json":
        try:
            doc = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise InputError(f"{file} is not valid JSON: {exc}") from exc
        yield from _json_records(file, doc if isinstance(doc, list) else [doc])
    else:
        raise InputError(f"{file}: unknown labels file type {suffix or '(none)'!r}: use .json "
                         "(Label Studio export), .jsonl or .csv")


def _split_rows(rows: pl.DataFrame) -> tuple[pl.DataFrame, list[Reject]]:
    """Check keys and classes; returns typed good rows and the rejected ones."""
    checked = rows.with_columns(
        pl.col("turn_index").str.strip_chars().cast(pl.Int64, strict=False).alias("_ti"),
        normalize_label_expr(pl.col("failure_point")).alias("_fp"),
    ).with_columns(
        pl.when(pl.any_horizontal(pl.col(c).str.strip_chars().fill_null("") == ""
                                  for c in ("session_id", "turn_index", "annotator")))
        .then(pl.lit("missing_key"))
        .when(pl.col("_ti").is_null() | (pl.col("_ti") < 0)).then(pl.lit("bad_turn_index"))
        .when(pl.col("_fp").is_null()).then(pl.lit("unknown_class"))
        .otherwise(None).alias("_rule"))
    bad = checked.filter(pl.col("_rule").is_not_null())
    rejects = [_reject(r["file"], r["line"], r["_rule"], _message(r), r["raw"] or "")
               for r in bad.iter_rows(named=True)]
    good = checked.filter(pl.col("_rule").is_null()).select(
        "file", "line", "raw", pl.col("session_id").str.strip_chars(),
        pl.col("_ti").alias("turn_index"), pl.col("annotator").str.strip_chars(),
        pl.col("_fp").alias("failure_point"), "extra")
    return good, rejects


def _message(r: dict[str, Any]) -> str:
    where = f"session {r['session_id']!r} turn {r['turn_index']!r}"
    return {
        "missing_key": f"{where}: session_id, turn_index and annotator are all required",
        "bad_turn_index": f"turn_index {r['turn_index']!r} is not an integer >= 0",
        "unknown_class": f"{where}: failure_point {r['failure_point']!r} is not one of the six "
                         "classes (correct, false_wake, asr, nlu, er, result)",
    }[r["_rule"]]


def _merge(good: pl.DataFrame) -> tuple[pl.DataFrame, list[Reject], int]:
    """Collapse exact duplicates, reject every row of a key with conflicting classes."""
    key = [*KEY_COLUMNS, "annotator"]
    ordered = good.sort([*key, "file", "line"])
    n_classes = pl.col("failure_point").n_unique().over(key)
    conflict = ordered.filter(n_classes > 1)
    rejects = [
        _reject(r["file"], r["line"], "conflicting_duplicate",
                f"session {r['session_id']!r} turn {r['turn_index']} annotator "
                f"{r['annotator']!r} has conflicting labels; this row says "
                f"{r['failure_point']!r}", r["raw"] or "")
        for r in conflict.iter_rows(named=True)]
    kept = ordered.filter(n_classes == 1)
    unique = kept.unique(subset=key, keep="first", maintain_order=True)
    return unique, rejects, kept.height - unique.height


def _unknown_turns(labels: pl.DataFrame, known: pl.DataFrame) -> tuple[pl.DataFrame,
                                                                       list[Reject]]:
    keys = known.select(pl.col("session_id").cast(pl.String),
                        pl.col("turn_index").cast(pl.Int64)).unique()
    missing = labels.join(keys, on=list(KEY_COLUMNS), how="anti", nulls_equal=False)
    rejects = [_reject(r["file"], r["line"], "unknown_turn",
                       f"session {r['session_id']!r} turn {r['turn_index']} is not in the logs",
                       r["raw"] or "") for r in missing.iter_rows(named=True)]
    return labels.join(keys, on=list(KEY_COLUMNS), how="semi"), rejects


def read_labels(paths: Sequence[str | os.PathLike[str]], *,
                turns: pl.DataFrame | None = None) -> LabelImport:
    """Read label files (Label Studio JSON export, JSON-MIN, generic JSONL or CSV).

    Parameters
    ----------
    paths
        Label files; the form is taken from the suffix (``.json``, ``.jsonl``, ``.csv``).
    turns
        Optional frame with ``session_id`` and ``turn_index`` (e.g. the canonical
        frame): labels of turns not in it are rejected as ``unknown_turn``.

    Raises
    ------
    InputError
        A file is missing, unreadable or of an unknown type, or a CSV lacks a column.
    """
    if not paths:
        raise InputError("no labels files given")
    rows: list[dict[str, Any]] = []
    rejects: list[Reject] = []
    for p in paths:
        for item in read_records(Path(p)):
            if isinstance(item, Reject):
                rejects.append(item)
            else:
                rows.append(item)
    n_read = len(rows) + len(rejects)
    raw = pl.DataFrame(rows, schema=_RAW_SCHEMA)
    good, bad = _split_rows(raw)
    merged, conflicts, n_dupes = _merge(good)
    rejects += bad + conflicts
    if turns is not None:
        merged, unknown = _unknown_turns(merged, turns)
        rejects += unknown
    labels = merged.select(*KEY_COLUMNS, "annotator", "failure_point",
                           pl.col("file").alias("source"), "extra").sort(
                               [*KEY_COLUMNS, "annotator"])
    by_ann = dict(labels.group_by("annotator").len().sort("annotator").iter_rows())
    rejects.sort(key=lambda r: (r.file, r.line, r.rule))
    return LabelImport(labels.cast(dict(LABELS_SCHEMA)), tuple(rejects),  # type: ignore[arg-type]
                       tuple(str(p) for p in paths), n_read, n_dupes, by_annotator=by_ann)


def import_labels(paths: Sequence[str | os.PathLike[str]], output: str | os.PathLike[str], *,
                  turns: pl.DataFrame | None = None,
                  rejects_path: str | os.PathLike[str] | None = None) -> LabelImport:
    """:func:`read_labels`, then write the labels Parquet and its rejects file atomically.

    The rejects go to ``rejects_path`` (default ``labels.rejects.jsonl`` beside the
    output; written even when empty, so it never describes an older import).

    Raises
    ------
    InputError
        As :func:`read_labels`, or no label survived (the rejects file says why).
    """
    out = Path(output)
    rpath = Path(rejects_path) if rejects_path is not None else rejects_path_for(out)
    result = read_labels(paths, turns=turns)
    with atomic_path(rpath) as tmp:
        tmp.write_bytes(b"".join(orjson.dumps(r.to_dict()) + b"\n" for r in result.rejects))
    if result.labels.height == 0:
        raise InputError(f"no usable label in {len(result.files)} file(s): "
                         f"{len(result.rejects)} row(s) rejected (see {rpath})")
    try:
        with atomic_path(out) as tmp:
            result.labels.write_parquet(tmp)
    except OSError as exc:
        raise InputError(f"cannot write labels to {out}: {exc}") from exc
    return LabelImport(result.labels, result.rejects, result.files, result.rows_read,
                       result.duplicates_merged, str(out), str(rpath), result.by_annotator)


def read_labels_file(path: str | os.PathLike[str]) -> pl.DataFrame:
    """Load a labels Parquet written by :func:`import_labels` (checks its columns)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"labels file {p} does not exist: write one with `fpi labels import`")
    try:
        frame = pl.read_parquet(p)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InputError(f"{p} is not a labels Parquet file: {exc}") from exc
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise InputError(f"{p} is not a labels file: it lacks column(s) {', '.join(missing)} "
                         "(write one with `fpi labels import`)")
    return frame.select([pl.col(c).cast(t) if c in frame.columns else pl.lit(None, t).alias(c)
                         for c, t in LABELS_SCHEMA.items()])
