"""Drift scenarios for the simulator, applied from day ``day`` of a simulated table.

- **amount shift**: every amount from day D on is multiplied by ``amount_factor``
  (prices, a currency move); the amount features drift, the counts do not;
- **new country**: merchants carrying ``new_country_share`` of the traffic move to a
  country training never saw (a market opening); the unseen-value share rises;
- **new fraud pattern**: ``new_fraud_share`` of the traffic from day D is a pattern the
  reference patterns do not cover: stolen cards used two or three times within half an
  hour at night (00-05 UTC), at ordinary merchants, for 2-4 times the card's usual
  amount. Its labels come through the chargeback delays like any fraud.

Seeded by ``(seed, 2)`` so the base simulation is unchanged; the same table, scenario
and seed give the same rows. Transaction ids are renumbered in time order afterwards,
as the simulator numbers them.

>>> from flows.simulate import SimulationConfig, simulate
>>> cfg = SimulationConfig(events=4_000, cards=200, merchants=40, days=4.0)
>>> base = simulate(cfg)
>>> shifted = apply_drift(base, cfg, DriftScenario(day=2.0, amount_factor=2.0))
>>> shifted.num_rows == base.num_rows, shifted.column("amount")[-1].as_py() > 0
(True, True)
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.schema import epoch_ms
from flows.sim_world import _ID_DIGITS, _MS_PER_DAY, _MS_PER_HOUR, SimulationConfig

_MS = pa.timestamp("ms", tz="UTC")


@dataclass(frozen=True)
class DriftScenario:
    day: float
    amount_factor: float = 1.0
    new_country: str | None = None
    new_country_share: float = 0.1
    new_fraud_share: float = 0.0

    def __post_init__(self) -> None:
        for name in ("day", "amount_factor", "new_country_share", "new_fraud_share"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
                raise ValueError(f"{name}: must be a finite number, got {v!r}")
        if self.day < 0:
            raise ValueError(f"day: must be >= 0, got {self.day}")
        if self.amount_factor <= 0:
            raise ValueError(f"amount_factor: must be > 0, got {self.amount_factor}")
        if self.new_country is not None and not re.fullmatch("[A-Z]{2}", self.new_country):
            raise ValueError(f"new_country: {self.new_country!r} is not 2 upper-case letters")
        for name in ("new_country_share", "new_fraud_share"):
            if not 0.0 <= getattr(self, name) <= 0.5:
                raise ValueError(f"{name}: must be in [0, 0.5], got {getattr(self, name)}")

    @property
    def active(self) -> bool:
        return bool(
            self.amount_factor != 1.0 or self.new_country is not None or self.new_fraud_share
        )


def apply_drift(table: pa.Table, cfg: SimulationConfig, s: DriftScenario) -> pa.Table:
    """``table`` (from :func:`flows.simulate.simulate` with ``cfg``) with ``s`` applied."""
    rng = np.random.default_rng([cfg.seed, 2])
    t = pc.cast(pc.cast(table.column("event_time"), _MS), pa.int64()).to_numpy()
    since = epoch_ms(cfg.start) + int(s.day * _MS_PER_DAY)
    after = t >= since
    cols = {n: table.column(n).combine_chunks() for n in table.column_names}
    if s.amount_factor != 1.0:
        amount = cols["amount"].to_numpy(zero_copy_only=False).copy()
        amount[after] = np.clip(np.round(amount[after] * s.amount_factor, 2), 0.01, 10_000_000.0)
        cols["amount"] = pa.array(amount)
    if s.new_country is not None:
        merchant = cols["merchant_id"].to_numpy(zero_copy_only=False)
        moved = _merchants_with_share(rng, merchant[after], s.new_country_share)
        where = after & np.isin(merchant, moved)
        cols["country"] = pc.if_else(pa.array(where), s.new_country, cols["country"])
    out = pa.table(cols, schema=table.schema)
    if s.new_fraud_share > 0:
        out = _with_new_pattern(rng, out, t, after, s.new_fraud_share)
    return out


def _merchants_with_share(
    rng: np.random.Generator, merchant: np.ndarray, share: float
) -> np.ndarray:
    """Random merchants whose events add up to about ``share`` of ``merchant``."""
    ids, counts = np.unique(merchant, return_counts=True)
    order = rng.permutation(len(ids))
    cum = np.cumsum(counts[order]) / max(len(merchant), 1)
    return ids[order[: int(np.searchsorted(cum, share)) + 1]] if len(ids) else ids


def _with_new_pattern(
    rng: np.random.Generator, table: pa.Table, t: np.ndarray, after: np.ndarray, share: float
) -> pa.Table:
    budget = round(int(after.sum()) * share)
    if budget == 0:
        return table
    card = table.column("card_id").to_numpy()
    amount = table.column("amount").to_numpy()
    cards, inverse = np.unique(card, return_inverse=True)
    mean = np.bincount(inverse, amount) / np.bincount(inverse)
    sizes = rng.integers(2, 4, budget // 2 + 1)
    sizes = sizes[: int(np.searchsorted(np.cumsum(sizes), budget, "right"))]
    k = len(sizes)
    group = np.repeat(np.arange(k), sizes)
    days = (t[after].max() - t[after].min()) // _MS_PER_DAY + 1
    day0 = t[after].min() // _MS_PER_DAY * _MS_PER_DAY
    start = (
        day0 + rng.integers(0, days, k) * _MS_PER_DAY
        + (rng.random(k) * 5 * _MS_PER_HOUR).astype(np.int64)
    )  # fmt: skip
    start = np.maximum(start, t[after].min())
    offsets = (rng.random(group.size) * 30 * 60_000).astype(np.int64)
    who = rng.integers(0, len(cards), k)
    rows = rng.choice(np.flatnonzero(~table.column("is_fraud").to_numpy(zero_copy_only=False)), k)
    new_amount = np.round(mean[who][group] * rng.uniform(2.0, 4.0, group.size), 2)
    src = table.take(pa.array(rows[group]))  # an ordinary merchant's event as the template
    new = {n: src.column(n) for n in table.column_names}
    new["card_id"] = pa.array(cards[who][group], pa.int64())
    new["amount"] = pa.array(np.clip(new_amount, 0.01, 10_000_000.0))
    when = np.minimum(start[group] + offsets, t.max())
    new["event_time"] = pa.array(when, pa.int64()).cast(_MS)
    new["is_fraud"] = pa.array(np.ones(group.size, bool))
    both = pa.concat_tables([table, pa.table(new, schema=table.schema)])
    times = pc.cast(both.column("event_time"), pa.int64()).to_numpy()
    order = np.lexsort((np.arange(both.num_rows), times))
    both = both.take(pa.array(order))
    counter = pa.array(np.arange(both.num_rows, dtype=np.int64)).cast(pa.string())
    ids = pc.binary_join_element_wise("t", pc.utf8_lpad(counter, _ID_DIGITS, "0"), "")
    return both.set_column(0, "transaction_id", ids)
