"""The reference fraud definitions (DESIGN.md): the event schema, the card and merchant
features and the request-time features, declared once. It is the default definitions
module; a user's own is selected by ``--definitions`` / ``SKEWLESS_DEFINITIONS``.

>>> REFERENCE.feature_names[:3]
('card_txn_count_10m', 'card_txn_count_1h', 'card_txn_count_24h')
>>> len(REFERENCE.feature_names)
15
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from features.definitions import (
    MS_PER_DAY,
    MS_PER_HOUR,
    Aggregation,
    Entity,
    FeatureSet,
    Op,
    Window,
)
from features.request import RequestFeature
from features.schema import EventSchema, Field, FieldType

SCHEMA = EventSchema(
    fields=(
        Field("transaction_id", FieldType.STRING, min_length=1, max_length=64),
        Field("card_id", FieldType.INT64, min=0),
        Field("merchant_id", FieldType.INT64, min=0),
        Field("amount", FieldType.FLOAT64, min=0, min_exclusive=True, max=10_000_000),
        Field("currency", FieldType.STRING, pattern="[A-Z]{3}", hint="3 upper-case letters"),
        Field("country", FieldType.STRING, pattern="[A-Z]{2}", hint="2 upper-case letters"),
        Field("mcc", FieldType.INT64, min=0, max=9999),
        Field("event_time", FieldType.TIMESTAMP),
        Field("is_fraud", FieldType.BOOL, required=False),
    ),
    event_id="transaction_id",
    event_time="event_time",
)
#: a valid transaction of the reference schema (a named tuple, schema order)
Event = SCHEMA.record

CARD = Entity("card", "card_id")
MERCHANT = Entity("merchant", "merchant_id")

_M = timedelta(minutes=1)
_H = timedelta(hours=1)
_D = timedelta(days=1)

W10M = Window(10 * _M, _M)
W1H = Window(_H, 5 * _M)
W24H = Window(24 * _H, _H)
W7D = Window(7 * _D, _D)


def _identity(x: Any) -> Any:
    return x


def _ratio(amount: Any, mean: Any) -> Any:
    return amount / mean  # NaN when the mean is missing; IEEE inf for a zero mean


def _hour_of_day(t_ms: Any) -> Any:
    return (t_ms % MS_PER_DAY) // MS_PER_HOUR


REQUEST = (
    RequestFeature("amount", ("amount",), _identity),
    RequestFeature("amount_to_card_mean_7d", ("amount", "card_amount_mean_7d"), _ratio),
    RequestFeature("hour_of_day_utc", ("event_time",), _hour_of_day),
)
#: the request-time features' names
REQUEST_FEATURES = tuple(rf.name for rf in REQUEST)

REFERENCE = FeatureSet(
    schema=SCHEMA,
    entities=(CARD, MERCHANT),
    primary=CARD,
    aggregations=(
        Aggregation(CARD, Op.COUNT, W10M),
        Aggregation(CARD, Op.COUNT, W1H),
        Aggregation(CARD, Op.COUNT, W24H),
        Aggregation(CARD, Op.SUM, W1H, "amount"),
        Aggregation(CARD, Op.SUM, W24H, "amount"),
        Aggregation(CARD, Op.MAX, W24H, "amount"),
        Aggregation(CARD, Op.MEAN, W7D, "amount"),
        Aggregation(CARD, Op.STD, W7D, "amount"),
        Aggregation(CARD, Op.SINCE_LAST),
        Aggregation(MERCHANT, Op.COUNT, W1H),
        Aggregation(MERCHANT, Op.COUNT, W24H),
        Aggregation(MERCHANT, Op.MEAN, W7D, "amount"),
    ),
    request=REQUEST,
    project="skewless",
    label="is_fraud",
)
#: what ``--definitions`` loads from a definitions module
DEFINITIONS = REFERENCE
