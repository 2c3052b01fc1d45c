"""How much annotators agree: kappas, per-class F1 between annotators, confusion, and
the turns to adjudicate.

- **Cohen's kappa** per pair of annotators, on the turns both labelled:
  ``(p_o - p_e) / (1 - p_e)`` with ``p_e`` from each annotator's own class shares.
- **Fleiss' kappa** over every turn with at least two labels (the form for a varying
  number of raters per turn: ``P_i = (sum_j n_ij^2 - n_i) / (n_i (n_i - 1))``, class
  shares pooled over all labels).
- **Per-class F1** of each annotator against a reference: the majority of the other
  annotators on each turn (ties skipped), or a named gold annotator.
- **Confusion** between annotators: every ordered pair of labels of the same turn by
  two different annotators (symmetric).
- **Adjudication queue**: the turns whose labels disagree.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from fpi.errors import InputError
from fpi.files import atomic_path
from fpi.metrics import classification_metrics, confusion_matrix, labels_to_index
from fpi.schema import CLASSES, KEY_COLUMNS

KEY = list(KEY_COLUMNS)


def cohen_kappa(conf: np.ndarray) -> float | None:
    """Cohen's kappa of a ``(k, k)`` table of two raters' labels (None if undefined)."""
    n = conf.sum()
    if n == 0:
        return None
    po = np.trace(conf) / n
    pe = float((conf.sum(axis=1) / n) @ (conf.sum(axis=0) / n))
    return None if pe >= 1 else round(float((po - pe) / (1 - pe)), 6)


def fleiss_kappa(counts: np.ndarray) -> float | None:
    """Fleiss' kappa of a ``(turns, k)`` table of label counts (rows with >= 2 labels)."""
    counts = counts[counts.sum(axis=1) >= 2].astype(np.float64)
    if counts.shape[0] == 0:
        return None
    n_i = counts.sum(axis=1)
    p_i = ((counts ** 2).sum(axis=1) - n_i) / (n_i * (n_i - 1))
    p_j = counts.sum(axis=0) / n_i.sum()
    pe = float((p_j ** 2).sum())
    return None if pe >= 1 else round(float((p_i.mean() - pe) / (1 - pe)), 6)


@dataclass(frozen=True)
class Agreement:
    """Agreement between annotators (see the module docstring)."""

    annotators: tuple[str, ...]
    n_turns: int
    n_multi: int  #: turns with at least two labels
    pairs: tuple[dict[str, Any], ...]
    fleiss_kappa: float | None
    per_annotator: dict[str, dict[str, Any]]
    confusion: list[list[int]]
    disagreements: pl.DataFrame
    reference: str

    def to_dict(self) -> dict[str, Any]:
        """Stable JSON document (``fpi labels agreement --json``)."""
        return {"classes": list(CLASSES), "annotators": list(self.annotators),
                "n_turns": self.n_turns, "n_turns_multiply_labelled": self.n_multi,
                "reference": self.reference, "fleiss_kappa": self.fleiss_kappa,
                "pairs": list(self.pairs), "per_annotator": self.per_annotator,
                "confusion": self.confusion, "disagreements": self.disagreements.height}


def _pair_table(labels: pl.DataFrame) -> pl.DataFrame:
    right = labels.select(*KEY, pl.col("annotator").alias("annotator_b"),
                          pl.col("failure_point").alias("failure_point_b"))
    return labels.select(*KEY, "annotator", "failure_point").join(right, on=KEY).filter(
        pl.col("annotator") != pl.col("annotator_b"))


def _pairs(pairs: pl.DataFrame) -> list[dict[str, Any]]:
    out = []
    ordered = pairs.filter(pl.col("annotator") < pl.col("annotator_b"))
    for (a, b), g in ordered.group_by("annotator", "annotator_b", maintain_order=True):
        conf = confusion_matrix(labels_to_index(g["failure_point"]),
                                labels_to_index(g["failure_point_b"]))
        out.append({"a": a, "b": b, "n": g.height,
                    "observed_agreement": round(float(np.trace(conf) / g.height), 6),
                    "cohen_kappa": cohen_kappa(conf)})
    return sorted(out, key=lambda p: (p["a"], p["b"]))


