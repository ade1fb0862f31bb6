"""The simulator's world: cards with spending profiles, merchants with categories, and the
legit traffic between them (bursts, big purchases and trips abroad included), drawn from
one numpy generator in a fixed order. The fraud patterns are drawn on top of it by
:mod:`flows.simulate`."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

# Card home countries (code, billing currency, share of cards).
_HOMES = (
    ("US", "USD", 0.50), ("GB", "GBP", 0.14), ("DE", "EUR", 0.08), ("FR", "EUR", 0.07),
    ("ES", "EUR", 0.05), ("IT", "EUR", 0.05), ("NL", "EUR", 0.03), ("IE", "EUR", 0.02),
    ("CA", "CAD", 0.04), ("AU", "AUD", 0.02),
)  # fmt: skip
# Countries that only host merchants: travel, cross-border e-commerce, cash-out spots.
_FOREIGN_ONLY = ("MX", "BR", "CN", "TR", "TH", "AE", "NG", "RO", "IN")
_FOREIGN_MERCHANT_SHARE = 0.12
_COUNTRIES = tuple(h[0] for h in _HOMES) + _FOREIGN_ONLY
_CURRENCIES = ("USD", "GBP", "EUR", "CAD", "AUD")

# Merchant categories: (MCC, share of merchants, amount multiplier vs the card's typical).
_CATEGORIES = (
    (5411, 0.17, 1.3), (5812, 0.15, 1.0), (5814, 0.10, 0.3), (5541, 0.08, 1.1),
    (5912, 0.05, 0.7), (5651, 0.06, 1.6), (5311, 0.04, 1.8), (5999, 0.06, 0.9),
    (4121, 0.05, 0.6), (5734, 0.03, 0.8), (4816, 0.03, 1.0), (5967, 0.02, 0.8),
    (5732, 0.04, 3.5), (5944, 0.02, 4.0), (7995, 0.02, 1.5), (6051, 0.01, 2.5),
    (4511, 0.015, 8.0), (7011, 0.025, 5.0),
)  # fmt: skip
_TESTING_MCCS = (5999, 5734, 4816)  # cheap, card-not-present: where stolen cards get tested
_CASHOUT_MCCS = (5732, 5944, 6051)  # resellable goods / quasi-cash after a successful test
_TAKEOVER_MCCS = (5732, 5944)
_BIG_TICKET_MCCS = (5732, 5944, 4511, 7011)  # where legit cards make their rare big purchases

# Relative activity by UTC hour (night trough, lunch and evening peaks) and by weekday.
_HOURLY = np.array(
    [0.25, 0.15, 0.10, 0.08, 0.08, 0.12, 0.30, 0.55, 0.80, 0.95, 1.05, 1.20,
     1.40, 1.35, 1.15, 1.05, 1.10, 1.25, 1.40, 1.45, 1.30, 1.00, 0.70, 0.45]
)  # fmt: skip
_WEEKLY = np.array([0.92, 0.95, 0.97, 1.00, 1.12, 1.18, 0.86])  # Monday .. Sunday

_MS_PER_HOUR = 3_600_000
_MS_PER_DAY = 86_400_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_PATTERN_SHARES = (0.40, 0.25, 0.35)  # card testing, takeover, merchant surge
_ID_DIGITS = 12


@dataclass(frozen=True)
class SimulationConfig:
    """What to simulate; validated on construction so a bad flag fails before any work."""

    events: int = 200_000
    cards: int = 5_000
    merchants: int = 500
    days: float = 30.0
    seed: int = 7
    start: datetime = datetime(2026, 1, 1, tzinfo=UTC)
    fraud_rate: float = 0.01  # target fraction of fraudulent events

    def __post_init__(self) -> None:
        for name in ("events", "cards", "merchants", "seed", "days", "fraud_rate"):
            value = getattr(self, name)
            kind = numbers.Real if name in ("days", "fraud_rate") else numbers.Integral
            if isinstance(value, bool) or not isinstance(value, kind):
                raise ValueError(f"{name} must be a {kind.__name__.lower()} number, got {value!r}")
        offset = self.start.utcoffset() if isinstance(self.start, datetime) else None
        for name, ok, rule in (
            ("events", 1 <= self.events < 10**_ID_DIGITS, f"in 1..{10**_ID_DIGITS - 1}"),
            ("cards", self.cards >= 1, ">= 1"),
            ("merchants", self.merchants >= 1, ">= 1"),
            ("seed", self.seed >= 0, ">= 0"),
            ("days", math.isfinite(self.days) and 1 / 1440 <= self.days <= 3660, "1 min..10 y"),
            ("fraud_rate", 0.0 <= self.fraud_rate <= 0.5, "within [0, 0.5]"),
            ("start", offset == timedelta(0), "a timezone-aware UTC datetime"),
        ):
            if not ok:
                raise ValueError(f"{name} must be {rule}, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class _World:
    """Static actors: cards with spending profiles, merchants with categories."""

    start_ms: int
    end_ms: int
    card_home: IntArray  # index into _HOMES
    card_weight: FloatArray  # activity share, heavy-tailed
    card_mu: FloatArray  # log of typical amount
    card_sigma: FloatArray
    card_pref: IntArray  # (cards, slots) preferred merchants
    card_loyalty: FloatArray  # share of spend at preferred merchants
    merchant_country: IntArray  # index into _COUNTRIES
    merchant_cat: IntArray  # index into _CATEGORIES
    merchant_pop: FloatArray  # popularity share, heavy-tailed

    def pool(self, mccs: tuple[int, ...]) -> IntArray:
        """Merchants in the given categories (all merchants if there are none)."""
        mcc = np.array([c[0] for c in _CATEGORIES])[self.merchant_cat]
        found = np.flatnonzero(np.isin(mcc, mccs))
        return found if found.size else np.arange(self.merchant_cat.size)


@dataclass(frozen=True)
class _Events:
    card: IntArray
    merchant: IntArray
    time: IntArray  # epoch ms
    amount: FloatArray  # NaN = draw from the card's legit profile later
    fraud: npt.NDArray[np.bool_]

    @staticmethod
    def of(
        card: IntArray,
        merchant: IntArray,
        time: IntArray,
        amount: FloatArray | None = None,
        fraud: bool = False,
    ) -> _Events:
        n = card.size
        amt = np.full(n, np.nan) if amount is None else amount
        return _Events(card, merchant, time, amt, np.full(n, fraud))

    @staticmethod
    def concat(parts: list[_Events]) -> _Events:
        return _Events(*(np.concatenate([getattr(p, f) for p in parts]) for f in _EVENT_FIELDS))

    def __len__(self) -> int:
        return int(self.card.size)


_EVENT_FIELDS = ("card", "merchant", "time", "amount", "fraud")
_NO_EVENTS = _Events.of(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))


def _draw(rng: np.random.Generator, weights: FloatArray, size: int | tuple[int, ...]) -> IntArray:
    """Weighted draw with replacement by inverse CDF (fast for many categories)."""
    cdf = np.cumsum(weights)
    idx = np.searchsorted(cdf, rng.random(size) * cdf[-1], side="right")
    return np.minimum(idx, weights.size - 1).astype(np.int64)


def _group_offsets(
    rng: np.random.Generator, sizes: IntArray, mean_gap: float, min_gap: float
) -> tuple[IntArray, IntArray]:
    """Per-event group id and cumulative exponential gaps (ms) restarting in each group."""
    group = np.repeat(np.arange(sizes.size), sizes)
    gaps = min_gap + rng.exponential(mean_gap, group.size)
    total = np.cumsum(gaps)
    before = np.concatenate([[0.0], total])[np.cumsum(sizes) - sizes]  # sum of earlier groups
    return group, (total - before[group]).astype(np.int64)


def _fit(sizes: IntArray, budget: int) -> IntArray:
    """The leading incidents whose sizes fit in ``budget`` events."""
    return sizes[: int(np.searchsorted(np.cumsum(sizes), budget, side="right"))]


def _incident_starts(rng: np.random.Generator, world: _World, spans: IntArray) -> IntArray:
    """Uniform incident start times such that the whole incident stays in the horizon."""
    room = np.maximum(world.end_ms - world.start_ms - spans, 1)
    return world.start_ms + (rng.random(spans.size) * room).astype(np.int64)


def _build_world(cfg: SimulationConfig, rng: np.random.Generator) -> _World:
    home_w = np.array([h[2] for h in _HOMES])
    card_home = _draw(rng, home_w, cfg.cards)
    foreign_w = np.full(len(_FOREIGN_ONLY), _FOREIGN_MERCHANT_SHARE / len(_FOREIGN_ONLY))
    country_w = np.concatenate([home_w * (1 - _FOREIGN_MERCHANT_SHARE), foreign_w])
    merchant_country = _draw(rng, country_w, cfg.merchants)
    merchant_cat = _draw(rng, np.array([c[1] for c in _CATEGORIES]), cfg.merchants)
    mccs = [c[0] for c in _CATEGORIES]
    for mcc in (*_TESTING_MCCS, *_CASHOUT_MCCS):  # every fraud pattern needs its merchants
        if not np.any(merchant_cat == mccs.index(mcc)):
            merchant_cat[rng.integers(cfg.merchants)] = mccs.index(mcc)
    merchant_pop = rng.lognormal(0.0, 1.3, cfg.merchants)
    merchant_pop /= merchant_pop.sum()

    slots = 6
    card_pref = np.empty((cfg.cards, slots), np.int64)
    for home in range(len(_HOMES)):  # preferred merchants are domestic when possible
        cards = np.flatnonzero(card_home == home)
        pool = np.flatnonzero(merchant_country == home)
        pool = pool if pool.size else np.arange(cfg.merchants)
        card_pref[cards] = pool[_draw(rng, merchant_pop[pool], (cards.size, slots))]
    activity = rng.lognormal(0.0, 1.2, cfg.cards)
    return _World(
        start_ms=(cfg.start - _EPOCH) // timedelta(milliseconds=1),
        end_ms=(cfg.start - _EPOCH) // timedelta(milliseconds=1) + round(cfg.days * _MS_PER_DAY),
        card_home=card_home,
        card_weight=activity / activity.sum(),
        card_mu=rng.normal(math.log(35.0), 0.45, cfg.cards),
        card_sigma=rng.uniform(0.35, 0.85, cfg.cards),
        card_pref=card_pref,
        card_loyalty=rng.uniform(0.55, 0.9, cfg.cards),
        merchant_country=merchant_country,
        merchant_cat=merchant_cat,
        merchant_pop=merchant_pop,
    )


def _card_mean(world: _World, cards: IntArray) -> FloatArray:
    mu, sigma = world.card_mu[cards], world.card_sigma[cards]
    return np.asarray(np.exp(mu + sigma**2 / 2))


def _legit_times(rng: np.random.Generator, world: _World, n: int) -> IntArray:
    """Times following the diurnal and weekly rhythm, via a per-minute intensity."""
    minute = 60_000
    edges = np.arange(world.start_ms, world.end_ms, minute, dtype=np.int64)
    hour = (edges // _MS_PER_HOUR) % 24
    weekday = (edges // _MS_PER_DAY + 3) % 7  # 1970-01-01 was a Thursday
    widths = np.minimum(edges + minute, world.end_ms) - edges
    bins = _draw(rng, _HOURLY[hour] * _WEEKLY[weekday] * widths, n)
    return edges[bins] + (rng.random(n) * widths[bins]).astype(np.int64)


def _legit_merchants(rng: np.random.Generator, world: _World, cards: IntArray) -> IntArray:
    """Mostly the card's preferred merchants, else a popular (mostly domestic) one."""
    n = cards.size
    slot_w = np.array([0.32, 0.22, 0.16, 0.12, 0.10, 0.08])
    merchants = world.card_pref[cards, _draw(rng, slot_w, n)]
    explore = rng.random(n) >= world.card_loyalty[cards]
    abroad = explore & (rng.random(n) < 0.2)
    merchants[abroad] = _draw(rng, world.merchant_pop, int(abroad.sum()))
    for home in range(len(_HOMES)):
        rows = np.flatnonzero(explore & ~abroad & (world.card_home[cards] == home))
        pool = np.flatnonzero(world.merchant_country == home)
        pool = pool if pool.size else np.arange(world.merchant_pop.size)
        merchants[rows] = pool[_draw(rng, world.merchant_pop[pool], rows.size)]
    return merchants


