"""Protobuf <-> domain objects, for the servicer and the client alike.

Requests are validated by the *same* function as stream events
(:func:`features.events.validate_event`), so a transaction the API accepts is exactly one
the flow would accept. The error message is prefixed with the field's path in the
request, e.g. ``transactions[3].amount: ...``.

>>> from serving._proto.skewless.v1 import scorer_pb2 as pb
>>> tx = pb.Transaction(transaction_id="t1", card_id=7, merchant_id=3, amount=12.5,
...                     currency="EUR", country="FR", mcc=5411)
>>> tx.event_time.CopyFrom(ms_timestamp(1767258000123))
>>> transaction_to_event(tx).event_time_ms
1767258000123
>>> tx.ClearField("card_id"); transaction_to_event(tx, "transactions[2]")
Traceback (most recent call last):
...
features.events.InvalidEventError: transactions[2].card_id: missing
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from features.events import (
    MAX_AMOUNT,
    MAX_TIME_MS,
    MIN_TIME_MS,
    Event,
    InvalidEventError,
    event_time_ms,
    validate_event,
)
from features.native import native
from serving._proto.skewless.v1 import scorer_pb2 as pb
from serving.scorer import EntityStateInfo, InvalidRequestError, ScoreResult


def timestamp_ms(ts: Timestamp) -> int:
    """Epoch milliseconds of a Timestamp (sub-millisecond digits are dropped)."""
    return ts.seconds * 1000 + ts.nanos // 1_000_000


def ms_timestamp(ms: int) -> Timestamp:
    seconds, rem = divmod(ms, 1000)
    return Timestamp(seconds=seconds, nanos=rem * 1_000_000)


def transaction_to_event(tx: pb.Transaction, where: str = "transaction") -> Event:
    """A validated :class:`Event`; :class:`InvalidEventError` names ``where.<field>``.

    A transaction that plainly passes every rule is built directly (the hot path); any
    other goes through :func:`~features.events.validate_event`, which decides and names
    the field (a test holds the two equal)."""
    if (
        tx.HasField("card_id")
        and tx.HasField("merchant_id")
        and tx.HasField("amount")
        and tx.HasField("mcc")
        and tx.HasField("event_time")
    ):
        txid, cur, ctry, amount, mcc = tx.transaction_id, tx.currency, tx.country, tx.amount, tx.mcc
        ts = tx.event_time
        ms = ts.seconds * 1000 + ts.nanos // 1_000_000
        card, merchant = tx.card_id, tx.merchant_id
        if (
            0 < len(txid) <= 64
            and card >= 0
            and merchant >= 0
            and 0.0 < amount <= MAX_AMOUNT
            and 0 <= mcc <= 9999
            and MIN_TIME_MS <= ms < MAX_TIME_MS
            and len(cur) == 3
            and len(ctry) == 2
            and cur.isascii()
            and cur.isalpha()
            and cur.isupper()
            and ctry.isascii()
            and ctry.isalpha()
            and ctry.isupper()
        ):
            return Event(txid, card, merchant, amount, cur, ctry, mcc, ms)
    return _validated(tx, where)


def _validated(tx: pb.Transaction, where: str) -> Event:
    obj: dict[str, object] = {
        "transaction_id": tx.transaction_id,
        "card_id": tx.card_id if tx.HasField("card_id") else None,
        "merchant_id": tx.merchant_id if tx.HasField("merchant_id") else None,
        "amount": tx.amount if tx.HasField("amount") else None,
        "currency": tx.currency,
        "country": tx.country,
        "mcc": tx.mcc if tx.HasField("mcc") else None,
        "event_time": timestamp_ms(tx.event_time) if tx.HasField("event_time") else None,
    }
    try:
        return validate_event(obj)
    except InvalidEventError as exc:
        raise InvalidEventError(f"{where}.{exc}") from None


def request_event(req: pb.ScoreRequest, where: str = "") -> Event:
    """The event of a ScoreRequest (``where`` prefixes the path, e.g. for a stream)."""
    if not req.HasField("transaction"):
        raise InvalidEventError(f"{where}transaction: missing")
    return transaction_to_event(req.transaction, f"{where}transaction")


def batch_events(req: pb.ScoreBatchRequest, max_batch: int) -> list[Event]:
    n = len(req.transactions)
    if n > max_batch:
        raise InvalidRequestError(f"transactions: {n} exceeds the maximum batch size {max_batch}")
    return [transaction_to_event(tx, f"transactions[{i}]") for i, tx in enumerate(req.transactions)]


def features_request(req: pb.GetFeaturesRequest) -> tuple[str, int, int]:
    """``(entity, entity_id, at_ms)`` of a GetFeaturesRequest, checked."""
    if not req.HasField("entity_id"):
        raise InvalidRequestError("entity_id: missing")
    if req.entity_id < 0:
        raise InvalidRequestError(f"entity_id: {req.entity_id} is negative")
    if not req.HasField("at"):
        raise InvalidRequestError("at: missing")
    try:
        at = event_time_ms(timestamp_ms(req.at))
    except InvalidEventError as exc:
        raise InvalidRequestError(f"at{str(exc).removeprefix('event_time')}") from None
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
    """The ScoreBatchResponse of ``results``; without features it is encoded natively in
    one pass (the same message as :func:`score_response` per result; a test holds it)."""
    first = results[0] if results else None
    if (
        include_features
        or first is None
        or any(r.threshold != first.threshold or r.model_version != first.model_version
               for r in results)
    ):  # fmt: skip
        return pb.ScoreBatchResponse(
            responses=[score_response(r, include_features) for r in results]
        )
    from features.native import score_batch_encoder  # field numbers from the descriptor

    raw = score_batch_encoder(pb.ScoreBatchResponse.DESCRIPTOR).encode(
        [(r.transaction_id, r.score, r.decision, list(r.warnings)) for r in results],
        first.threshold,
        first.model_version,
    )
    return pb.ScoreBatchResponse.FromString(raw)


# -- client side ---------------------------------------------------------------------


def event_transaction(obj: Mapping[str, Any] | Event) -> pb.Transaction:
    """A Transaction from an :class:`Event` or a JSON-like dict (event_time as epoch ms or
    RFC 3339), validated first so the client fails before the network does."""
    e = obj if isinstance(obj, Event) else validate_event(dict(obj))
    return pb.Transaction(
        transaction_id=e.transaction_id,
        card_id=e.card_id,
        merchant_id=e.merchant_id,
        amount=e.amount,
        currency=e.currency,
        country=e.country,
        mcc=e.mcc,
        event_time=ms_timestamp(e.event_time_ms),
    )


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
