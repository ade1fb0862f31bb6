"""Type stubs of the native core (``native/src``), shipped with the wheel (maturin picks
up ``skewless_native.pyi`` beside ``Cargo.toml``). Use it through ``features.native``."""

from collections.abc import Buffer, Iterable, Sequence
from typing import Any, Protocol

#: the state bytes' layout version this build reads and writes
ENGINE_BYTES_VERSION: int
#: the window ops a layout spec may name (``features.definitions.Op`` values)
OPS: list[str]
#: the tile components a level may store, in serialized order (``features.layout.COMPONENTS``)
COMPONENTS: list[str]
#: what ``Core.update`` returns indexes this (``features.layout.Outcome`` values)
OUTCOMES: list[str]

class _GroupSpec(Protocol):
    @property
    def length_ms(self) -> int: ...
    @property
    def hop_ms(self) -> int: ...
    @property
    def level(self) -> int: ...
    @property
    def outputs(self) -> Sequence[tuple[int, str, int]]: ...
    @property
    def need_m2(self) -> bool: ...

class _CoreSpec(Protocol):
    """Read by attribute name (``features.native.CoreSpec``)."""

    @property
    def entity(self) -> str: ...
    @property
    def hops(self) -> Sequence[int]: ...
    @property
    def keep(self) -> Sequence[int]: ...
    @property
    def horizon_ms(self) -> int: ...
    @property
    def lateness_ms(self) -> int | None: ...
    @property
    def primary(self) -> bool: ...
    @property
    def n_fields(self) -> int: ...
    @property
    def n_names(self) -> int: ...
    @property
    def groups(self) -> Sequence[_GroupSpec]: ...
    @property
    def since_last(self) -> int | None: ...
    @property
    def needs(self) -> Sequence[Sequence[str]]: ...
    @property
    def crc(self) -> int: ...

class _FieldSpec(Protocol):
    """Read by attribute name (``features.native.NativeField``)."""

    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def required(self) -> bool: ...
    @property
    def int_range(self) -> tuple[int, int] | None: ...
    @property
    def float_range(self) -> tuple[float, bool, float, bool] | None: ...
    @property
    def min_length(self) -> int | None: ...
    @property
    def max_length(self) -> int | None: ...
    @property
    def pattern(
        self,
    ) -> Sequence[tuple[Sequence[tuple[int, int]], bool, int, int | None]] | None: ...
    @property
    def allowed_ints(self) -> Sequence[int] | None: ...
    @property
    def allowed_strs(self) -> Sequence[str] | None: ...

class State:
    """One entity's state (opaque; a few counters readable)."""

    @property
    def max_seen(self) -> int | None: ...
    @property
    def last_before_raw(self) -> int | None: ...
    @property
    def raw_ts(self) -> list[int]: ...
    @property
    def n_ids(self) -> int: ...
    @property
    def n_tiles(self) -> list[int]: ...
    @property
    def readonly(self) -> bool: ...
    @property
    def heap_bytes(self) -> int:
        """Bytes the state holds: its own size and every allocation it owns."""
    @property
    def n_big_tiles(self) -> int:
        """Tiles whose exact sums outgrew the inline integers."""

class StateHeader:
    """The header of a state's bytes."""

    @property
    def crc(self) -> int: ...
    @property
    def max_seen(self) -> int | None: ...
    @property
    def last_before_raw(self) -> int | None: ...
    @property
    def n_raw(self) -> int: ...
    @property
    def n_ids(self) -> int: ...
    @property
    def n_tiles(self) -> list[int]: ...

class Core:
    """One entity layout, compiled: update, finalize, encode and decode its states."""

    def __init__(self, spec: _CoreSpec, too_old: type[Exception]) -> None: ...
    @property
    def header_size(self) -> int: ...
    def header(self, data: bytes) -> StateHeader: ...
    def encode_headers(
        self,
        max_seen: Sequence[int | None],
        last_before_raw: Sequence[int | None],
        n_raw: Sequence[int],
        n_ids: Sequence[int],
        n_tiles: Sequence[Sequence[int]],
    ) -> bytes: ...
    def new_state(self) -> State: ...
    def update(
        self, state: State, ts: int, values: Sequence[float], txid: int | None = None
    ) -> int: ...
    def update_many(
        self,
        state: State,
        ts: Sequence[int],
        values: Sequence[float],
        txids: Sequence[int] | None = None,
    ) -> list[int]: ...
    def compact(self, state: State) -> None: ...
    def finalize(self, state: State, t: int) -> list[float | int]: ...
    def as_of_last(self, state: State) -> list[float | int]: ...
    def row(self, state: State) -> tuple[list[float | int], bytes]: ...
    def encode(self, state: State) -> bytes: ...
    def decode(self, data: bytes, readonly: bool = False) -> State: ...
    def features(self, data: bytes | None, t: int) -> list[float | int]: ...
    def features_many(self, datas: Sequence[bytes | None], ts: Sequence[int]) -> bytes: ...
    def snapshot(self, state: State) -> bytes: ...
    def restore(self, data: bytes) -> State: ...

