"""Protobuf <-> domain objects, for the servicer and the client alike.

Requests are validated by the *same* rules as stream events: the running definitions'
schema (:class:`features.validate.Validator`), so an event the API accepts is exactly one
the flow would accept. A request carries the typed ``Transaction`` (the reference schema;
its fields map by name onto the schema) or a generic ``Event`` (field name -> typed value).
The error message is prefixed with the field's path in the request, e.g.
``transactions[3].amount: ...``.

>>> from features.plan import compile_plan
>>> from features.reference import REFERENCE
>>> from serving._proto.skewless.v1 import scorer_pb2 as pb
>>> conv = EventConverter(compile_plan(REFERENCE))
>>> tx = pb.Transaction(transaction_id="t1", card_id=7, merchant_id=3, amount=12.5,
...                     currency="EUR", country="FR", mcc=5411)
>>> tx.event_time.CopyFrom(ms_timestamp(1767258000123))
>>> conv.transaction(tx).event_time_ms
1767258000123
>>> tx.ClearField("card_id"); conv.transaction(tx, "transactions[2]")
Traceback (most recent call last):
...
features.schema.InvalidEventError: transactions[2].card_id: missing
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from operator import itemgetter
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from features.plan import Plan
from features.schema import Field, FieldType, InvalidEventError
from features.validate import parse_time_ms
from serving._proto.skewless.v1 import scorer_pb2 as pb
from serving.score_types import ScoreResults
from serving.scorer import EntityStateInfo, InvalidRequestError, ScoreResult

_NANOS = 1_000_000_000
#: a result's fields the native batch encoder writes, read in C (a tuple per result)
_ENCODED = itemgetter(
    *map(ScoreResult._fields.index, ("transaction_id", "score", "decision", "warnings"))
)
#: the bounds of a request's query time (``GetFeatures.at``): those of any event time
_AT = Field("at", FieldType.TIMESTAMP)


def timestamp_ms(ts: Timestamp, where: str = "timestamp") -> int:
    """Epoch milliseconds of a Timestamp (sub-millisecond digits are dropped)."""
    if not 0 <= ts.nanos < _NANOS:
        raise InvalidEventError(f"{where}: nanos {ts.nanos} is outside 0..999999999")
    return ts.seconds * 1000 + ts.nanos // 1_000_000


def ms_timestamp(ms: int) -> Timestamp:
    seconds, rem = divmod(ms, 1000)
    return Timestamp(seconds=seconds, nanos=rem * 1_000_000)


def _typed_getter(fd: Any) -> Callable[[Any], Any]:
    """The value of a Transaction field as a JSON-like value (None when unset)."""
    name = fd.name
    if fd.message_type is not None and fd.message_type.full_name == "google.protobuf.Timestamp":
        return lambda m: timestamp_ms(getattr(m, name), name) if m.HasField(name) else None
    if fd.has_presence:
        return lambda m: getattr(m, name) if m.HasField(name) else None
    return lambda m: getattr(m, name)


def _value(v: pb.Value, name: str) -> Any:
    kind = v.WhichOneof("kind")
    if kind is None:
        return None
    if kind == "timestamp_value":
        return timestamp_ms(v.timestamp_value, name)
    return getattr(v, kind)


def _typed_fast(plan: Plan, typed: Mapping[str, Any]) -> Callable[[Any], Any]:
    """``fast(tx) -> event | None``: the Transaction's fields read in one generated function
    and handed to the schema's fast check (:mod:`features.fastcheck`); None sends the
    request through the rule-by-rule path, which names what is wrong. Per batch event this
    is most of the request's conversion: a field with presence asks ``HasField`` only when
    its value is the default (0 may be sent or missing), and a Timestamp is read once."""
    fields = plan.schema.fields
    if any(f.required and f.name not in typed for f in fields):
        return lambda tx: None
    exprs = []
    for i, f in enumerate(fields):
        fd = typed.get(f.name)
        if fd is None:
            exprs.append("None")
        elif fd.message_type is not None:  # a Timestamp: epoch ms when nanos are in range
            exprs.append(
                f"(ts{i}.seconds * 1000 + ts{i}.nanos // 1000000 if tx.HasField({f.name!r}) "
                f"and 0 <= (ts{i} := tx.{f.name}).nanos < 1000000000 else None)"
            )  # the submessage read once (each read builds a wrapper object)
        elif fd.has_presence:  # a value other than the default was sent: no HasField
            exprs.append(f"(v{i} if (v{i} := tx.{f.name}) or tx.HasField({f.name!r}) else None)")
        else:
            exprs.append(f"tx.{f.name}")
    env: dict[str, Any] = {"check": plan.validator.fast_check}
    exec(f"def fast(tx):\n    return check({', '.join(exprs)})", env)  # built from the schema
    fast: Callable[[Any], Any] = env["fast"]
    return fast


class EventConverter:
    """Request events -> validated event records, for one definitions' plan."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.validate = plan.validator.validate
        self.names = plan.schema.names
        typed = pb.Transaction.DESCRIPTOR.fields_by_name
        self._typed = tuple(
            (f.name, _typed_getter(typed[f.name])) for f in plan.schema.fields if f.name in typed
        )
        self._typed_fast = _typed_fast(plan, typed)
        lacking = [f.name for f in plan.schema.fields if f.required and f.name not in typed]
        self._typed_refusal = (
            f"the running definitions (project {plan.fs.project}) need fields the typed "
            f"Transaction lacks ({', '.join(lacking)}); send a generic `event`"
            if lacking
            else None
        )

    def _checked(self, obj: dict[str, Any], where: str) -> Any:
        try:
            return self.validate(obj)
        except InvalidEventError as exc:
            raise InvalidEventError(f"{where}.{exc}") from None

    def transaction(self, tx: pb.Transaction, where: str = "transaction") -> Any:
        """A validated event from the typed Transaction; errors name ``where.<field>``.
        A plainly valid one takes the generated fast path (:func:`_typed_fast`)."""
        event = self._typed_fast(tx)
        if event is not None:
            return event
        if self._typed_refusal is not None:
            raise InvalidEventError(f"{where}: {self._typed_refusal}")
        try:
            obj = {name: get(tx) for name, get in self._typed}
        except InvalidEventError as exc:
            raise InvalidEventError(f"{where}.{exc}") from None
        return self._checked(obj, where)

    def event(self, ev: pb.Event, where: str = "event") -> Any:
        """A validated event from a generic Event (keys the schema lacks are ignored, as in
        a stream message)."""
        try:
            obj = {k: _value(v, k) for k, v in ev.fields.items()}
        except InvalidEventError as exc:
            raise InvalidEventError(f"{where}.{exc}") from None
        return self._checked(obj, where)

    def request_event(self, req: pb.ScoreRequest, where: str = "") -> Any:
        """The event of a ScoreRequest (``where`` prefixes the path, e.g. for a stream)."""
        kind = req.WhichOneof("event_kind")
        if kind == "transaction":
            return self.transaction(req.transaction, f"{where}transaction")
        if kind == "event":
            return self.event(req.event, f"{where}event")
        raise InvalidEventError(f"{where}transaction: missing")

    def batch_events(self, req: pb.ScoreBatchRequest, max_batch: int) -> list[Any]:
        if len(req.transactions) and len(req.events):
            raise InvalidRequestError("events: send either transactions or events, not both")
        items = req.events if len(req.events) else req.transactions
        what = "events" if len(req.events) else "transactions"
        n = len(items)
        if n > max_batch:
            raise InvalidRequestError(f"{what}: {n} exceeds the maximum batch size {max_batch}")
        if what == "events":
            return [self.event(e, f"events[{i}]") for i, e in enumerate(items)]
        fast = self._typed_fast
        out = [fast(tx) for tx in items]  # the common, plainly valid batch in one pass
        for i, e in enumerate(out):
            if e is None:
                out[i] = self.transaction(items[i], f"transactions[{i}]")
        return out


