"""Seeded, realistic credit-card transactions with fraud labels.

The simulator exists so every other part (backfill, training, streaming, serving) can be
exercised on data whose fraud is *detectable by rolling-window features* but not
trivially separable: legit cards also make bursts, large purchases and trips abroad,
and legit merchants have promotions. Fraud comes from three patterns — card-testing
bursts, account-takeover spend spikes and compromised-merchant surges.

Everything is drawn from one ``numpy`` generator in a fixed order, so the same
:class:`SimulationConfig` gives the same table and (via :func:`write_events`) the same
Parquet bytes.

>>> table = simulate(SimulationConfig(events=2_000, cards=100, merchants=40, days=3.0))
>>> table.num_rows, table.column_names[:3]
(2000, ['transaction_id', 'card_id', 'merchant_id'])
>>> table.schema.field("event_time").type
TimestampType(timestamp[ms, tz=UTC])
>>> table.column("transaction_id")[0].as_py()
't000000000000'
"""

from __future__ import annotations

import math
import numbers
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

__all__ = ["EVENT_SCHEMA", "SimulationConfig", "simulate", "write_events"]

EVENT_SCHEMA = pa.schema(
    [("transaction_id", pa.string()), ("card_id", pa.int64()), ("merchant_id", pa.int64()),
     ("amount", pa.float64()), ("currency", pa.string()), ("country", pa.string()),
     ("mcc", pa.int32()), ("event_time", pa.timestamp("ms", tz="UTC")), ("is_fraud", pa.bool_())]
)  # fmt: skip

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


def _card_testing(rng: np.random.Generator, world: _World, budget: int) -> _Events:
    """5-30 tiny charges within minutes at 1-2 testing merchants, sometimes then a cash-out."""
    upper = budget // 5 + 1
    bursts = rng.integers(5, 31, upper)
    cashout = rng.random(upper) < 0.35
    sizes = _fit(bursts + cashout, budget)
    k = sizes.size
    if k == 0:
        return _NO_EVENTS
    bursts, cashout = bursts[:k], cashout[:k]
    group, offsets = _group_offsets(rng, sizes, mean_gap=12_000.0, min_gap=1_000.0)
    last = np.cumsum(sizes) - 1
    offsets[last[cashout]] += rng.integers(120_000, 1_800_000, int(cashout.sum()))
    start = _incident_starts(rng, world, offsets[last])
    cards = rng.choice(world.card_weight.size, k, replace=k > world.card_weight.size)
    testing = world.pool(_TESTING_MCCS)
    pair = testing[rng.integers(testing.size, size=(k, 2))]
    second = rng.random(k) < 0.4  # 40% of bursts alternate between two merchants
    pick = (rng.random(group.size) < 0.5) & second[group]
    merchant = np.where(pick, pair[group, 1], pair[group, 0])
    amount = np.round(rng.uniform(0.5, 4.99, group.size), 2)
    cash_rows = last[cashout]
    cash_pool = world.pool(_CASHOUT_MCCS)
    merchant[cash_rows] = cash_pool[rng.integers(cash_pool.size, size=cash_rows.size)]
    amount[cash_rows] = rng.uniform(300.0, 2_500.0, cash_rows.size)
    return _Events.of(cards[group], merchant, start[group] + offsets, amount, fraud=True)


