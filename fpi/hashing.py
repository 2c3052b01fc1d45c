"""Stable 64-bit hashes: the same value on every machine, Python, Polars and fpi version.

Everything that must not depend on row order or partitioning is decided by these
hashes: a session's bucket (``fpi ingest --partitions``), the training split, the
bootstrap's Poisson weights and the attribution sample. Polars' own ``.hash()`` is
not stable across versions, so it is never used for these.

The hash of a string is FNV-1a over its UTF-8 bytes followed by the SplitMix64
finaliser (so that similar strings land far apart). ``combine`` folds integers
(a seed, a replicate number, a turn index) into a hash. The values are pinned by
tests: changing them changes every user's buckets and intervals.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import polars as pl
import pyarrow as pa

__all__ = ["bucket_of", "combine", "hash_series", "hash_strings", "mix64", "unit_interval"]

_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
# Below this many strings still being hashed, a plain loop is cheaper than numpy calls.
_VECTOR_MIN = 32


def mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 values (a bijection; wraps modulo 2**64)."""
    z = np.asarray(x, dtype=np.uint64).copy()
    with np.errstate(over="ignore"):
        z ^= z >> np.uint64(30)
        z *= np.uint64(0xBF58476D1CE4E5B9)
        z ^= z >> np.uint64(27)
        z *= np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return z


def _fnv_tail(h: int, data: bytes) -> int:
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & _MASK
    return h


def _fnv(offsets: np.ndarray, data: np.ndarray) -> np.ndarray:
    """FNV-1a of every string given by Arrow offsets into ``data``, longest first."""
    starts = offsets[:-1]
    lengths = offsets[1:] - starts
    order = np.argsort(-lengths, kind="stable")
    sorted_len = lengths[order]
    h = np.full(len(order), _FNV_OFFSET, dtype=np.uint64)
    prime = np.uint64(_FNV_PRIME)
    position = 0
    with np.errstate(over="ignore"):
        while True:
            active = int(np.searchsorted(-sorted_len, -position, side="left"))
            if active < _VECTOR_MIN:
                break
            rows = order[:active]
            h[:active] = (h[:active] ^ data[starts[rows] + position].astype(np.uint64)) * prime
            position += 1
    raw = data.tobytes()
    for i in range(int(np.searchsorted(-sorted_len, -position, side="left"))):
        row = int(order[i])
        start = int(starts[row]) + position
        h[i] = _fnv_tail(int(h[i]), raw[start:int(offsets[row + 1])])
    out = np.empty_like(h)
    out[order] = h
    return out


def hash_series(values: pl.Series) -> np.ndarray:
    """Stable hash of each string in ``values`` (nulls hash like the empty string)."""
    arrow = values.cast(pl.String).fill_null("").to_arrow()
    array = pa.concat_arrays(arrow.chunks) if isinstance(arrow, pa.ChunkedArray) else arrow
    array = array.cast(pa.large_string())
    if len(array) == 0:
        return np.zeros(0, dtype=np.uint64)
    _validity, offsets_buf, data_buf = array.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64)[array.offset:array.offset + len(array) + 1]
    data = (np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None
            else np.zeros(0, dtype=np.uint8))
    return mix64(_fnv(offsets, data))


def hash_strings(values: Iterable[str]) -> np.ndarray:
    """Stable hash of each Python string (same values as ``hash_series``)."""
    return hash_series(pl.Series(list(values), dtype=pl.String))


def combine(hashes: np.ndarray, *keys: int | np.ndarray) -> np.ndarray:
    """Fold integer keys (seed, replicate, turn index, ...) into ``hashes``, in order."""
    h = np.asarray(hashes, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for key in keys:
            k = np.asarray(key).astype(np.int64).astype(np.uint64)
            h = mix64(h ^ mix64(k * np.uint64(_GOLDEN) + np.uint64(1)))
    return h


def unit_interval(hashes: np.ndarray) -> np.ndarray:
    """Map hashes to floats uniform on [0, 1) using their top 53 bits."""
    top = np.asarray(hashes, dtype=np.uint64) >> np.uint64(11)
    return top.astype(np.float64) * (1.0 / (1 << 53))


def bucket_of(hashes: np.ndarray, buckets: int) -> np.ndarray:
    """The bucket (0 .. buckets-1) of each hash."""
    if buckets < 1:
        raise ValueError(f"buckets must be at least 1, got {buckets}")
    return (np.asarray(hashes, dtype=np.uint64) % np.uint64(buckets)).astype(np.int64)