def features_request(req: pb.GetFeaturesRequest) -> tuple[str, int, int]:
    """``(entity, entity_id, at_ms)`` of a GetFeaturesRequest, checked."""
    if not req.HasField("entity_id"):
        raise InvalidRequestError("entity_id: missing")
    if req.entity_id < 0:
        raise InvalidRequestError(f"entity_id: {req.entity_id} is negative")
    if not req.HasField("at"):
        raise InvalidRequestError("at: missing")
    try:
        at = parse_time_ms(_AT, timestamp_ms(req.at, "at"))
    except InvalidEventError as exc:
        raise InvalidRequestError(str(exc)) from None
    return req.entity, req.entity_id, at


def feature_protos(names: Sequence[str], values: Iterable[float]) -> list[pb.Feature]:
    out = []
    for name, v in zip(names, values, strict=True):
        f = float(v)
        out.append(pb.Feature(name=name, value=f, missing=math.isnan(f)))
    return out


def state_proto(info: EntityStateInfo) -> pb.EntityState:
    s = pb.EntityState(entity=info.entity, entity_id=info.entity_id, found=info.found)
    if info.age_ms is not None:
        s.age_ms = info.age_ms
    if info.newest_event_ms is not None:
        s.newest_event_time.CopyFrom(ms_timestamp(info.newest_event_ms))
    return s


