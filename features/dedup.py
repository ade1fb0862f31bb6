"""The backfill's dedup scan and lateness over a whole file, natively where the core has
them (``native/src/dedup.rs``): one hash per id and a sort find the rows whose id may
repeat; one pass in file order with each key's newest time finds the too-late rows.
Both were serial whole-array numpy passes on the job's critical path (~0.2 s CPU each
per 2M events); :func:`features.backfill.accept` decides with them, exactly as before.

>>> import numpy as np, pyarrow as pa
>>> maybe_repeated(pa.array(["a", "b", "a", "c"])).tolist()
[0, 2]
>>> late_rows(np.array([1, 1, 1]), np.array([100, 10, 95]), np.ones(3, bool), 20).tolist()
[False, True, False]
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.native import native


def maybe_repeated(arr: pa.Array) -> np.ndarray:
    """Rows whose string may occur more than once (every repeated one, maybe a few more):
    natively a 64-bit hash of each string and one sort; else (or with nulls) exact."""
    n = len(arr)
    scan = getattr(native, "repeated_rows", None)
    strings = pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)
    if scan is not None and strings and not arr.null_count and n:
        width = np.int64 if pa.types.is_large_string(arr.type) else np.int32
        step = np.dtype(width).itemsize
        offsets = np.frombuffer(arr.buffers()[1], width, n + 1, arr.offset * step)
        data = arr.buffers()[2]
        body = np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)
        return np.frombuffer(scan(body, offsets.astype(np.int64)), "<i8")
    return _fallback(arr)


def _fallback(arr: pa.Array) -> np.ndarray:
    """:func:`maybe_repeated` in numpy: for the usual fixed-width ids a 64-bit hash of the
    bytes and one sort, else exact."""
    n = len(arr)
    if pa.types.is_string(arr.type) and not arr.null_count and n:
        offsets = np.frombuffer(arr.buffers()[1], np.int32, n + 1, arr.offset * 4)
        width = int(offsets[1] - offsets[0])
        if 0 < width <= 64 and bool(np.all(np.diff(offsets) == width)):
            data = np.frombuffer(arr.buffers()[2], np.uint8, n * width, int(offsets[0]))
            padded = np.zeros((n, -(-width // 8) * 8), np.uint8)
            padded[:, :width] = data.reshape(n, width)
            h = np.zeros(n, np.uint64)
            for word in padded.view("<u8").T:
                h = (h ^ word) * np.uint64(0x9E3779B97F4A7C15)
                h ^= h >> np.uint64(29)
            s = np.sort(h)
            repeated = s[1:][s[1:] == s[:-1]]
            return np.flatnonzero(np.isin(h, repeated)) if len(repeated) else np.zeros(0, np.int64)
    codes = pc.dictionary_encode(arr, null_encoding="encode").indices
    codes = np.asarray(codes.to_numpy(zero_copy_only=False), dtype=np.int64)
    return np.flatnonzero(np.bincount(codes)[codes] > 1)


def late_rows(
    keys: np.ndarray, ts: np.ndarray, first: np.ndarray, lateness_ms: int
) -> np.ndarray | None:
    """Per row, in file order: a ``first`` row older than its key's newest earlier
    ``first`` row minus ``lateness_ms``. None when the installed core lacks the pass."""
    scan = getattr(native, "late_rows", None)
    if scan is None:
        return None
    keys = np.ascontiguousarray(keys, np.int64)
    ts = np.ascontiguousarray(ts, np.int64)
    first = np.ascontiguousarray(first, np.bool_).view(np.uint8)
    return np.frombuffer(scan(keys, ts, first, int(lateness_ms)), np.bool_)