class EventParser:
    """A schema's event fast path: ``parser(raw)`` -> the values, or None (not sure)."""

    def __init__(self, max_message_bytes: int, fields: Sequence[_FieldSpec]) -> None: ...
    @property
    def names(self) -> list[str]: ...
    def __call__(self, raw: bytes) -> tuple[object, ...] | None: ...
    def parse(self, raw: bytes) -> tuple[object, ...] | None: ...

class TransactionBatchParser:
    """Typed ``ScoreBatchRequest`` (``ScoreRequest``) bytes -> event tuples, or None (the
    Python path decides)."""

    def __init__(
        self,
        fields: Sequence[_FieldSpec],
        slots: Sequence[tuple[int, str, bool, int | None]],
        request: tuple[int, int, int],
        single: tuple[int, int, int],
        columns: Sequence[str] | None = None,
    ) -> None: ...
    def parse(
        self, data: bytes, max_batch: int
    ) -> tuple[list[tuple[object, ...]], bool] | None: ...
    def parse_columns(
        self, data: bytes, max_batch: int
    ) -> (
        tuple[
            list[tuple[object, ...]],
            bool,
            list[tuple[bytes, bytes | None, bytes | None]] | None,
        ]
        | None
    ): ...
    def parse_one(self, data: bytes) -> tuple[tuple[object, ...], bool] | None: ...

class TreeEnsemble:
    """XGBoost's JSON model evaluated natively, bit-identical to its ``predict``
    (``native/src/trees.rs``); ValueError names what it cannot evaluate."""

    def __init__(self, model: bytes, n_features: int) -> None: ...
    @property
    def n_trees(self) -> int: ...
    @property
    def n_nodes(self) -> int: ...
    @property
    def base_margin(self) -> float: ...
    def predict_into(self, x: Buffer, out: Buffer) -> None: ...
    def predict_into_f32(self, x: Buffer, out: Buffer) -> None: ...

class RowFinalizer:
    """One model plan's entities: their stored bytes finalized into its input row in one
    call (``serving.scorer``'s single-event path)."""

    def __init__(self, cores: Sequence[Core], columns: Sequence[Sequence[int]], n: int) -> None: ...
    def fill(
        self, datas: Sequence[bytes | None], t: int
    ) -> tuple[list[float], list[list[float]], list[int | None]]:
        """``(row, windows, newest)``; an entity's failure is a ValueError whose args are
        ``(entity index, the exception Core.features raises)``."""
    def fill_batch(
        self,
        scan: ReplyScan,
        buf: bytearray,
        idx: Sequence[bytes],
        ts: Sequence[int],
        want_newest: bool,
    ) -> tuple[bytearray, list[list[int]], list[list[int | None]] | None]:
        """``(X, missing, newest)`` of a batch from the replies ``scan`` found in ``buf``
        (``idx[j]``: each event's reply index for entity ``j``, u32 little-endian); an
        entity's first failure is a ValueError whose args are ``(entity index, event
        index, the exception Core.features_many raises)``."""

class ReplyScan:
    """The replies to ``n`` pipelined ``HGET``s, scanned in the receive buffer."""

    def __init__(self, n: int) -> None: ...
    def feed(self, buf: bytearray, got: int) -> bool: ...
    @property
    def done(self) -> bool: ...
    @property
    def odd(self) -> bool: ...
    @property
    def size(self) -> int: ...

class HsetEncoder:
    """Feast's Redis layout as ready-to-send RESP commands."""

    def __init__(
        self,
        key_head: bytes,
        key_tail: bytes,
        fields: Sequence[bytes],
        state_field: bytes,
        ts_field: bytes,
    ) -> None: ...
    def hget(self, entity_id: int, field: bytes) -> bytes: ...
    def hget_many(
        self, ids: Sequence[int], field: bytes, base: int
    ) -> tuple[bytes, int, bytes]: ...
    def command(
        self, entity_id: int, values: list[float | int | None], state: bytes, ts_ms: int
    ) -> bytes: ...

