"""Event ids as the 64-bit hashes the engine keeps (:func:`features.layout.txid_hash`), for
whole columns at once: one native call over Arrow's string buffers, off the GIL. In
Python (one ``blake2b`` per id) this was the backfill job's slowest step.

>>> import pyarrow as pa
>>> from features.layout import txid_hash
>>> ids = pa.array(["t1", "t2", "t1"])
>>> txid_hashes(ids).tolist() == [txid_hash(s) for s in ["t1", "t2", "t1"]]
True
>>> txid_hashes(ids, np.array([1])).tolist() == [txid_hash("t2")]
True
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from features.native import native


def txid_hashes(ids: Any, rows: np.ndarray | None = None) -> np.ndarray:
    """``txid_hash`` of each id (of ``ids[rows]`` when given) as uint64. ``ids``: Arrow
    strings (chunked or not; a null hashes as the empty string), or a sequence of str."""
    if not isinstance(ids, pa.Array | pa.ChunkedArray):
        ids = pa.array([str(s) for s in ids], pa.string())
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    large = ids.type in (pa.large_string(), pa.large_binary())
    if not large and ids.type not in (pa.string(), pa.binary()):
        ids = ids.cast(pa.string())
    width = np.dtype(np.int64 if large else np.int32)
    n = len(ids)
    offsets = np.frombuffer(ids.buffers()[1], width, n + 1, ids.offset * width.itemsize)
    data = ids.buffers()[2]
    body = np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)
    starts, ends = offsets[:-1], offsets[1:]
    if ids.null_count:
        ends = np.where(np.asarray(ids.is_null()), starts, ends)
    if rows is not None:
        starts, ends = starts[rows], ends[rows]
    starts = np.ascontiguousarray(starts, np.int64)
    ends = np.ascontiguousarray(ends, np.int64)
    batch = getattr(native, "txid_hashes", None)
    if batch is None:  # an installed core older than this checkout
        raise ImportError(
            "skewless_native: this build lacks txid_hashes; rebuild the native core with "
            "`make install` or `pip install ./native`"
        )
    return np.frombuffer(batch(body, starts, ends), "<u8")
