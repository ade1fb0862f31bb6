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

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from flows.sim_world import (  # noqa: F401 (SimulationConfig is part of this module's API)
    _CASHOUT_MCCS,
    _CATEGORIES,
    _COUNTRIES,
    _CURRENCIES,
    _HOMES,
    _ID_DIGITS,
    _MS_PER_HOUR,
    _NO_EVENTS,
    _PATTERN_SHARES,
    _TAKEOVER_MCCS,
    _TESTING_MCCS,
    FloatArray,
    IntArray,
    SimulationConfig,
    _build_world,
    _card_mean,
    _draw,
    _Events,
    _fit,
    _group_offsets,
    _incident_starts,
    _legit,
    _legit_amounts,
    _World,
)

__all__ = ["EVENT_SCHEMA", "SimulationConfig", "simulate", "write_events"]

EVENT_SCHEMA = pa.schema(
    [("transaction_id", pa.string()), ("card_id", pa.int64()), ("merchant_id", pa.int64()),
     ("amount", pa.float64()), ("currency", pa.string()), ("country", pa.string()),
     ("mcc", pa.int32()), ("event_time", pa.timestamp("ms", tz="UTC")), ("is_fraud", pa.bool_())]
)  # fmt: skip


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
