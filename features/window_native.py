"""An entity's window features in one native pass (``native/src/windows.rs``).

:meth:`features.backfill.EventIndex._evaluate` computes them as ~25 whole-array numpy passes
per entity (ranges by merging, digit gathers, means, std, a sparse table for max/min).
The native loop walks the sorted queries once: every window's range and every output,
off the GIL so the entities' tasks share both cores. It writes one row per query (all
outputs side by side, in the index's order), and one gather puts them in the spine's
order, reading a row's one or two cache lines: a column at a time, those random reads
were a third of the pass. Its float operations are numpy's, in numpy's order: the bytes
are the same (tests/features/test_window_native.py holds it to the numpy pass).

It takes the same exact prefix sums (:func:`features.range_folds.moments_prefix`); where
those are missing (negative or too wide data), or a max/min field holds NaN or -0.0 (where
the order of comparisons would show), it returns None and the numpy pass runs instead.
The rare std whose moments cancel comes back as rows for :func:`features.range_folds._lift`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from features.definitions import MS_PER_SECOND, FeatureSet, Op
from features.native import native
from features.range_folds import _lift

_SUMMED = (Op.SUM, Op.MEAN, Op.STD)


def extremes_ok(x: np.ndarray) -> bool:
    """Whether max/min over ``x`` is the same bits in any comparison order."""
    return not bool(np.isnan(x).any()) and not bool((np.signbit(x) & (x == 0)).any())


def evaluate(
    index: Any,
    fs: FeatureSet,
    entity: str,
    g: np.ndarray,
    t: np.ndarray,
    hi: np.ndarray,
    inverse: np.ndarray | None,
) -> dict[str, np.ndarray] | None:
    """``entity``'s features from ``index`` (a :class:`features.backfill.EventIndex`) at
    the queries sorted by (group, t) — ``g`` < 0 for a key without events, ``hi`` each
    range's end — in the spine's order: row ``j`` is sorted query ``inverse[j]`` (the
    sorted order without ``inverse``). None when the numpy pass must run (see the module
    docstring)."""
    kernels = [getattr(native, k, None) for k in ("window_pass", "seconds_since_last")]
    passes, since, gather = *kernels, getattr(native, "gather_columns", None)
    if passes is None or since is None or gather is None:
        return None  # an installed core older than this checkout
    aggs = fs.for_entity(entity)
    squares = {a.field for a in aggs if a.op is Op.STD}
    fields = sorted({a.field for a in aggs if a.window is not None and a.field is not None})
    specs = []
    for f in fields:
        x = index.values[f]
        ops = {a.op for a in aggs if a.field == f and a.window is not None}
        if ops & {Op.MAX, Op.MIN} and not index.extremes_ok(f):
            return None
        if ops & set(_SUMMED):
            m = index.moments(f, f in squares)
            if m is None or (f in squares and m.s2 is None):
                return None
            s2 = m.s2 if f in squares and m.s2 is not None else []
            specs.append((x, m.width, m.scale, m.s1, m.scale2, s2))
        else:
            specs.append((x, 0, 0, [], 0, []))
    q, names = len(g), [a.name for a in aggs]
    g, t = np.ascontiguousarray(g, np.int64), np.ascontiguousarray(t, np.int64)
    hi = np.ascontiguousarray(hi, np.int64)
    # one row per query, outputs side by side (a count's slot holds int64 bits); in the
    # queries' own order (no spine to gather for) one column per output instead
    k, columns = len(aggs), inverse is None
    table = _buffer(index, k * q, columns).reshape((k, q) if columns else (q, k))
    windows, placed = [], []
    for w, h in sorted({(a.window.length_ms, a.window.hop_ms) for a in aggs if a.window}):
        mine = [a for a in aggs if a.window and (a.window.length_ms, a.window.hop_ms) == (w, h)]
        slots = [
            (str(a.op), fields.index(a.field) if a.field else 0, names.index(a.name)) for a in mine
        ]
        windows.append((w, h, slots))
        placed += [(a, slot) for a, (_, _, slot) in zip(mine, slots, strict=True)]
    hard = passes(index.comp, g, t, hi, index.stride, index.tmin, table, k, columns, windows, specs)
    for (a, slot), rows in zip(placed, hard, strict=True):
        if rows:
            _lifted(index.values[a.field or ""], rows, table[slot] if columns else table[:, slot])
    for a in aggs:
        if a.op is Op.SINCE_LAST:
            slot = names.index(a.name)
            since(g, t, hi, index.starts, index.ts, table, k, columns, slot, float(MS_PER_SECOND))
    if inverse is None:
        out = list(table)  # each a contiguous row of the slot-major table
    else:
        out = [np.empty(len(inverse)) for _ in aggs]
        gather(table, k, inverse, out)
        index.spare = table.reshape(-1)  # read no more: the after-event pass may reuse it
    return {
        a.name: col.view(np.int64) if a.op is Op.COUNT else col
        for a, col in zip(aggs, out, strict=True)
    }


def _buffer(index: Any, size: int, reuse: bool) -> np.ndarray:
    """``size`` float64 slots for a pass's table. The after-event pass (``reuse``) takes
    the spine pass's finished table when it is large enough: the Feast table's columns
    then live in pages already faulted in, instead of a fresh table as large (the card's
    is ~140 MB for 2M events: ~35k page faults, zeroed by the kernel, per job)."""
    spare = getattr(index, "spare", None)
    if not reuse or spare is None:
        return np.empty(size)
    index.spare = None  # the caller's columns own it now (or it is freed)
    # not when the spine was much longer: its table would outlive the pass for a part of it
    return spare[:size] if size <= spare.size <= 2 * size else np.empty(size)


def _lifted(x: np.ndarray, rows: bytes, out: np.ndarray) -> None:
    """The std of the rows whose moments cancel, by binary lifting (as the numpy pass;
    natively each row costs its length, not levels over every value)."""
    pos, lo, hi = np.frombuffer(rows, "<i8").reshape(-1, 3).T
    lift = getattr(native, "lift_m2", None)
    if lift is not None:
        lo, hi = np.ascontiguousarray(lo), np.ascontiguousarray(hi)
        m2 = np.frombuffer(lift(x, lo, hi), "<f8")
    else:
        m2 = _lift(x, lo, hi)[1]
    var = m2 / (hi - lo).astype(np.float64)
    out[pos] = np.sqrt(np.maximum(var, 0.0))