def _takeover(rng: np.random.Generator, world: _World, budget: int) -> _Events:
    """After a takeover: 3-8 purchases at 5-20× the card's mean within hours, abroad."""
    sizes = _fit(rng.integers(3, 9, budget // 3 + 1), budget)
    k = sizes.size
    if k == 0:
        return _NO_EVENTS
    hours = rng.uniform(1.0, 6.0, k)
    group = np.repeat(np.arange(k), sizes)
    offsets = (rng.random(group.size) * hours[group] * _MS_PER_HOUR).astype(np.int64)
    start = _incident_starts(rng, world, (hours * _MS_PER_HOUR).astype(np.int64))
    cards = rng.choice(world.card_weight.size, k, replace=k > world.card_weight.size)
    pool = world.pool(_TAKEOVER_MCCS)
    merchant = np.empty(group.size, np.int64)
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    for i in range(k):  # merchants abroad relative to this card's home, when there are any
        foreign = pool[world.merchant_country[pool] != world.card_home[cards[i]]]
        choices = foreign if foreign.size else pool
        merchant[bounds[i] : bounds[i + 1]] = choices[rng.integers(choices.size, size=sizes[i])]
    amount = _card_mean(world, cards[group]) * rng.uniform(5.0, 20.0, group.size)
    return _Events.of(cards[group], merchant, start[group] + offsets, amount, fraud=True)


def _surges(
    rng: np.random.Generator, world: _World, n_legit: int, budget: int, fraud: bool
) -> tuple[_Events, _Events]:
    """A merchant suddenly gets ≥4× its usual hourly traffic for a few hours.

    Compromised merchants (``fraud=True``) see mostly stolen, distinct cards; promotions
    (``fraud=False``) are the legit look-alike with the cards' own spending.
    """
    hours_total = (world.end_ms - world.start_ms) / _MS_PER_HOUR
    order = np.argsort(world.merchant_pop, kind="stable")
    candidates = order[: max(1, int(order.size * 0.9))]  # not the giants: a surge must show
    upper = budget // 4 + 1
    merchants = candidates[rng.integers(candidates.size, size=upper)]
    hours = rng.uniform(2.0, 5.0, upper)
    rate = np.maximum(6.0, 4.0 * n_legit * world.merchant_pop[merchants] / hours_total)
    sizes = np.maximum(4, np.round(rate * rng.uniform(1.0, 1.6, upper) * hours)).astype(np.int64)
    bad_share = rng.uniform(0.7, 0.95, upper) if fraud else np.zeros(upper)
    n_bad = np.round(sizes * bad_share).astype(np.int64)
    k = _fit(n_bad if fraud else sizes, budget).size
    if k == 0:
        return _NO_EVENTS, _NO_EVENTS
    sizes, n_bad, hours, merchants = sizes[:k], n_bad[:k], hours[:k], merchants[:k]
    group = np.repeat(np.arange(k), sizes)
    start = _incident_starts(rng, world, (hours * _MS_PER_HOUR).astype(np.int64))
    time = start[group] + (rng.random(group.size) * hours[group] * _MS_PER_HOUR).astype(np.int64)
    rank = np.arange(group.size) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    bad = rank < n_bad[group]
    n_cards = world.card_weight.size
    stolen = rng.choice(n_cards, int(bad.sum()), replace=int(bad.sum()) > n_cards)
    typical = 35.0 * np.array([c[2] for c in _CATEGORIES])
    cat = world.merchant_cat[merchants[group[bad]]]
    amount = typical[cat] * rng.lognormal(0.4, 0.6, stolen.size)
    good = ~bad
    legit_cards = _draw(rng, world.card_weight, int(good.sum()))
    return (
        _Events.of(stolen, merchants[group[bad]], time[bad], amount, fraud=True),
        _Events.of(legit_cards, merchants[group[good]], time[good]),
    )


def _to_table(rng: np.random.Generator, world: _World, events: _Events) -> pa.Table:
    n = len(events)
    horizon = world.end_ms - world.start_ms  # incidents longer than the horizon wrap around
    time = world.start_ms + (events.time - world.start_ms) % horizon
    tiebreak = rng.permutation(n)  # ids follow sorted order; ties must not leak generation order
    order = np.lexsort((tiebreak, time))
    card, merchant = events.card[order], events.merchant[order]
    counter = pa.array(np.arange(n, dtype=np.int64)).cast(pa.string())
    ids = pc.binary_join_element_wise("t", pc.utf8_lpad(counter, _ID_DIGITS, "0"), "")
    amount = np.clip(np.round(events.amount[order], 2), 0.01, 10_000_000.0)
    currency_of_home = np.array([_CURRENCIES.index(h[1]) for h in _HOMES])
    mccs = np.array([c[0] for c in _CATEGORIES], dtype=np.int32)
    columns = [
        ids,
        pa.array(card, pa.int64()),
        pa.array(merchant, pa.int64()),
        pa.array(amount, pa.float64()),
        pa.array(_CURRENCIES).take(pa.array(currency_of_home[world.card_home[card]])),
        pa.array(_COUNTRIES).take(pa.array(world.merchant_country[merchant])),
        pa.array(mccs[world.merchant_cat[merchant]], pa.int32()),
        pa.array(time[order], pa.timestamp("ms", tz="UTC")),
        pa.array(events.fraud[order], pa.bool_()),
    ]
    return pa.Table.from_arrays(columns, schema=EVENT_SCHEMA)


def simulate(config: SimulationConfig, progress: bool = False) -> pa.Table:
    """Exactly ``config.events`` transactions sorted by ``event_time``, with ``is_fraud``."""
    rng = np.random.default_rng(config.seed)
    show = progress and config.events > 100_000
    with tqdm(total=6, desc="simulate", unit="step", file=sys.stderr, disable=not show) as bar:
        world = _build_world(config, rng)
        bar.update()
        budget = round(config.events * config.fraud_rate)
        ct_share, ato_share, _ = _PATTERN_SHARES
        testing = _card_testing(rng, world, round(budget * ct_share))
        takeover = _takeover(rng, world, round(budget * (ct_share + ato_share)) - len(testing))
        legit_est = config.events - budget
        surge_bad, surge_good = _surges(
            rng, world, legit_est, budget - len(testing) - len(takeover), fraud=True
        )
        bar.update()
        promo_budget = min(config.events // 50, len(surge_bad) + len(surge_good))
        promo = _surges(rng, world, legit_est, promo_budget, fraud=False)[1]
        planted = [testing, takeover, surge_bad, surge_good, promo]
        bar.update()
        # fraud_rate <= 0.5 keeps planted events under 75% of the total, so rest > 0
        rest = config.events - sum(len(p) for p in planted)
        events = _Events.concat([*planted, _legit(rng, world, rest)])
        bar.update()
        events = _legit_amounts(rng, world, events)
        bar.update()
        table = _to_table(rng, world, events)
        bar.update()
    return table


def write_events(table: pa.Table, path: str | Path) -> None:
    """Write events as Parquet with fixed options, so equal tables give equal bytes."""
    pq.write_table(
        table.replace_schema_metadata(None),
        str(path),
        compression="zstd",
        compression_level=3,
        row_group_size=1 << 20,
        data_page_size=1 << 20,
        use_dictionary=["currency", "country"],
        write_statistics=True,
        version="2.6",
        store_schema=True,
    )
