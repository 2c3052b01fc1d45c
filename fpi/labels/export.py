"""Annotation task files for a queue: generic JSONL/CSV and Label Studio import files.

``write_queue`` writes a queue directory as one set (staged beside it, then swapped in
whole: :func:`fpi.files.staged_output_dir`)::

    queue.parquet                 the queue: keys, stratum, inclusion probability, scores
    queue.json                    options, population, counts per stratum, model
    tasks.jsonl                   one task per turn: the turn, its session context, prediction
    tasks.csv                     the same flattened, with empty annotator / failure_point
                                  columns to fill in and import back
    labelstudio_tasks.json        Label Studio import: tasks with ``data`` and the model's
                                  prediction as a pre-annotation (``predictions``)
    labelstudio_config.xml        the Label Studio labelling configuration for those tasks

No Label Studio server is needed: the files are the interface.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Final
from xml.sax.saxutils import quoteattr

import orjson
import polars as pl

from fpi import __version__
from fpi.errors import InputError, os_error
from fpi.files import staged_output_dir
from fpi.labels.queue import KEY, Queue
from fpi.labels.taskformat import CLASS_DEFINITIONS, INSTRUCTION, LS_FROM_NAME, LS_TO_NAME
from fpi.schema import CLASSES

#: The kind of a queue directory (its marker, :mod:`fpi.files`).
KIND: Final = "queue"
QUEUE_FILE: Final = "queue.parquet"
QUEUE_MANIFEST: Final = "queue.json"
FILES: Final = (QUEUE_FILE, QUEUE_MANIFEST, "tasks.jsonl", "tasks.csv",
                "labelstudio_tasks.json", "labelstudio_config.xml")
#: Turns either side of the labelled one shown as session context.
CONTEXT_TURNS: Final = 3

#: (header, data field) of each block the Label Studio config shows, in order.
LS_BLOCKS: Final = (
    ("Session context (the turn to label is marked >>)", "context"),
    ("Turn", LS_TO_NAME), ("ASR text", "asr_text"), ("ASR n-best", "nbest"),
    ("NLU", "nlu"), ("NLU alternatives", "nlu_alternatives"), ("Entities", "entities"),
    ("Response", "response"), ("Feedback", "feedback"),
)


def _fmt_num(expr: pl.Expr) -> pl.Expr:
    return expr.round(2).cast(pl.String).fill_null("?")


def _join_items(expr: pl.Expr, item: pl.Expr) -> pl.Expr:
    return expr.list.eval(item).list.join("; ").fill_null("")


def turn_view(turns: pl.DataFrame) -> pl.DataFrame:
    """Per turn, the text an annotator reads: one string per block (log text as is)."""
    e = pl.element().struct
    asr, nlu, res, fb = (pl.col(c).struct for c in ("asr", "nlu", "result", "feedback"))
    return turns.select(
        *KEY,
        pl.format("{} ({}, {}, app {})", pl.col("device").struct.field("type"),
                  pl.col("device").struct.field("locale"),
                  pl.when(pl.col("device").struct.field("has_screen")).then(pl.lit("screen"))
                  .otherwise(pl.lit("no screen")),
                  pl.col("device").struct.field("app_version")).fill_null("").alias("device"),
        asr.field("text").fill_null("(no ASR)").alias("asr_text"),
        _join_items(asr.field("nbest"), pl.format("{} ({})", e.field("text"),
                                                  _fmt_num(e.field("confidence"))))
        .alias("nbest"),
        pl.format("{}.{} ({}) slots: {}", nlu.field("domain"), nlu.field("intent"),
                  _fmt_num(nlu.field("confidence")),
                  _join_items(nlu.field("slots"), pl.format("{}={}", e.field("name"),
                                                            e.field("value"))))
        .fill_null("(no NLU)").alias("nlu"),
        _join_items(nlu.field("alternatives"), pl.format(
            "{}.{} ({})", e.field("domain"), e.field("intent"), _fmt_num(e.field("confidence"))))
        .alias("nlu_alternatives"),
        _join_items(pl.col("er").struct.field("entities"), pl.format(
            "{}: '{}' -> {} [{}, {}]", e.field("slot"), e.field("mention"),
            e.field("resolved_name").fill_null("-"), e.field("status"),
            _fmt_num(e.field("score")))).alias("entities"),
        pl.format("[{}] {} | {}", res.field("status"), res.field("action").fill_null("-"),
                  res.field("response_text").fill_null("")).fill_null("(no result)")
        .alias("response"),
        pl.format("barge-in {}, explicit {}", fb.field("barge_in").cast(pl.String),
                  fb.field("explicit").fill_null("none")).fill_null("(no feedback)")
        .alias("feedback"),
    )


def context_view(turns: pl.DataFrame, keys: pl.DataFrame,
                 window: int = CONTEXT_TURNS) -> pl.DataFrame:
    """Per key, its session's turns within ``window`` as a list of one-line summaries
    (``context_turns``) and as text with the key's turn marked ``>>`` (``context``)."""
    line = pl.format(
        "{}t{} +{}s: \"{}\" -> {}.{} -> [{}] \"{}\"{}",
        pl.when(pl.col("turn_index") == pl.col("_t")).then(pl.lit(">> ")).otherwise(pl.lit("   ")),
        pl.col("turn_index"),
        ((pl.col("timestamp") - pl.col("timestamp").min().over("_sid", "_t"))
         .dt.total_seconds()).cast(pl.String),
        pl.col("asr").struct.field("text").fill_null("-"),
        pl.col("nlu").struct.field("domain").fill_null("-"),
        pl.col("nlu").struct.field("intent").fill_null("-"),
        pl.col("result").struct.field("status").fill_null("-"),
        pl.col("result").struct.field("response_text").fill_null(""),
        pl.when(pl.col("feedback").struct.field("barge_in")).then(pl.lit(" (barge-in)"))
        .otherwise(pl.lit("")),
    )
    near = keys.select(pl.col("session_id").alias("_sid"), pl.col("turn_index").alias("_t")).join(
        turns.select(*KEY, "timestamp", "asr", "nlu", "result", "feedback"),
        left_on="_sid", right_on="session_id").filter(
        (pl.col("turn_index") - pl.col("_t")).abs() <= window)
    lines = near.sort("_sid", "_t", "turn_index").select("_sid", "_t", line.alias("_line"))
    return lines.group_by("_sid", "_t", maintain_order=True).agg(
        pl.col("_line").alias("context_turns"), pl.col("_line").str.join("\n").alias("context"),
    ).rename({"_sid": "session_id", "_t": "turn_index"})


