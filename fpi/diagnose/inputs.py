"""Where a diagnose run reads from: the inputs, their batches of whole sessions, the model."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from fpi.schema import KEY_COLUMNS, TURN_SCHEMA

if TYPE_CHECKING:
    from fpi.model import ModelBundle


def as_list(inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[str]:
    if isinstance(inputs, str | os.PathLike):
        return [os.fspath(inputs)]
    return [os.fspath(p) for p in inputs]


def canonical_parquet(paths: list[str]) -> Path | None:
    """The input itself when it is one canonical Parquet file sorted by session and turn."""
    if len(paths) != 1 or not paths[0].endswith(".parquet") or not Path(paths[0]).is_file():
        return None
    try:
        lf = pl.scan_parquet(paths[0])
        if lf.collect_schema() != TURN_SCHEMA:
            return None
        keys = lf.select(KEY_COLUMNS).collect()
    except pl.exceptions.PolarsError:
        return None
    if keys.height == 0:
        return None
    sid, tix = keys["session_id"], keys["turn_index"]
    prev_sid, prev_tix = sid.shift(1), tix.shift(1)
    ordered = ((sid > prev_sid) | ((sid == prev_sid) & (tix > prev_tix))).fill_null(True).all()
    return Path(paths[0]) if ordered else None


def batches(path: Path, batch_turns: int) -> Iterator[pl.DataFrame]:
    """Batches of whole sessions from a sorted canonical Parquet file."""
    lf = pl.scan_parquet(path)
    total = lf.select(pl.len()).collect().item()
    carry: pl.DataFrame | None = None
    for offset in range(0, total, batch_turns):
        chunk = lf.slice(offset, batch_turns).collect()
        if carry is not None and carry.height:
            chunk = pl.concat([carry, chunk])
        if offset + batch_turns < total:
            # the last session may continue in the next chunk: hold it back
            last = chunk["session_id"][-1]
            tail = chunk["session_id"] == last
            carry = chunk.filter(tail)
            chunk = chunk.filter(~tail)
        else:
            carry = None
        if chunk.height:
            yield chunk
    if carry is not None and carry.height:
        yield carry


def load_model(model: str | os.PathLike[str] | ModelBundle) -> ModelBundle:
    if isinstance(model, str | os.PathLike):
        from fpi.model import load_bundle

        return load_bundle(model)
    return model

