"""Request-time features: named functions of the scored event and of its finalized window
features, declared with their inputs.

The same function runs online and offline, always on numpy values: arrays in the backfill
and in batches, numpy scalars for one event, under the same floating-point error state
(IEEE results, no exceptions), so the two paths cannot drift.

>>> ratio = RequestFeature("ratio", ("amount", "card_amount_mean_7d"), lambda a, m: a / m)
>>> ratio.inputs
('amount', 'card_amount_mean_7d')
>>> RequestFeature("Bad", ("amount",), abs)
Traceback (most recent call last):
...
ValueError: name: 'Bad' is not a lower_snake identifier
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class RequestFeature:
    """``name = fn(*inputs)``: each input names an event field or a window feature.

    ``fn`` receives numpy values (int64 for required integers and times in epoch ms,
    float64 for numbers and window features, Python strings / object arrays for strings)
    and must work element-wise on arrays as on scalars: numpy operators and ufuncs do.
    """

    name: str
    inputs: tuple[str, ...]
    fn: Callable[..., Any]
    description: str = ""

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"name: {self.name!r} is not a lower_snake identifier")
        object.__setattr__(self, "inputs", tuple(self.inputs))
        if not self.inputs:
            raise ValueError(f"inputs: {self.name} needs at least one input")
        if not callable(self.fn):
            raise ValueError(f"fn: {self.name}'s function is not callable")

    def spec(self) -> dict[str, Any]:
        fn = self.fn
        where = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
        return {"name": self.name, "inputs": list(self.inputs), "fn": where}
