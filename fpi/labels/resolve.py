"""One label per turn from several annotators, and labels joined onto the traces.

Policies (``--label-policy``):

``majority``
    The class most annotators chose; a tie between classes leaves the turn unlabelled.
``unanimous``
    Only turns on which every annotator agrees (disagreements are dropped).
``gold:NAME``
    Annotator NAME's label, on the turns NAME labelled.

:func:`apply_labels` replaces the traces' own ``label`` block with the resolved
labels: turns nobody labelled become unlabelled (they still serve as dialogue
context). Under ``gold:NAME``, ``label.failure_point_2`` carries another
annotator's label where one exists, so ``fpi evaluate`` reports human agreement
against the gold annotator as it does for logged labels (under ``majority`` and
``unanimous`` every annotator voted for the label, so none is an independent
second opinion and ``failure_point_2`` stays null).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from fpi.errors import InputError
from fpi.schema import KEY_COLUMNS, TURN_SCHEMA

KEY = list(KEY_COLUMNS)


@dataclass(frozen=True)
class LabelPolicy:
    """How several annotators' labels of one turn become one: ``majority``,
    ``unanimous`` or ``gold`` (with ``gold_annotator``)."""

    kind: str = "majority"
    gold_annotator: str | None = None

    @classmethod
    def parse(cls, text: str) -> LabelPolicy:
        """``majority`` | ``unanimous`` | ``gold:NAME``."""
        text = text.strip()
        if text in ("majority", "unanimous"):
            return cls(text)
        if text.startswith("gold:") and text[5:].strip():
            return cls("gold", text[5:].strip())
        raise InputError(f"--label-policy must be 'majority', 'unanimous' or 'gold:NAME', "
                         f"not {text!r}")

    def __str__(self) -> str:
        return f"gold:{self.gold_annotator}" if self.kind == "gold" else self.kind


def resolve_labels(labels: pl.DataFrame, policy: LabelPolicy | str = "majority"
                   ) -> pl.DataFrame:
    """One row per labelled turn: ``session_id, turn_index, failure_point, annotator,
    failure_point_2, n_annotators``.

    ``annotator`` names who decided (the gold annotator, or ``majority``/``unanimous``);
    ``failure_point_2`` is, under ``gold:NAME``, the first other annotator's (by name)
    label, else null. Turns the policy cannot decide are left out.
    """
    pol = LabelPolicy.parse(policy) if isinstance(policy, str) else policy
    if pol.kind == "gold" and labels.filter(pl.col("annotator") == pol.gold_annotator).is_empty():
        known = ", ".join(sorted(labels["annotator"].unique().to_list())[:10])
        raise InputError(f"gold annotator {pol.gold_annotator!r} labelled no turn "
                         f"(annotators: {known})")
    votes = labels.group_by([*KEY, "failure_point"]).agg(pl.len().alias("votes"))
    per_turn = votes.group_by(KEY).agg(
        pl.col("votes").sum().alias("n_annotators"),
        pl.col("failure_point").n_unique().alias("n_classes"),
        pl.col("failure_point").sort_by("votes", "failure_point", descending=[True, False])
        .first().alias("top"),
        pl.col("votes").max().alias("top_votes"),
        (pl.col("votes") == pl.col("votes").max()).sum().alias("n_top"),
    )
    if pol.kind == "majority":
        decided = per_turn.filter(pl.col("n_top") == 1).select(
            *KEY, pl.col("top").alias("failure_point"), pl.lit("majority").alias("annotator"))
    elif pol.kind == "unanimous":
        decided = per_turn.filter(pl.col("n_classes") == 1).select(
            *KEY, pl.col("top").alias("failure_point"), pl.lit("unanimous").alias("annotator"))
    else:
        decided = labels.filter(pl.col("annotator") == pol.gold_annotator).select(
            *KEY, "failure_point", "annotator")
    if pol.kind == "gold":
        decided = decided.join(_second_opinion(labels, decided), on=KEY, how="left")
    else:
        decided = decided.with_columns(pl.lit(None, pl.String).alias("failure_point_2"))
    return (decided
            .join(per_turn.select(*KEY, "n_annotators"), on=KEY, how="left")
            .sort(KEY))


def _second_opinion(labels: pl.DataFrame, decided: pl.DataFrame) -> pl.DataFrame:
    """Per turn, the label of the first annotator (by name) other than the decider."""
    others = labels.join(decided.select(*KEY, pl.col("annotator").alias("_by")), on=KEY)
    return (others.filter(pl.col("annotator") != pl.col("_by"))
            .sort([*KEY, "annotator"])
            .group_by(KEY, maintain_order=True)
            .agg(pl.col("failure_point").first().alias("failure_point_2")))


def apply_labels(turns: pl.DataFrame, labels: pl.DataFrame,
                 policy: LabelPolicy | str = "majority") -> pl.DataFrame:
    """The canonical frame with its ``label`` block replaced by the resolved labels.

    Raises
    ------
    InputError
        No label matches a turn of ``turns``.
    """
    resolved = resolve_labels(labels, policy)
    block = resolved.select(*KEY, pl.struct(
        pl.col("failure_point"), pl.col("annotator"), pl.col("failure_point_2"),
    ).cast(TURN_SCHEMA["label"]).alias("_label"))
    out = turns.join(block, on=KEY, how="left", maintain_order="left")
    n = int(out["_label"].is_not_null().sum())
    if n == 0:
        raise InputError(f"none of the {resolved.height} resolved labels matches a turn of the "
                         f"logs ({turns.height} turns): are they labels of these logs?")
    return out.with_columns(pl.col("_label").alias("label")).drop("_label").select(turns.columns)


def join_labels_file(turns: pl.DataFrame, path: str | os.PathLike[str],
                     policy: LabelPolicy | str = "majority") -> pl.DataFrame:
    """:func:`apply_labels` with the labels Parquet at ``path`` (``--labels``)."""
    from fpi.labels.importer import read_labels_file

    return apply_labels(turns, read_labels_file(path), policy)


def read_weights(path: str | os.PathLike[str]) -> pl.DataFrame:
    """Per-turn training weights from a Parquet or CSV file with the columns
    ``session_id, turn_index, weight`` (``--weights``; other columns are ignored, so a
    cleaned labels file of ``fpi labels check --fix weight`` serves). A turn listed
    on several rows (one per annotator) weighs the mean of its rows; a missing
    weight counts as 1.

    Raises
    ------
    InputError
        The file is missing or unreadable, or lacks one of the columns.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"weights file {p} does not exist")
    try:
        frame = (pl.read_csv(p, infer_schema_length=10_000) if p.suffix.lower() == ".csv"
                 else pl.read_parquet(p))
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InputError(f"{p} is not a weights file (Parquet, or CSV named .csv): "
                         f"{str(exc).splitlines()[0] if str(exc) else exc!r}") from None
    missing = [c for c in (*KEY, "weight") if c not in frame.columns]
    if missing:
        raise InputError(f"weights file {p} lacks column(s) {', '.join(missing)}: give "
                         "session_id, turn_index and weight per turn")
    try:
        return (frame.select(pl.col("session_id").cast(pl.String),
                             pl.col("turn_index").cast(pl.Int64),
                             pl.col("weight").cast(pl.Float64).fill_null(1.0))
                .group_by(KEY).agg(pl.col("weight").mean()).sort(KEY))
    except pl.exceptions.PolarsError as exc:
        raise InputError(f"weights file {p}: turn_index and weight must be numbers "
                         f"({str(exc).splitlines()[0]})") from None


def training_weights(weights: str | os.PathLike[str] | None,
                     labels: str | os.PathLike[str] | None) -> pl.DataFrame | None:
    """The weights ``fpi train`` uses: ``--weights``, else the ``weight`` column of the
    ``--labels`` file if it has one, else none."""
    if weights is not None:
        return read_weights(weights)
    if labels is not None and Path(labels).is_file():
        try:
            has = "weight" in pl.read_parquet_schema(Path(labels))
        except (pl.exceptions.PolarsError, OSError):
            return None  # the labels reader reports what is wrong with it
        return read_weights(labels) if has else None
    return None
