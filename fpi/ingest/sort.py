"""Put ingested turns in (session_id, turn_index) order, in bounded memory.

Ingest writes good turns as they come. Logs written session by session are
already in order and need nothing; logs written in time order (sessions
interleaved, the usual case for a live assistant) must be sorted. The keys of
every written turn are in memory anyway (about 100 bytes a turn, for the
duplicate checks), so each row's place in the final order is known from the
keys alone. The rows themselves are moved in two passes over the written file:
the first spreads them over buckets of consecutive places (Arrow IPC files,
lz4), the second sorts one bucket at a time in memory and appends it to the
output. Memory holds one bucket, whatever the size of the input.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from fpi.ingest.parse import CANONICAL_ARROW, arrow_ints, arrow_mask
from fpi.schema import KEY_COLUMNS

#: Rows sorted in memory at once (about 1.5 KB each in Arrow, twice while sorting).
BUCKET_ROWS = 200_000

_PLACE = "__place"


def parquet_writer(path: Path) -> pq.ParquetWriter:
    """The writer of canonical Parquet files (one setting for every ingest output)."""
    # lz4: the cheapest codec to write; dictionary pages do most of the shrinking.
    # Statistics only for the flat columns readers filter on: computing them for
    # every nested leaf is a fifth of the writing time.
    return pq.ParquetWriter(path, CANONICAL_ARROW, compression="lz4",
                            write_statistics=["schema_version", "session_id", "turn_index",
                                              "timestamp"])


def in_key_order(keys: pl.DataFrame) -> bool:
    """Whether the rows of ``keys`` are in strictly increasing (session_id, turn_index)
    order: sorted, with no key twice."""
    sid, turn = pl.col("session_id"), pl.col("turn_index")
    return bool(keys.select(
        ((sid > sid.shift()) | ((sid == sid.shift()) & (turn > turn.shift())))
        .fill_null(True).all()
    ).item())


def places(keys: pl.DataFrame) -> np.ndarray:
    """For each row of ``keys`` (in written order), its place in key order."""
    order = keys.select(pl.arg_sort_by(list(KEY_COLUMNS), maintain_order=True)
                        ).to_series().to_numpy()
    place = np.empty(len(order), dtype=np.int64)
    place[order] = np.arange(len(order), dtype=np.int64)
    return place


def sort_rewrite(src: Path, dst: Path, keys: pl.DataFrame, scratch: Path,
                 bucket_rows: int | None = None,
                 on_bucket: Callable[[int, int], None] | None = None) -> None:
    """Write the rows of canonical Parquet ``src`` to ``dst`` in key order.

    ``keys`` has the ``session_id`` and ``turn_index`` of every row of ``src``,
    in file order; bucket files (of ``bucket_rows``, default :data:`BUCKET_ROWS`)
    go to ``scratch`` and are removed. ``on_bucket(done, total)`` is called as each
    bucket is written.
    """
    bucket_rows = bucket_rows or BUCKET_ROWS
    place = places(keys)
    n_buckets = max(1, -(-len(place) // bucket_rows))
    paths = [scratch / f"bucket-{b:05d}.arrow" for b in range(n_buckets)]
    try:
        _spread(src, place, bucket_rows, paths)
        with parquet_writer(dst) as out, ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="fpi-sort") as pool:
            # The next bucket is read and sorted while this one is encoded.
            pending = pool.submit(_sorted_bucket, paths[0])
            for b in range(n_buckets):
                table = pending.result()
                if b + 1 < n_buckets:
                    pending = pool.submit(_sorted_bucket, paths[b + 1])
                if table is not None:
                    out.write_table(table, row_group_size=table.num_rows)
                del table
                if on_bucket is not None:
                    on_bucket(b + 1, n_buckets)
    finally:
        for path in paths:
            path.unlink(missing_ok=True)


def _spread(src: Path, place: np.ndarray, bucket_rows: int, paths: list[Path]) -> None:
    """First pass: each row of ``src``, with its place, into the bucket of its place."""
    schema = CANONICAL_ARROW.append(pa.field(_PLACE, pa.int64()))
    options = ipc.IpcWriteOptions(compression="lz4")
    writers: dict[int, ipc.RecordBatchFileWriter] = {}
    try:
        offset = 0
        parquet = pq.ParquetFile(src)
        for group in range(parquet.num_row_groups):  # (whole row groups decode fastest)
            table = parquet.read_row_group(group)
            group_place = place[offset : offset + table.num_rows]
            offset += table.num_rows
            bucket = group_place // bucket_rows
            table = table.append_column(_PLACE, arrow_ints(group_place))
            for b in np.unique(bucket).tolist():
                if b not in writers:
                    writers[b] = ipc.new_file(paths[b], schema, options=options)
                writers[b].write_table(table.filter(arrow_mask(bucket == b)))
    finally:
        for w in writers.values():
            w.close()


def _sorted_bucket(path: Path) -> pa.Table | None:
    """Second pass: one bucket's rows in key order (None for a bucket with no rows)."""
    if not path.exists():
        return None
    with pa.memory_map(str(path)) as source:
        table = ipc.open_file(source).read_all()
    path.unlink()
    return table.take(pc.sort_indices(table.column(_PLACE))).drop_columns(_PLACE)