def _reference(labels: pl.DataFrame, gold: str | None) -> pl.DataFrame:
    """Per (turn, annotator): the reference label (``ref``) that annotator is scored on."""
    if gold is not None:
        ref = labels.filter(pl.col("annotator") == gold).select(
            *KEY, pl.col("failure_point").alias("ref"))
        return labels.filter(pl.col("annotator") != gold).join(ref, on=KEY)
    votes = _pair_table(labels).group_by(*KEY, "annotator", "failure_point_b").len("votes")
    best = votes.group_by(*KEY, "annotator").agg(
        pl.col("failure_point_b").sort_by("votes", descending=True).first().alias("ref"),
        ((pl.col("votes") == pl.col("votes").max()).sum() == 1).alias("_clear"))
    return labels.join(best.filter("_clear").drop("_clear"), on=[*KEY, "annotator"])


def _per_annotator(scored: pl.DataFrame) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for (name,), g in scored.sort("annotator").group_by("annotator", maintain_order=True):
        m = classification_metrics(labels_to_index(g["ref"]),
                                   labels_to_index(g["failure_point"]))
        out[str(name)] = {"n": g.height, "macro_f1": m["macro_f1"], "accuracy": m["accuracy"],
                          "per_class": {c: m["per_class"][c] for c in CLASSES}}
    return out


def disagreements(labels: pl.DataFrame) -> pl.DataFrame:
    """Turns whose annotators disagree: the adjudication queue (empty columns
    ``annotator`` and ``failure_point`` to fill in, ready for ``fpi labels import``)."""
    per = labels.sort(*KEY, "annotator").group_by(KEY, maintain_order=True).agg(
        pl.format("{}={}", "annotator", "failure_point").str.join("; ").alias("labels"),
        pl.len().alias("n_annotators"), pl.col("failure_point").n_unique().alias("_k"),
        pl.col("failure_point").mode().sort().alias("_modes"))
    return per.filter(pl.col("_k") > 1).select(
        *KEY, pl.lit("").alias("annotator"), pl.lit("").alias("failure_point"), "labels",
        "n_annotators",
        pl.when(pl.col("_modes").list.len() == 1).then(pl.col("_modes").list.first())
        .alias("majority"))


def agreement(labels: pl.DataFrame, *, gold: str | None = None) -> Agreement:
    """Agreement between the annotators of a labels frame (:func:`read_labels_file`).

    Raises
    ------
    InputError
        Fewer than two annotators, no turn labelled twice, or ``gold`` unknown.
    """
    names = tuple(sorted(labels["annotator"].unique().to_list()))
    if len(names) < 2:
        raise InputError(f"agreement needs at least two annotators; the labels have "
                         f"{len(names)} ({', '.join(names)})")
    if gold is not None and gold not in names:
        raise InputError(f"gold annotator {gold!r} is not among the annotators "
                         f"({', '.join(names[:10])})")
    counts = labels.group_by(KEY).agg(
        *(( pl.col("failure_point") == c).sum().alias(c) for c in CLASSES))
    table = counts.select(CLASSES).to_numpy()
    n_multi = int((table.sum(axis=1) >= 2).sum())
    if n_multi == 0:
        raise InputError("no turn was labelled by two annotators: agreement needs overlap")
    pairs = _pair_table(labels)
    conf = confusion_matrix(labels_to_index(pairs["failure_point"]),
                            labels_to_index(pairs["failure_point_b"]))
    return Agreement(names, counts.height, n_multi, tuple(_pairs(pairs)),
                     fleiss_kappa(table), _per_annotator(_reference(labels, gold)),
                     conf.tolist(), disagreements(labels),
                     f"gold:{gold}" if gold else "majority of the others")


def write_disagreements(frame: pl.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write the adjudication queue atomically (CSV, or JSON Lines for ``.jsonl``)."""
    out = Path(path)
    try:
        with atomic_path(out) as tmp:
            if out.suffix.lower() in (".jsonl", ".ndjson"):
                frame.write_ndjson(tmp)
            else:
                frame.write_csv(tmp)
    except OSError as exc:
        raise InputError(f"cannot write the adjudication queue to {out}: {exc}") from exc
    return out
