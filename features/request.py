"""Request-time features: computed from the scored event itself.

One function serves both paths: it works on Python scalars (serving) and on numpy
arrays (backfill), so the two cannot drift.

>>> request_features(120.0, 1_767_229_200_000, 60.0)
(120.0, 2.0, 1)
>>> import math; math.isnan(request_features(5.0, 0, float("nan"))[1])
True
>>> request_features(5.0, 0, 0.0)[1]   # a zero mean divides like numpy, it does not raise
inf
"""

from __future__ import annotations

from typing import Any

import numpy as np

from features.definitions import MS_PER_DAY, MS_PER_HOUR

#: the window feature the request-time ratio divides by (both paths read it from here)
CARD_MEAN_FEATURE = "card_amount_mean_7d"


def request_features(amount: Any, event_time_ms: Any, card_mean_7d: Any) -> tuple[Any, Any, Any]:
    """``(amount, amount / card_amount_mean_7d, hour_of_day_utc)``; the ratio is NaN
    when the mean is missing."""
    hour = (event_time_ms % MS_PER_DAY) // MS_PER_HOUR
    if type(amount) is float and type(card_mean_7d) is float:  # serving: one event
        try:
            return amount, amount / card_mean_7d, int(hour)  # IEEE division, as numpy's
        except ZeroDivisionError:
            pass
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.divide(amount, card_mean_7d)
    if np.ndim(ratio) == 0:
        return float(amount), float(ratio), int(hour)
    return np.asarray(amount, dtype=np.float64), ratio, np.asarray(hour, dtype=np.int64)