def task_frame(queue: Queue, turns: pl.DataFrame, window: int = CONTEXT_TURNS) -> pl.DataFrame:
    """One row per queued turn: keys, queue fields, the turn view and its context."""
    keys = queue.frame.select(KEY)
    view = turn_view(turns.join(keys, on=KEY, how="semi"))
    ctx = context_view(turns, keys, window)
    q = queue.frame.select("queue_rank", *KEY, "stratum", "inclusion_prob", "predicted",
                           "confidence")
    return (q.join(view, on=KEY, how="left").join(ctx, on=KEY, how="left")
            .with_columns(pl.format("session {} turn {}: \"{}\"", "session_id", "turn_index",
                                    "asr_text").alias(LS_TO_NAME))
            .sort("queue_rank"))


def label_studio_config() -> str:
    """The Label Studio labelling configuration (XML) for :func:`label_studio_tasks`."""
    parts = ["<View>", f"  <Header value={quoteattr(INSTRUCTION)}/>"]
    for header, name in LS_BLOCKS:
        parts += [f"  <Header value={quoteattr(header)} size=\"5\"/>",
                  f"  <Text name={quoteattr(name + '_view' if name != LS_TO_NAME else name)} "
                  f"value=\"${name}\"/>"]
    parts.append(f"  <Choices name={quoteattr(LS_FROM_NAME)} toName={quoteattr(LS_TO_NAME)} "
                 "choice=\"single\" showInline=\"false\" required=\"true\">")
    for c in CLASSES:
        parts.append(f"    <Choice value={quoteattr(c)} hint={quoteattr(CLASS_DEFINITIONS[c])}/>")
    parts += ["  </Choices>",
              f"  <TextArea name=\"comment\" toName={quoteattr(LS_TO_NAME)} rows=\"2\" "
              "placeholder=\"optional note (second plausible class, why)\"/>",
              "</View>", ""]
    return "\n".join(parts)


def _ls_data(row: dict[str, Any]) -> dict[str, Any]:
    data = {k: row[k] for k in ("session_id", "turn_index", "queue_rank", "stratum",
                                 "inclusion_prob")}
    data.update({name: row.get(name) or "" for _, name in LS_BLOCKS})
    return data


