"""Where a diagnose run reads from: the inputs and the model."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from fpi.ingest.sort import in_key_order
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
    return Path(paths[0]) if in_key_order(keys) else None


def load_model(model: str | os.PathLike[str] | ModelBundle) -> ModelBundle:
    if isinstance(model, str | os.PathLike):
        from fpi.model import load_bundle

        return load_bundle(model)
    return model

