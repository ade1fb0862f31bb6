"""The backfill's online-store side: each entity's end state and the Feast offline tables
(one row per (entity, event time), the entity's last row carrying its state bytes).

The states of an entity come as one buffer (:func:`features.state_build.state_bytes`) and
become the tables' state column without a Python object per entity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from features.backfill import EventIndex
from features.definitions import Entity, FeatureSet
from features.feast_objects import TIMESTAMP_FIELD, bootstrap_field, state_field
from features.layout import compile_layouts
from features.state_build import state_bytes
from flows.backfill_events import AcceptedEvents, each


@dataclass(frozen=True)
class EndStates:
    """One entity's end states: key ``keys[i]`` has ``data[starts[i]:starts[i + 1]]``."""

    keys: np.ndarray
    data: np.ndarray
    starts: np.ndarray

    def as_dict(self) -> dict[int, bytes]:
        blob = self.data.tobytes()
        cuts = zip(self.starts[:-1].tolist(), self.starts[1:].tolist(), strict=True)
        return dict(zip(self.keys.tolist(), [blob[a:b] for a, b in cuts], strict=True))

    def column(self, last: np.ndarray) -> pa.Array:
        """A binary column over rows sorted by key, null but on each key's ``last`` row,
        which carries that key's state."""
        n, size = len(last), np.diff(self.starts)
        if int(last.sum()) != len(self.keys):
            raise ValueError("end states: one last row per key")
        if self.starts[-1] >= 2**31:  # beyond 32-bit offsets: a (slower) chunked take
            blobs = pa.array(list(self.as_dict().values()), pa.binary())
            return blobs.take(pa.array(np.cumsum(last) - 1, mask=~last))
        lengths = np.zeros(n, np.int64)
        lengths[last] = size
        offsets = np.zeros(n + 1, np.int32)
        np.cumsum(lengths, out=offsets[1:])
        validity = np.packbits(last, bitorder="little")
        buffers = [pa.py_buffer(validity), pa.py_buffer(offsets), pa.py_buffer(self.data)]
        return pa.Array.from_buffers(pa.binary(), n, buffers, null_count=n - len(self.keys))


def entity_state(fs: FeatureSet, e: Entity, index: EventIndex, txids: Any) -> EndStates:
    """``e``'s end states from its index and its accepted events' ids (in file order)."""
    data, starts = state_bytes(compile_layouts(fs)[e.name], index, txids)
    return EndStates(index.uniq, data, starts)


def entity_end_states(
    fs: FeatureSet, events: AcceptedEvents, indexes: dict[str, EventIndex] | None = None
) -> dict[str, EndStates]:
    """Each entity's engine state after all its accepted events, as codec bytes.

    Built directly from the sorted events: the state after any replay holds exactly the
    events its retention keeps (raw events, tiles per level bucket, ids), so tiles are
    group-bys and their exact sums come from integer digits. The bytes are identical to
    replaying the events through the reference engine (tested)."""

    def one(e: Entity) -> EndStates:
        index = indexes[e.name] if indexes else events.index(e.name)
        return entity_state(fs, e, index, events.by_entity[e.name].txids)

    return dict(zip([e.name for e in fs.entities], each(one, fs.entities), strict=True))


def end_states(
    fs: FeatureSet, events: AcceptedEvents, indexes: dict[str, EventIndex] | None = None
) -> dict[str, dict[int, bytes]]:
    """:func:`entity_end_states` as a dict per entity: key -> state bytes."""
    states = entity_end_states(fs, events, indexes)
    return {name: s.as_dict() for name, s in states.items()}


def feast_table(fs: FeatureSet, e: Entity, index: EventIndex, states: EndStates) -> pa.Table:
    """One row per (``e`` key, event time) with the as-of-last-event features; each key's
    last row carries its state bytes."""
    keys, ts, last, vals = index.features_after_events(fs, e.name)
    blobs = states.column(last)
    cols = {
        e.join_key: pa.array(keys, pa.int64()),
        TIMESTAMP_FIELD: pa.array(ts, pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
        **{name: pa.array(v) for name, v in vals.items()},
        state_field(e): blobs,
        bootstrap_field(e): blobs,
    }
    return pa.table(cols)


def feast_tables(
    fs: FeatureSet,
    events: AcceptedEvents,
    states: dict[str, EndStates],
    indexes: dict[str, EventIndex] | None = None,
) -> dict[str, pa.Table]:
    """:func:`feast_table` of every entity."""

    def one(e: Entity) -> pa.Table:
        index = indexes[e.name] if indexes else events.index(e.name)
        return feast_table(fs, e, index, states[e.name])

    return dict(zip([e.name for e in fs.entities], each(one, fs.entities), strict=True))