def label_studio_tasks(tasks: pl.DataFrame, model_version: str | None) -> list[dict[str, Any]]:
    """Label Studio import tasks: ``data`` fields and, with a model, its prediction as a
    pre-annotation (``predictions[].result`` of type ``choices``)."""
    out = []
    for row in tasks.iter_rows(named=True):
        task: dict[str, Any] = {"data": _ls_data(row)}
        if row["predicted"] is not None and model_version is not None:
            task["predictions"] = [{
                "model_version": model_version, "score": round(float(row["confidence"]), 6),
                "result": [{"id": f"fpi-{row['queue_rank']}", "from_name": LS_FROM_NAME,
                            "to_name": LS_TO_NAME, "type": "choices",
                            "value": {"choices": [row["predicted"]]}}]}]
        out.append(task)
    return out


def csv_tasks(tasks: pl.DataFrame) -> pl.DataFrame:
    """The flat task file: empty ``annotator`` and ``failure_point`` to fill in."""
    return tasks.select(
        "queue_rank", *KEY, pl.lit("").alias("annotator"), pl.lit("").alias("failure_point"),
        pl.lit("").alias("comment"), "stratum", "inclusion_prob", "predicted",
        pl.col("confidence").round(4), "device", "asr_text", "nbest", "nlu",
        "nlu_alternatives", "entities", "response", "feedback", "context")


def _model_version(queue: Queue) -> str | None:
    if queue.model is None:
        return None
    fp = str(queue.model.get("fingerprint") or "").removeprefix("sha256:")[:12]
    return f"fpi-{queue.model.get('fpi_version') or __version__}-{fp or 'model'}"


def render_files(queue: Queue, turns: pl.DataFrame, window: int = CONTEXT_TURNS
                 ) -> dict[str, bytes]:
    """Every file of a queue directory, by name, as bytes."""
    tasks = task_frame(queue, turns, window)
    files: dict[str, bytes] = {}
    jsonl = tasks.select("queue_rank", *KEY, "stratum", "inclusion_prob", "predicted",
                         "confidence", "device", "asr_text", "nbest", "nlu",
                         "nlu_alternatives", "entities", "response", "feedback",
                         "context_turns")
    files["tasks.jsonl"] = b"".join(orjson.dumps(r) + b"\n" for r in jsonl.iter_rows(named=True))
    files["tasks.csv"] = csv_tasks(tasks).write_csv().encode("utf-8")
    files["labelstudio_tasks.json"] = json.dumps(
        label_studio_tasks(tasks, _model_version(queue)), indent=1, ensure_ascii=False
    ).encode("utf-8")
    files["labelstudio_config.xml"] = label_studio_config().encode("utf-8")
    manifest = {"fpi_version": __version__, **queue.to_dict(), "context_turns": window,
                "model_version": _model_version(queue), "files": list(FILES)}
    files[QUEUE_MANIFEST] = (json.dumps(manifest, indent=2) + "\n").encode("utf-8")
    return files


def write_queue(queue: Queue, turns: pl.DataFrame, out_dir: str | os.PathLike[str],
                window: int = CONTEXT_TURNS) -> Path:
    """Write the queue directory as one set (see the module docstring).

    Every file is built in a staging directory beside ``out_dir`` and swapped in whole
    (:func:`fpi.files.staged_output_dir`): a failed write leaves the previous directory
    exactly as it was.

    Raises
    ------
    InputError
        ``out_dir`` is a file, or a non-empty directory that is not a queue.
    OutputError
        The set cannot be written there (read-only place, full disk).
    """
    try:
        with staged_output_dir(out_dir, KIND, legacy=_is_legacy_queue) as stage:
            queue.frame.write_parquet(stage / QUEUE_FILE)
            for name, data in render_files(queue, turns, window).items():
                (stage / name).write_bytes(data)
    except OSError as exc:
        raise os_error(exc, "the queue to", out_dir) from None
    return Path(out_dir).absolute()


def _is_legacy_queue(path: Path) -> bool:
    """A queue directory written before outputs carried a marker (it has ``queue.json``)."""
    return (path / QUEUE_MANIFEST).is_file()


def read_queue(queue_dir: str | os.PathLike[str]) -> pl.DataFrame:
    """The ``queue.parquet`` of a queue directory written by :func:`write_queue`."""
    path = Path(queue_dir)
    file = path / QUEUE_FILE if path.is_dir() else path
    if not file.is_file():
        raise InputError(f"no queue at {path}: expected a directory written by `fpi queue` "
                         f"(with {QUEUE_FILE})")
    try:
        return pl.read_parquet(file)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InputError(f"{file} is not a queue file: {exc}") from exc


__all__ = ["label_studio_config", "label_studio_tasks", "read_queue",
           "render_files", "task_frame", "turn_view", "write_queue"]
