"""The reference fraud feature set (DESIGN.md), defined once.

>>> REFERENCE.feature_names[:3]
('card_txn_count_10m', 'card_txn_count_1h', 'card_txn_count_24h')
>>> len(REFERENCE.feature_names)
15
"""

from __future__ import annotations

from datetime import timedelta

from features.definitions import Aggregation, Entity, FeatureSet, Op, Window

CARD = Entity("card", "card_id")
MERCHANT = Entity("merchant", "merchant_id")

_M = timedelta(minutes=1)
_H = timedelta(hours=1)
_D = timedelta(days=1)

W10M = Window(10 * _M, _M)
W1H = Window(_H, 5 * _M)
W24H = Window(24 * _H, _H)
W7D = Window(7 * _D, _D)

#: the request-time features, computed by :func:`features.request.request_features`
REQUEST_FEATURES = ("amount", "amount_to_card_mean_7d", "hour_of_day_utc")

REFERENCE = FeatureSet(
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
    request_features=REQUEST_FEATURES,
)
