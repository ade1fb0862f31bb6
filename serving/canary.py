"""Canary routing: a second model decides for a fixed share of the primary entities.

The share is chosen by a hash of the primary entity's key (the definitions' plan: the card
id in the reference set), not at random: the same card is always decided by the same
model, so one customer never flips between two models' thresholds from one payment to the
next, and a canary's effect can be followed per card. The hash is splitmix64's finalizer
over the 64-bit key, fixed across processes and runs (Python's ``hash`` of a string is
not), so every ``serve --workers`` process routes a card the same way.

>>> c = Canary(0.25, key=lambda event: event)
>>> c.chooses(7)  # no canary model yet: nothing is routed
False
>>> share = sum(bucket(k) < c.cut for k in range(10_000)) / 10_000
>>> abs(share - 0.25) < 0.02
True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

_MASK = (1 << 64) - 1
#: buckets per unit of fraction (the share is exact to 1 / 2**32)
BUCKETS = 1 << 32


def bucket(key: int) -> int:
    """A fixed pseudo-random bucket in ``[0, 2**32)`` of an integer key (splitmix64)."""
    z = (key + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return (z ^ (z >> 31)) >> 32


class _Plan(Protocol):
    """What the canary needs of :class:`serving.scorer._Plan` (a model ready to score)."""

    model: Any
    names: tuple[str, ...]
    version: str
    threshold: float

    def order_from(self, names: tuple[str, ...]) -> list[int]: ...


P = TypeVar("P", bound=_Plan)


class Canary(Generic[P]):
    """Routes ``fraction`` of the keys (``key(event)``) to :attr:`plan` once one is
    installed; :attr:`plan` is swapped atomically by the alias watcher."""

    def __init__(self, fraction: float, key: Callable[[Any], int]) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"canary_fraction: must be in [0, 1], got {fraction}")
        self.fraction, self.key = fraction, key
        self.cut = round(fraction * BUCKETS)
        self.plan: P | None = None

    def install(self, plan: P) -> None:
        self.plan = plan

    @property
    def version(self) -> str | None:
        plan = self.plan
        return None if plan is None else plan.version

    def chooses(self, event: Any) -> bool:
        """True when the canary model decides ``event`` (always the same for one key)."""
        return self.plan is not None and bucket(self.key(event)) < self.cut

    def rescore(self, plan: P, X: np.ndarray, events: Sequence[Any], results: list[Any]) -> None:
        """Replace, in ``results``, the answers of the events the canary decides: the same
        feature rows (``X``, in ``plan``'s order) through the canary model."""
        canary = self.plan
        if canary is None:
            return
        cut, key = self.cut, self.key
        picked = [k for k, e in enumerate(events) if bucket(key(e)) < cut]
        if not picked:
            return
        Xc = X[np.ix_(picked, canary.order_from(plan.names))]
        scores = canary.model.predict(Xc).tolist()
        rows = Xc.tolist()
        threshold, version, names = canary.threshold, canary.version, canary.names
        for k, p, row in zip(picked, scores, rows, strict=True):
            results[k] = results[k]._replace(
                score=p, decision=p >= threshold, threshold=threshold, model_version=version,
                feature_names=names, features=row,
            )  # fmt: skip