class HsetRows:
    """A batch of ``OnlineRow``s as one payload of ``HsetEncoder.command``'s bytes."""

    def __init__(
        self,
        key_head: bytes,
        key_tail: bytes,
        fields: Sequence[bytes],
        state_field: bytes,
        ts_field: bytes,
    ) -> None: ...
    def commands(
        self, rows: Iterable[tuple[int, int, Sequence[float | int | None], bytes]]
    ) -> bytes: ...

class ScoreBatchEncoder:
    """A serialized ``ScoreBatchResponse`` without features, tags from the descriptor."""

    def __init__(self, fields: dict[str, tuple[int, int, bool]]) -> None: ...
    def encode(
        self,
        results: Sequence[tuple[str, float, bool, Sequence[str]]],
        threshold: float,
        model_version: str,
    ) -> bytes: ...
    def encode_columns(
        self,
        transaction_ids: list[str],
        scores: Sequence[float],
        decisions: Sequence[bool],
        warnings: list[tuple[str, ...]],
        threshold: float,
        model_version: str,
    ) -> bytes:
        """:meth:`encode` from the batch's columns (lists of one length), read in place."""

_Row = tuple[int, int, Sequence[float | int | None], bytes]  # an OnlineRow

def hset_pipeline(
    batches: Iterable[tuple[HsetRows, Iterable[_Row]]], tail: bytes
) -> tuple[bytes, int]:
    """Each batch's ``HsetRows.commands``, then ``tail``, as one bytes; and the row count."""

def state_max_seen(data: bytes | None) -> int | None: ...
def unwrap_bytes_values(raws: list[bytes | None]) -> list[bytes | None]: ...
def txid_hash(transaction_id: str) -> int: ...
def decode_poll(
    parser: EventParser,
    values: list[bytes],
    keys: list[bytes | None],
    timestamps: list[int],
    now: int,
    id_at: int,
    record: type,
    ingested: type,
) -> tuple[list[Any], list[int]]:
    """One poll parsed natively: ``out[i]`` is ``ingested(record(*values), ts or now,
    txid_hash(values[id_at]), raw, key)``, or None for each index in ``unsure`` (the
    parser was not sure: the Python path decides)."""

def decode_route(
    parser: EventParser,
    values: list[bytes],
    keys: list[bytes | None],
    timestamps: list[int],
    now: int,
    id_at: int,
    record: type,
    ingested: type,
    key_pos: list[int],
    bits: int,
    check_at: int | None = None,
) -> tuple[list[Any], list[int], list[list[tuple[int, dict[int, list[Any]]]]] | None, list[int]]:
    """``decode_poll`` and the sharded layout's grouping in one call: ``(out, unsure,
    routed, mismatched)``; ``routed`` is ``route_shards(out, key_pos, bits, ingested)`` over
    the sure items (None when an id is not an int64 or a key neither bytes nor None),
    ``mismatched`` the sure items whose key is not ``str(event[check_at]).encode()``."""

class Block:
    """A poll's valid events as columns (made by ``decode_groups``; no Python API)."""

class Events:
    """One entity's events of one poll: a view of its :class:`Block`. Each item is made
    from the event's bytes when read: the ``Ingested`` tuple ``decode_route`` makes.
    Pickles as the list of them."""

    def __len__(self) -> int: ...
    def __getitem__(self, i: int) -> Any: ...
    def items(self) -> list[Any]: ...

def decode_groups(
    parser: EventParser,
    values: list[bytes],
    keys: list[bytes | None],
    timestamps: list[int],
    now: int,
    id_at: int,
    record: type,
    ingested: type,
    key_pos: list[int],
    bits: int,
    check_at: int | None = None,
) -> tuple[int, list[int], list[list[tuple[int, dict[int, Events]]]] | None, list[int], list[Any]]:
    """``decode_route`` keeping the valid events as one :class:`Block`: ``(valid, unsure,
    routed, mismatched, offenders)``, the groups' events :class:`Events` views, the key
    check's offenders (message indices) and their ``Ingested`` tuples. No item per valid
    event; ``routed`` None as ``decode_route``'s (and for a timestamp not an int64)."""

def txid_hashes(data: Buffer, starts: Buffer, ends: Buffer) -> bytes:
    """``txid_hash`` of ``data[starts[i]:ends[i]]`` (uint8; int64 bounds), as 8n bytes."""

def update_items(
    core: Core, state: State, items: list[Any], time_pos: int, value_pos: list[int]
) -> tuple[bytes, int, int]:
    """One entity's stream items ``(event, produced_ms, txid, ...)`` through ``update``,
    the GIL released: (one outcome byte per item, how many applied, newest produced_ms)."""

