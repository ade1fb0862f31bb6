"""The native engine core (Rust, ``native/``): the same state bytes and the same feature
values as :mod:`features.engine` + :mod:`features.codec`, bit for bit, 10-50x faster.

The Python engine stays the reference; the tests hold the two against each other. The
stream flow and the scoring service run on this one.

>>> from features.engine import Engine
>>> from features.reference import REFERENCE
>>> card = NativeLayout(Engine(REFERENCE).layout("card"))
>>> s = card.new_state()
>>> card.update(s, 1_000_000, (10.0,), 7).name, card.update(s, 1_000_000, (10.0,), 7).name
('APPLIED', 'DUPLICATE')
>>> card.finalize(s, 1_000_001)[:2]
[1, 1]
"""

from __future__ import annotations

from typing import Any

from features.codec import StateCodec
from features.definitions import Op
from features.engine import EntityLayout, Outcome, QueryTooOldError

try:
    import skewless_native as _native
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "skewless_native: the native engine core is not installed; build it with "
        "`make install` (needs cargo) or `pip install ./native`"
    ) from exc

#: the extension module itself (import it from here: a missing build gets the message above)
native = _native
State = _native.State
#: ``features.engine.txid_hash``, natively
txid_hash_native = _native.txid_hash

_OPS = {Op.COUNT: 0, Op.SUM: 1, Op.MEAN: 2, Op.MIN: 3, Op.MAX: 4, Op.STD: 5}
_COMPS = {"sum": 0, "m2": 1, "min": 2, "max": 3}
_OUTCOMES = (Outcome.APPLIED, Outcome.DUPLICATE, Outcome.LATE)


def compile_core(layout: EntityLayout, codec: StateCodec | None = None) -> Any:
    """The native ``Core`` for a layout (its codec's bytes layout and crc)."""
    codec = codec or StateCodec(layout)
    groups = [
        (g.length_ms, g.hop_ms, g.level, [(p, _OPS[op], f) for p, op, f in g.outputs], g.need_m2)
        for g in layout.groups
    ]
    return _native.Core(
        layout.entity.name,
        list(layout.hops),
        list(layout.keep),
        layout.horizon_ms,
        layout.lateness_ms,
        layout.primary,
        len(layout.fields),
        len(layout.names),
        groups,
        layout.since_last,
        [[_COMPS[c] for c in needs] for needs in codec.needs],
        codec.crc,
        QueryTooOldError,
    )


class NativeLayout:
    """An :class:`~features.engine.EntityLayout` and its codec, run natively. States are
    opaque ``skewless_native.State`` objects (``max_seen`` and a few counters readable)."""

    def __init__(self, layout: EntityLayout) -> None:
        self.layout = layout
        self.codec = StateCodec(layout)
        self.core = compile_core(layout, self.codec)
        self.names = layout.names
        self.entity = layout.entity
        self.primary = layout.primary

    def new_state(self) -> Any:
        return self.core.new_state()

    def update(
        self, state: Any, ts: int, values: tuple[float, ...], txid: int | None = None
    ) -> Outcome:
        return _OUTCOMES[self.core.update(state, ts, values, txid)]

    def finalize(self, state: Any, t: int) -> list[float | int]:
        return self.core.finalize(state, t)

    def as_of_last(self, state: Any) -> list[float | int]:
        return self.core.as_of_last(state)

    def encode(self, state: Any) -> bytes:
        return self.core.encode(state)

    def decode(self, data: bytes, readonly: bool = False) -> Any:
        return self.core.decode(data, readonly)

    def snapshot(self, state: Any) -> bytes:
        return self.core.snapshot(state)

    def restore(self, data: bytes) -> Any:
        return self.core.restore(data)
