"""The native core (Rust, ``native/``): the same state bytes and the same feature values
as the Python reference (:mod:`features.reference_engine` + :mod:`features.reference_codec`),
bit for bit, 10-50x faster; the event
fast path compiled from the definitions' schema; the wire encoders.

The Python engine stays the reference; the tests hold the two against each other. The
stream flow and the scoring service run on this one. The Rust side owns the state bytes:
their header is read (:meth:`NativeLayout.max_seen`, ``core.header``) and written
(``core.encode_headers``) there, never by offsets spelled in Python.

>>> from features.layout import compile_layouts
>>> from features.reference import REFERENCE
>>> card = NativeLayout(compile_layouts(REFERENCE)["card"])
>>> s = card.new_state()
>>> card.update(s, 1_000_000, (10.0,), 7).name, card.update(s, 1_000_000, (10.0,), 7).name
('APPLIED', 'DUPLICATE')
>>> card.finalize(s, 1_000_001)[:2]
[1, 1]
>>> NativeLayout.max_seen(card.encode(s))
1000000
>>> parse = event_parser(REFERENCE.schema)
>>> parse(b'{"transaction_id": "t1", "card_id": 7, "merchant_id": 3, "amount": 12.5,'
...       b' "currency": "EUR", "country": "FR", "mcc": 5411, "event_time": 1767258000000}')
('t1', 7, 3, 12.5, 'EUR', 'FR', 5411, 1767258000000, None)
>>> parse(b'{"transaction_id": "t1", "currency": "eur"}') is None  # Python names the field
True
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from features.layout import EntityLayout, Outcome, QueryTooOldError
from features.schema import INT64_MAX, INT64_MIN, EventSchema, Field, FieldType

try:
    import skewless_native as _native
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "skewless_native: the native engine core is not installed; build it with "
        "`make install` (needs cargo) or `pip install ./native`"
    ) from exc

#: the extension module itself (import it from here: a missing build says how to make it)
native = _native
State = _native.State
#: ``features.layout.txid_hash``, natively
txid_hash_native = _native.txid_hash

#: what ``Core.update`` returns indexes this (the Rust side names its outcomes)
_OUTCOMES = tuple(Outcome(name) for name in _native.OUTCOMES)


# -- the state core ----------------------------------------------------------------------
@dataclass(frozen=True)
class GroupSpec:
    """One window group: the features one merged tile answers."""

    length_ms: int
    hop_ms: int
    level: int
    #: ``(position among the names, op name, field index)``; op names are
    #: :class:`features.definitions.Op` values (the Rust side refuses one it lacks)
    outputs: tuple[tuple[int, str, int], ...]
    need_m2: bool


@dataclass(frozen=True)
class CoreSpec:
    """Everything the native ``Core`` needs of a layout and its codec, by name (the Rust
    side reads these attributes; see ``native/skewless_native.pyi``)."""

    entity: str
    hops: tuple[int, ...]
    keep: tuple[int, ...]
    horizon_ms: int
    lateness_ms: int | None
    primary: bool
    n_fields: int
    n_names: int
    groups: tuple[GroupSpec, ...]
    since_last: int | None
    #: per level, the tile components it stores (``features.layout`` names), in order
    needs: tuple[tuple[str, ...], ...]
    crc: int

    @classmethod
    def of(cls, layout: EntityLayout) -> CoreSpec:
        groups = tuple(
            GroupSpec(
                g.length_ms,
                g.hop_ms,
                g.level,
                tuple((p, str(op.value), f) for p, op, f in g.outputs),
                g.need_m2,
            )
            for g in layout.groups
        )
        return cls(
            entity=layout.entity.name,
            hops=tuple(layout.hops),
            keep=tuple(layout.keep),
            horizon_ms=layout.horizon_ms,
            lateness_ms=layout.lateness_ms,
            primary=layout.primary,
            n_fields=len(layout.fields),
            n_names=len(layout.names),
            groups=groups,
            since_last=layout.since_last,
            needs=tuple(tuple(needs) for needs in layout.needs),
            crc=layout.crc,
        )


def compile_core(layout: EntityLayout) -> _native.Core:
    """The native ``Core`` for a layout (its state bytes' components and crc)."""
    return _native.Core(CoreSpec.of(layout), QueryTooOldError)


class NativeLayout:
    """An :class:`~features.layout.EntityLayout`, run natively. States are
    opaque ``skewless_native.State`` objects (``max_seen`` and a few counters readable)."""

    #: the newest event time in state bytes of any layout (None: no bytes or an empty
    #: state), read from the header without decoding
    max_seen = staticmethod(_native.state_max_seen)

    def __init__(self, layout: EntityLayout) -> None:
        self.layout = layout
        self.core = compile_core(layout)
        self.names = layout.names
        self.entity = layout.entity
        self.primary = layout.primary

    def new_state(self) -> _native.State:
        return self.core.new_state()

    def update(
        self, state: _native.State, ts: int, values: tuple[float, ...], txid: int | None = None
    ) -> Outcome:
        return _OUTCOMES[self.core.update(state, ts, values, txid)]

    def finalize(self, state: _native.State, t: int) -> list[float | int]:
        return self.core.finalize(state, t)

    def as_of_last(self, state: _native.State) -> list[float | int]:
        return self.core.as_of_last(state)

    def encode(self, state: _native.State) -> bytes:
        return self.core.encode(state)

    def decode(self, data: bytes, readonly: bool = False) -> _native.State:
        return self.core.decode(data, readonly)

    def snapshot(self, state: _native.State) -> bytes:
        return self.core.snapshot(state)

    def restore(self, data: bytes) -> _native.State:
        return self.core.restore(data)


# -- the event fast path -----------------------------------------------------------------
@dataclass(frozen=True)
class NativeField:
    """One schema field's rules as the native parser checks them (read by name)."""

    name: str
    kind: str  # a FieldType value
    required: bool
    #: int64 and timestamp: the inclusive range, clamped to int64
    int_range: tuple[int, int] | None = None
    #: float64: ``(min, min_exclusive, max, max_exclusive)``, infinite when unbounded
    float_range: tuple[float, bool, float, bool] | None = None
    min_length: int | None = None
    max_length: int | None = None
    #: ``(code point ranges, negate, min, max)`` atoms; max None: unbounded
    pattern: tuple[tuple[tuple[tuple[int, int], ...], bool, int, int | None], ...] | None = None
    allowed_ints: tuple[int, ...] | None = None
    allowed_strs: tuple[str, ...] | None = None


def _int_range(f: Field) -> tuple[int, int]:
    """``f``'s bounds as an inclusive integer range (exact for int and float bounds)."""
    lo, hi = INT64_MIN, INT64_MAX
    if f.min is not None:
        lo = math.floor(f.min) + 1 if f.min_exclusive else math.ceil(f.min)
    if f.max is not None:
        hi = math.ceil(f.max) - 1 if f.max_exclusive else math.floor(f.max)
    lo, hi = max(lo, INT64_MIN), min(hi, INT64_MAX)
    return (1, 0) if lo > hi else (lo, hi)  # (1, 0): nothing passes natively


def _exact_float(x: float | int | None, default: float) -> float | None:
    """``x`` as a float when the float compares like ``x`` (None: it does not)."""
    if x is None:
        return default
    fx = float(x)
    return fx if fx == x else None


def _pattern(pattern: str) -> Any:
    """``pattern`` as native atoms, read from Python's own regex parser, or None when it
    uses anything but literals, classes of literals and ranges, ``.`` and repeats of one
    of those (then the Python regex checks it after the native parse)."""
    try:
        from re import _constants as c  # type: ignore[attr-defined]
        from re import _parser as p  # type: ignore[attr-defined]

        parsed = p.parse(pattern, 0)
    except Exception:  # any surprise means: let Python's regex check it
        return None
    if parsed.state.flags & ~c.SRE_FLAG_UNICODE:
        return None

    def charset(op: Any, av: Any) -> tuple[tuple[tuple[int, int], ...], bool] | None:
        if op is c.LITERAL:
            return ((av, av),), False
        if op is c.NOT_LITERAL:
            return ((av, av),), True
        if op is c.ANY:
            return ((10, 10),), True  # any but a newline (no DOTALL: flags checked above)
        if op is c.IN:
            negate, ranges = False, []
            for i, (iop, iav) in enumerate(av):
                if iop is c.NEGATE and i == 0:
                    negate = True
                elif iop is c.LITERAL:
                    ranges.append((iav, iav))
                elif iop is c.RANGE:
                    ranges.append(tuple(iav))
                else:
                    return None
            return tuple(ranges), negate
        return None

    atoms = []
    for op, av in parsed:
        lo, hi = 1, 1
        if op is c.MAX_REPEAT or op is c.MIN_REPEAT:  # lazy or greedy: same full matches
            lo, hi, sub = av
            if len(sub) != 1:
                return None
            op, av = sub[0]
        cs = charset(op, av)
        if cs is None:
            return None
        atoms.append((cs[0], cs[1], lo, None if hi is c.MAXREPEAT else hi))
    return tuple(atoms)


def _native_field(f: Field) -> tuple[NativeField, bool]:
    """(the native rules of ``f``, whether Python must re-check the value after the
    native parse: a rule the native side cannot say exactly)."""
    spec: dict[str, Any] = {"name": f.name, "kind": f.type.value, "required": f.required}
    recheck = False
    if f.type in (FieldType.INT64, FieldType.TIMESTAMP):
        spec["int_range"] = _int_range(f)
    elif f.type is FieldType.FLOAT64:
        lo, hi = _exact_float(f.min, -math.inf), _exact_float(f.max, math.inf)
        if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
            recheck = True
        else:
            spec["float_range"] = (lo, f.min_exclusive, hi, f.max_exclusive)
    elif f.type is FieldType.STRING:
        spec["min_length"], spec["max_length"] = f.min_length, f.max_length
        if f.pattern is not None:
            spec["pattern"] = _pattern(f.pattern)
            recheck = spec["pattern"] is None
    if f.allowed is not None:
        if f.type is FieldType.STRING:
            spec["allowed_strs"] = tuple(a for a in f.allowed if type(a) is str)
            recheck |= len(spec["allowed_strs"]) != len(f.allowed)
        else:
            ints = tuple(int(a) for a in f.allowed if type(a) in (int, bool))
            spec["allowed_ints"] = ints
            recheck |= len(ints) != len(f.allowed)  # e.g. 2.0: Python says what equals it
    return NativeField(**spec), recheck


def event_parser(schema: EventSchema) -> Callable[[bytes], tuple[Any, ...] | None]:
    """The native fast path of :meth:`features.validate.Validator.parse` for ``schema``:
    ``raw -> values | None``. The values are exactly what
    :meth:`~features.validate.Validator.parse_py` gives (schema order, times as epoch
    ms, None for an absent optional field); None means "not sure": Python decides and
    names the field (tests/features/test_parse_fast.py holds the two equal)."""
    specs = [_native_field(f) for f in schema.fields]
    parser = _native.EventParser(schema.max_message_bytes, [s for s, _ in specs])
    recheck = [(i, f) for i, (f, (_, again)) in enumerate(zip(schema.fields, specs, strict=True))
               if again]  # fmt: skip
    if not recheck:
        return parser
    from features.validate import field_check

    checks = [(i, field_check(f)) for i, f in recheck]

    def parse(raw: bytes) -> tuple[Any, ...] | None:
        values = parser(raw)
        if values is None:
            return None
        try:
            for i, check in checks:
                check(values[i])
        except ValueError:
            return None
        return values

    return parse


# -- wire encoders ---------------------------------------------------------------------
#: the ``ScoreResponse`` fields the native batch encoder writes
_RESPONSE_FIELDS = ("transaction_id", "score", "decision", "threshold", "model_version", "warnings")


@functools.cache
def score_batch_encoder(batch_descriptor: Any) -> _native.ScoreBatchEncoder:
    """The native ``ScoreBatchResponse`` encoder, its field numbers and types taken from
    the generated descriptor (``pb.ScoreBatchResponse.DESCRIPTOR``): a renumbered field
    follows, a retyped one is refused, naming it."""

    def spec(desc: Any, name: str) -> tuple[int, int, bool]:
        f = desc.fields_by_name.get(name)
        if f is None:
            raise ValueError(f"{name}: not a field of {desc.full_name}")
        return f.number, f.type, bool(f.is_repeated)

    fields = {"responses": spec(batch_descriptor, "responses")}
    response = batch_descriptor.fields_by_name["responses"].message_type
    fields.update({name: spec(response, name) for name in _RESPONSE_FIELDS})
    return _native.ScoreBatchEncoder(fields)
