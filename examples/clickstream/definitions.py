"""A click-stream domain: users click items, dwell on them, and sometimes buy.

A second, different domain beside the reference fraud set, written the way a user writes
their own definitions module: one event schema, two entities (the user keys the Kafka
message; the item is aggregated on its own events), count and dwell-time windows, and one
request-time feature. Select it for every command with
``skewless --definitions examples/clickstream/definitions.py ...``.

>>> DEFINITIONS.project
'clickstream'
>>> DEFINITIONS.feature_names[:3]
('user_click_count_10m', 'user_click_count_1h', 'user_click_count_24h')
>>> len(DEFINITIONS.feature_names)
15
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import numpy as np

from features.definitions import Aggregation, Entity, FeatureSet, Op, Window
from features.request import RequestFeature
from features.schema import EventSchema, Field, FieldType

#: where a click can come from
DEVICES = ("web", "ios", "android")

SCHEMA = EventSchema(
    fields=(
        Field("click_id", FieldType.STRING, min_length=1, max_length=64),
        Field("user_id", FieldType.INT64, min=0),
        Field("item_id", FieldType.INT64, min=0),
        Field("dwell_s", FieldType.FLOAT64, min=0, min_exclusive=True, max=3600),
        Field("position", FieldType.INT64, min=0, max=100),
        Field("device", FieldType.STRING, allowed=DEVICES),
        Field("ts", FieldType.TIMESTAMP),
        Field("purchased", FieldType.BOOL, required=False),
    ),
    event_id="click_id",
    event_time="ts",
)

USER = Entity("user", "user_id")
ITEM = Entity("item", "item_id")

_M = timedelta(minutes=1)
_H = timedelta(hours=1)
_D = timedelta(days=1)

W10M = Window(10 * _M, _M)
W1H = Window(_H, 5 * _M)
W24H = Window(24 * _H, _H)
W7D = Window(7 * _D, _D)


def _dwell_ratio(dwell: Any, mean: Any) -> Any:
    """This click's dwell over the user's 7-day mean dwell (NaN with no history); numpy
    arrays in the backfill, numpy scalars for one event."""
    return dwell / mean


REQUEST = (
    RequestFeature("dwell_to_user_mean_7d", ("dwell_s", "user_dwell_mean_7d"), _dwell_ratio),
    RequestFeature("click_position", ("position",), np.float64),
)

DEFINITIONS = FeatureSet(
    schema=SCHEMA,
    entities=(USER, ITEM),
    primary=USER,
    aggregations=(
        Aggregation(USER, Op.COUNT, W10M, alias="user_click_count_10m"),
        Aggregation(USER, Op.COUNT, W1H, alias="user_click_count_1h"),
        Aggregation(USER, Op.COUNT, W24H, alias="user_click_count_24h"),
        Aggregation(USER, Op.SUM, W1H, "dwell_s", alias="user_dwell_sum_1h"),
        Aggregation(USER, Op.SUM, W24H, "dwell_s", alias="user_dwell_sum_24h"),
        Aggregation(USER, Op.MEAN, W24H, "dwell_s", alias="user_dwell_mean_24h"),
        Aggregation(USER, Op.MAX, W24H, "dwell_s", alias="user_dwell_max_24h"),
        Aggregation(USER, Op.MEAN, W7D, "dwell_s", alias="user_dwell_mean_7d"),
        Aggregation(USER, Op.SINCE_LAST, alias="user_seconds_since_last"),
        Aggregation(ITEM, Op.COUNT, W1H, alias="item_click_count_1h"),
        Aggregation(ITEM, Op.COUNT, W24H, alias="item_click_count_24h"),
        Aggregation(ITEM, Op.MEAN, W24H, "dwell_s", alias="item_dwell_mean_24h"),
        Aggregation(ITEM, Op.MIN, W7D, "position", alias="item_position_min_7d"),
    ),
    request=REQUEST,
    project="clickstream",
    label="purchased",
)