def _legit(rng: np.random.Generator, world: _World, n: int) -> _Events:
    """Everyday spending: independent events plus short shopping sessions (legit bursts)."""
    n_follow = n // 10
    cards = _draw(rng, world.card_weight, n - n_follow)
    base = _Events.of(
        cards, _legit_merchants(rng, world, cards), _legit_times(rng, world, cards.size)
    )
    if n_follow == 0 or len(base) == 0:
        return base
    sizes = _fit(rng.geometric(0.4, n_follow).astype(np.int64), n_follow)
    sizes = np.append(sizes, n_follow - sizes.sum())
    group, offsets = _group_offsets(rng, sizes, mean_gap=150_000.0, min_gap=15_000.0)
    parent = rng.integers(len(base), size=sizes.size)[group]
    after, before = base.time[parent] + offsets, base.time[parent] - offsets
    time = np.where(after < world.end_ms, after, np.maximum(before, world.start_ms))
    card = base.card[parent]
    same_shop = rng.random(group.size) < 0.4
    merchant = np.where(same_shop, base.merchant[parent], _legit_merchants(rng, world, card))
    return _Events.concat([base, _Events.of(card, merchant, time)])


def _legit_amounts(rng: np.random.Generator, world: _World, events: _Events) -> _Events:
    """Card profile × category; a few big-ticket purchases (often abroad) overlap takeovers."""
    todo = np.flatnonzero(np.isnan(events.amount))
    card, merchant = events.card[todo], events.merchant[todo].copy()
    big = rng.random(todo.size) < 0.004
    big_pool = world.pool(_BIG_TICKET_MCCS)
    merchant[big] = big_pool[rng.integers(big_pool.size, size=int(big.sum()))]
    mult = np.array([c[2] for c in _CATEGORIES])[world.merchant_cat[merchant]]
    z = rng.standard_normal(todo.size)
    amount = mult * np.exp(world.card_mu[card] + world.card_sigma[card] * z)
    amount[big] = _card_mean(world, card[big]) * rng.uniform(5.0, 20.0, int(big.sum()))
    amounts, merchants = events.amount.copy(), events.merchant.copy()
    amounts[todo], merchants[todo] = amount, merchant
    return _Events(events.card, merchants, events.time, amounts, events.fraud)
