"""The native window pass and tile fold give the numpy pass's and the engine's bytes.

The numpy pass (:meth:`features.backfill.EventIndex._evaluate`) and the Python tile fold
(:mod:`features.moments`) stay as the references: the same random histories go through
both, and every output column must be bit for bit the same."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest

import features.backfill as backfill
from features import moments
from features.backfill import EventIndex
from features.definitions import MS_PER_DAY, Aggregation, Entity, FeatureSet, Op, Window
from features.native import native
from features.range_folds import _lift
from features.reference import REFERENCE
from features.window_native import evaluate

CARD = Entity("card", "card_id")
EVERY_OP = FeatureSet(
    schema=REFERENCE.schema,
    entities=(CARD,),
    primary=CARD,
    aggregations=(
        *(
            Aggregation(CARD, op, Window(timedelta(hours=1), timedelta(minutes=5)), "amount")
            for op in (Op.SUM, Op.MEAN, Op.STD, Op.MAX, Op.MIN)
        ),
        Aggregation(CARD, Op.COUNT, Window(timedelta(minutes=10), timedelta(minutes=1))),
        Aggregation(CARD, Op.STD, Window(timedelta(days=2), timedelta(hours=1)), "amount"),
        Aggregation(CARD, Op.MAX, Window(timedelta(days=2), timedelta(hours=1)), "mcc"),
        Aggregation(CARD, Op.SINCE_LAST),
    ),
)


def _history(seed: int, kind: str) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Keys, times (ties and hop edges on purpose) and values of one adversarial kind."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 3_000))
    keys = rng.integers(0, int(rng.integers(1, 40)), n)
    ts = rng.integers(0, 5 * MS_PER_DAY, n) // 60_000 * rng.choice([1, 60_000], n)
    amount = np.round(rng.exponential(80.0, n), 2)
    if kind == "constant":  # moments cancel: std by binary lifting
        amount = np.where(rng.random(n) < 0.8, 1e6 + 0.01, amount)
    elif kind == "wide":  # several digits
        amount = amount * 10.0 ** rng.integers(-8, 9, n)
    elif kind == "negative":  # no exact digits: the numpy pass (None)
        amount = amount - 50.0
    elif kind == "signed_zero":  # max/min order would show: the numpy pass (None)
        amount[::3] = -0.0
    return keys, ts, {"amount": amount, "mcc": rng.integers(0, 9999, n).astype(np.float64)}


def _both(monkeypatch: pytest.MonkeyPatch, build: object) -> tuple[dict, dict]:
    native_out = build()  # type: ignore[operator]
    with monkeypatch.context() as m:
        m.setattr(backfill, "evaluate", lambda *a: None)
        numpy_out = build()  # type: ignore[operator]
    return native_out, numpy_out


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert list(a) == list(b)
    for name in b:
        assert a[name].dtype == b[name].dtype, name
        assert a[name].tobytes() == b[name].tobytes(), name


@pytest.mark.parametrize("kind", ["plain", "constant", "wide", "negative", "signed_zero"])
@pytest.mark.parametrize("seed", range(4))
def test_native_pass_is_the_numpy_pass(
    monkeypatch: pytest.MonkeyPatch, seed: int, kind: str
) -> None:
    keys, ts, fields = _history(seed, kind)
    rng = np.random.default_rng(100 + seed)
    q_keys = np.r_[keys[: len(keys) // 2], rng.integers(-1, 60, 200)]  # some without events
    q_t = np.r_[ts[: len(ts) // 2], rng.integers(-MS_PER_DAY, 6 * MS_PER_DAY, 200)]

    def run() -> tuple[dict, ...]:
        index = EventIndex(keys, ts, fields)
        events = index.features(EVERY_OP, "card", keys, ts)
        after = index.features_after_events(EVERY_OP, "card")[3]
        return events, after, index.features(EVERY_OP, "card", q_keys, q_t)

    for a, b in zip(*_both(monkeypatch, run), strict=True):
        _same(a, b)
    index = EventIndex(keys, ts, fields)
    ran = evaluate(index, EVERY_OP, "card", index.gid, index.ts, np.zeros(len(ts), np.int64), None)
    assert (ran is None) == (kind in ("negative", "signed_zero"))


def test_after_event_pass_fills_the_spine_pass_table() -> None:
    """The after-event pass writes into the spine pass's finished table (no fresh ~140 MB
    per 2M events), giving a fresh index's bytes; a later pass never overwrites them."""
    keys, ts, fields = _history(3, "plain")
    fresh = EventIndex(keys, ts, fields).features_after_events(EVERY_OP, "card")[3]
    index = EventIndex(keys, ts, fields)
    index.features(EVERY_OP, "card", keys, ts)
    spare = index.spare
    assert spare is not None
    after = index.features_after_events(EVERY_OP, "card")[3]
    assert index.spare is None and all(np.shares_memory(v, spare) for v in after.values())
    _same(after, fresh)
    index.features(EVERY_OP, "card", keys, ts)
    index.features(EVERY_OP, "card", keys[::-1], ts[::-1])
    _same(after, fresh)


def test_tile_moments_are_the_engines_tiles() -> None:
    rng = np.random.default_rng(3)
    x = np.concatenate(
        [rng.exponential(50.0, 500).round(2), [1e150, 1e-150, 5e-324, 3.0, 3.0, 0.0, -2.5]]
    )
    start = np.sort(rng.integers(0, len(x), 300))
    stop = np.minimum(start + rng.integers(1, 40, 300), len(x))
    start[-3:], stop[-3:] = [len(x) - 7, len(x) - 4, 0], [len(x) - 4, len(x), len(x)]
    total, m2 = np.empty(len(start)), np.empty(len(start))
    native.tile_moments(x, start, stop, total, m2)
    for i, (a, b) in enumerate(zip(start.tolist(), stop.tolist(), strict=True)):
        tile = moments.empty()
        for v in x[a:b].tolist():
            moments.add(tile, v)
        assert (total[i], m2[i]) == moments.summary(tile), i


def test_native_lift_is_the_numpy_lift() -> None:
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.exponential(50.0, 3000).round(2), np.full(3000, 1e6 + 0.01)])
    rng.shuffle(x)
    lo = rng.integers(0, len(x), 500)
    hi = np.minimum(lo + rng.integers(0, 2500, 500), len(x))
    got = np.frombuffer(native.lift_m2(x, lo, hi), "<f8")
    assert got.tobytes() == _lift(x, lo, hi)[1].tobytes()