def update_rows(
    core: Core,
    states: list[State],
    batches: Sequence[Sequence[Any] | Events],
    time_pos: int,
    value_pos: list[int],
) -> list[tuple[bytes, int, int, list[float | int] | None, bytes | None]]:
    """A shard's entities in one call: ``update_items(core, states[j], batches[j], ...)``
    then, when any applied, ``core.row(states[j])``, for each ``j``, the GIL released:
    one ``(outcomes, applied, newest, row values, state bytes)`` per entity (the last two
    None when none applied)."""

def update_rows_upto(
    core: Core,
    states: list[State],
    batches: list[list[Any]],
    time_pos: int,
    value_pos: list[int],
    phase: int,
) -> tuple[int, int]:
    """``update_rows`` without its result, cut after ``phase`` (``bench/stream_engine.py``):
    1 the updates (then each touched state compacted as a row's encode compacts it), 2 also
    the row's values, 3 the whole row; the states evolve exactly as ``update_rows`` evolves
    them. Returns ``(events, entities that had a row)``."""

def route_shards(
    items: list[Any], key_pos: list[int], bits: int, ingested: type
) -> list[list[tuple[int, dict[int, list[Any]]]]] | None:
    """A poll's ``ingested`` items grouped per key position by shard (the top ``bits`` of a
    Fibonacci hash of the id) and id, first-touched order: ``ShardRouter``'s groups. None
    when an id is not an int64."""

def window_pass(
    comp: Buffer,
    g: Buffer,
    t: Buffer,
    hi: Buffer,
    stride: int,
    tmin: int,
    table: Buffer,
    width: int,
    columns: bool,
    windows: Sequence[tuple[int, int, Sequence[tuple[str, int, int]]]],
    fields: Sequence[tuple[Buffer, int, int, Sequence[Buffer], int, Sequence[Buffer]]],
) -> list[bytes]:
    """Every window ``(length, hop, outputs)`` at sorted queries in one pass, each output
    ``(op, field, slot)`` into ``table`` (rows of ``width`` float64 slots, or slot-major
    with ``columns``; a count's slot holds int64 bits), ``features.window_native``; per
    output, the std rows left to binary lifting as int64 triples (query, lo, hi)."""

def seconds_since_last(
    g: Buffer,
    t: Buffer,
    hi: Buffer,
    starts: Buffer,
    ts: Buffer,
    table: Buffer,
    width: int,
    columns: bool,
    slot: int,
    ms_per_second: float,
) -> None:
    """``seconds_since_last`` at sorted queries into slot ``slot`` of ``table``'s rows."""

def gather_columns(table: Buffer, width: int, inverse: Buffer | None, outs: list[Buffer]) -> None:
    """Column ``c`` of ``table`` into ``outs[c]``, row ``j`` from table row ``inverse[j]``."""

def lift_m2(x: Buffer, lo: Buffer, hi: Buffer) -> bytes:
    """``range_folds._lift(x, lo, hi)[1]`` (the same bits) as little-endian float64s."""

def interleave_items(pieces: list[tuple[Buffer, int, Buffer]], starts: Buffer, out: Buffer) -> None:
    """Entity ``g``'s items of every piece ``(bytes, item size, items per entity)``, in
    piece order, at ``out[starts[g]:starts[g + 1]]``."""

def tile_moments(x: Buffer, start: Buffer, stop: Buffer, sum_out: Buffer, m2_out: Buffer) -> None:
    """Each tile's correctly rounded (Σx, Σ(x-mean)²) over ``x[start[i]:stop[i]]``."""

def repeated_rows(data: Buffer, offsets: Buffer) -> bytes:
    """Sorted rows (little-endian int64s) whose string ``data[offsets[i]:offsets[i + 1]]``
    may repeat: every repeated one, plus rare hash collisions (``features.dedup``)."""

def late_rows(keys: Buffer, ts: Buffer, first: Buffer, lateness_ms: int) -> bytes:
    """Per row (0/1 bytes), in file order: a ``first`` row older than its key's newest
    earlier ``first`` row minus ``lateness_ms`` (``features.dedup``)."""

def index_order(
    ids: Buffer,
    ts: Buffer,
    groups: int,
    tmin: int,
    stride: int,
    order: Buffer,
    gid: Buffer,
    ts_out: Buffer,
    comp: Buffer,
    inverse: Buffer,
    by_time: Buffer | None,
) -> list[int]:
    """An entity's stable order by (dense id, time) and the sorted ids, times, combined
    keys and each event's position, into the int64 outputs (``by_time``: the stable order
    by time when ``ts`` is not sorted); each group's first position and ``n``
    (``features.backfill.EventIndex``)."""
