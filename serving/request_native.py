"""``ScoreBatch``'s request bytes -> validated events natively, without message objects.

Converting a typed ``ScoreBatchRequest`` in Python costs ~2.8 µs per event: upb builds a
``Transaction`` object per event, the strict parser walks them, and every field is read
back through a Python attribute (docs/perf-plan.md, "ScoreBatch, second round"). The
native reader (``native/src/proto.rs``) reads the wire format straight into the event
tuples the scorer takes, with the schema's own rules (the ones the stream's JSON fast path
checks). It also hands over the same values by schema field as Arrow buffers
(:class:`~serving.score_types.RequestEvents`): the prediction log wraps them instead of
converting each event's values again, and the scorer reads ids and times from them.

It only ever *accepts*: for anything it is not sure of (a generic ``Event``, a known
field sent with another wire type, bytes upb would refuse, a rule broken, a batch over the
limit) it returns None and the caller takes the Python path (:func:`serving.wire.strict_parser`
then :meth:`serving.convert.EventConverter.batch_events`), which names the field. So the
errors are the Python path's by construction, and the tests hold the accepted events equal
to it on random and malformed requests (tests/serving/test_request_native.py).

>>> from features.plan import compile_plan
>>> from features.reference import REFERENCE
>>> from serving._proto.skewless.v1 import scorer_pb2 as pb
>>> from serving.convert import event_transaction
>>> reader = BatchRequestReader.of(compile_plan(REFERENCE))
>>> tx = event_transaction({"transaction_id": "t1", "card_id": 7, "merchant_id": 3,
...     "amount": 12.5, "currency": "EUR", "country": "FR", "mcc": 5411,
...     "event_time": 1767258000123})
>>> events, include = reader.parse(pb.ScoreBatchRequest(transactions=[tx]).SerializeToString(), 10)
>>> events[0].card_id, events[0].event_time_ms, include
(7, 1767258000123, False)
>>> tx.amount = -1.0  # a broken rule: the Python path says which
>>> reader.parse(pb.ScoreBatchRequest(transactions=[tx]).SerializeToString(), 10) is None
True
"""

from __future__ import annotations

from functools import partial
from typing import Any

from google.protobuf.descriptor import FieldDescriptor

from features.native import _native_field, native
from features.plan import Plan
from features.schema import FieldType
from serving._proto.skewless.v1 import scorer_pb2 as pb
from serving.score_types import RequestEvents

_T = FieldDescriptor
#: protobuf type -> the native reader's name for it
_PROTO = {_T.TYPE_INT64: "int64", _T.TYPE_INT32: "int32", _T.TYPE_BOOL: "bool",
          _T.TYPE_DOUBLE: "double", _T.TYPE_STRING: "string"}  # fmt: skip
#: the protobuf types whose value the Python path hands to a schema field of each type
#: unchanged (any other pairing is left to the Python path)
_PAIRS = {FieldType.INT64: {"int64", "int32"}, FieldType.FLOAT64: {"double"},
          FieldType.STRING: {"string"}, FieldType.BOOL: {"bool"},
          FieldType.TIMESTAMP: {"timestamp"}}  # fmt: skip


def _proto_kind(fd: Any) -> str | None:
    if fd.message_type is not None:
        return "timestamp" if fd.message_type.full_name == "google.protobuf.Timestamp" else None
    return None if fd.is_repeated else _PROTO.get(fd.type)


class BatchRequestReader:
    """``parse(data, max_batch) -> (events, include_features) | None`` for one plan (and
    :meth:`parse_one` for a ``ScoreRequest``)."""

    def __init__(self, plan: Plan, parser: Any) -> None:
        self._parse = parser.parse
        self._parse_columns = getattr(parser, "parse_columns", None)
        self._parse_one = parser.parse_one
        self._record = partial(tuple.__new__, plan.schema.record)

    @classmethod
    def of(cls, plan: Plan) -> BatchRequestReader | None:
        """The reader for ``plan``'s schema, or None when the typed Transaction does not
        map onto it plainly (a required field it lacks, a field of another type, a rule
        the native side cannot say exactly): then every request takes the Python path."""
        schema = plan.schema
        typed = pb.Transaction.DESCRIPTOR.fields_by_name
        specs = []
        for f in schema.fields:
            spec, recheck = _native_field(f)
            if recheck or (f.required and f.name not in typed):
                return None
            if f.name in typed and _proto_kind(typed[f.name]) not in _PAIRS[f.type]:
                return None
            specs.append(spec)
        slots = []
        for fd in pb.Transaction.DESCRIPTOR.fields:
            kind = _proto_kind(fd)
            if kind is None:
                return None
            at = schema.position(fd.name) if fd.name in schema.names else None
            slots.append((fd.number, kind, bool(fd.has_presence), at))
        batch = pb.ScoreBatchRequest.DESCRIPTOR.fields_by_name
        numbers = tuple(batch[n].number for n in ("transactions", "include_features", "events"))
        one = pb.ScoreRequest.DESCRIPTOR.fields_by_name
        single = tuple(one[n].number for n in ("transaction", "include_features", "event"))
        kinds = [str(f.type) for f in schema.fields]
        try:  # the request's values as Arrow buffers too, for the prediction log
            parser = native.TransactionBatchParser(specs, slots, numbers, single, kinds)
        except TypeError:  # a core built before parse_columns: the log transposes
            parser = native.TransactionBatchParser(specs, slots, numbers, single)
        return cls(plan, parser)

    def parse(self, data: bytes, max_batch: int) -> tuple[RequestEvents, bool] | None:
        """``(events, include_features)``; the events carry their Arrow columns
        (:class:`~serving.score_types.RequestEvents`) when the core builds them."""
        if self._parse_columns is None:
            got = self._parse(data, max_batch)
            return None if got is None else (RequestEvents(map(self._record, got[0])), got[1])
        cols = self._parse_columns(data, max_batch)
        if cols is None:
            return None
        return RequestEvents(map(self._record, cols[0]), cols[2]), cols[1]

    def parse_one(self, data: bytes) -> tuple[Any, bool] | None:
        """``(event, include_features)`` of a ScoreRequest's bytes holding one typed
        Transaction, or None (the Python path decides, as for a batch)."""
        got = self._parse_one(data)
        if got is None:
            return None
        return self._record(got[0]), got[1]