def score_response(r: ScoreResult, include_features: bool) -> pb.ScoreResponse:
    resp = pb.ScoreResponse(
        transaction_id=r.transaction_id,
        score=r.score,
        decision=r.decision,
        threshold=r.threshold,
        model_version=r.model_version,
        warnings=r.warnings,
    )
    if include_features:
        resp.features.extend(feature_protos(r.feature_names, r.features))
        resp.entities.extend(state_proto(e) for e in r.entities)
    return resp


def batch_response(results: Sequence[ScoreResult], include_features: bool) -> pb.ScoreBatchResponse:
    """The ScoreBatchResponse of ``results`` (see :func:`batch_response_bytes`)."""
    return pb.ScoreBatchResponse.FromString(batch_response_bytes(results, include_features))


def batch_response_bytes(results: Sequence[ScoreResult], include_features: bool) -> bytes:
    """The serialized ScoreBatchResponse of ``results``; without features it is encoded
    natively in one pass (the same message as :func:`score_response` per result; a test
    holds it), and the server sends these bytes as they are."""
    columns = results.columns if type(results) is ScoreResults else None
    if columns is not None and results and not include_features:  # one model's results, by column
        from features.native import score_batch_encoder

        c = columns
        return score_batch_encoder(pb.ScoreBatchResponse.DESCRIPTOR).encode_columns(
            c["transaction_id"], c["score"], c["decision"], c["warnings"], c["threshold"][0],
            c["model_version"][0],
        )  # fmt: skip
    first = results[0] if results else None
    if (
        include_features
        or first is None
        or any(r.threshold != first.threshold or r.model_version != first.model_version
               for r in results)
    ):  # fmt: skip
        return pb.ScoreBatchResponse(
            responses=[score_response(r, include_features) for r in results]
        ).SerializeToString()
    from features.native import score_batch_encoder  # field numbers from the descriptor

    return score_batch_encoder(pb.ScoreBatchResponse.DESCRIPTOR).encode(
        list(map(_ENCODED, results)), first.threshold, first.model_version
    )


# -- client side ---------------------------------------------------------------------


def event_transaction(
    obj: Mapping[str, Any] | tuple[Any, ...], plan: Plan | None = None
) -> pb.Transaction:
    """A typed Transaction from an event record or a JSON-like dict (times as epoch ms or
    RFC 3339), validated first so the client fails before the network does. The typed
    Transaction is the reference schema's message, so its plan is the default."""
    if plan is None:
        from features.plan import compile_plan
        from features.reference import REFERENCE

        plan = compile_plan(REFERENCE)
    e = obj if isinstance(obj, tuple) else plan.validator.validate(dict(obj))
    tx = pb.Transaction()
    typed = pb.Transaction.DESCRIPTOR.fields_by_name
    for f, v in zip(plan.schema.fields, e, strict=True):
        if v is None or f.name not in typed:
            continue
        if f.type is FieldType.TIMESTAMP:
            getattr(tx, f.name).CopyFrom(ms_timestamp(v))
        else:
            setattr(tx, f.name, v)
    return tx


def event_message(obj: Mapping[str, Any] | tuple[Any, ...], plan: Plan) -> pb.Event:
    """A generic Event from an event record or a JSON-like dict, validated first."""
    e = obj if isinstance(obj, tuple) else plan.validator.validate(dict(obj))
    ev = pb.Event()
    for f, v in zip(plan.schema.fields, e, strict=True):
        if v is None:
            continue
        slot = ev.fields[f.name]
        if f.type is FieldType.TIMESTAMP:
            slot.timestamp_value.CopyFrom(ms_timestamp(v))
        elif f.type is FieldType.BOOL:
            slot.bool_value = v
        elif f.type is FieldType.INT64:
            slot.int_value = v
        elif f.type is FieldType.FLOAT64:
            slot.double_value = v
        else:
            slot.string_value = v
    return ev


def response_dict(resp: pb.ScoreResponse) -> dict[str, Any]:
    """A ScoreResponse as plain JSON-able data (NaN features become null)."""
    out: dict[str, Any] = {
        "transaction_id": resp.transaction_id,
        "score": resp.score,
        "decision": resp.decision,
        "threshold": resp.threshold,
        "model_version": resp.model_version,
    }
    if resp.features:
        out["features"] = {f.name: None if f.missing else f.value for f in resp.features}
    if resp.entities:
        out["entities"] = [
            {"entity": s.entity, "entity_id": s.entity_id, "found": s.found}
            | ({"age_ms": s.age_ms} if s.found else {})
            for s in resp.entities
        ]
    if resp.warnings:
        out["warnings"] = list(resp.warnings)
    return out
