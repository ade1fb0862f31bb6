"""The scorer without any server: exact request-time features (R1, R2), one store round
trip, warnings, refusals. The store here is a dict holding real engine state bytes."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from features.reference import REFERENCE, Event
from features.reference_engine import QueryTooOldError
from features.store import OnlineRow
from flows.backfill import BackfillReport, compute_features, load_events
from flows.registry import RegistryError, resolve
from serving.model import LoadedModel, load_model
from serving.scorer import (
    BatchItemError,
    CorruptStateError,
    InvalidRequestError,
    NotReadyError,
    PredictionSink,
    Scorer,
    ScoreResult,
)
from serving.testing import fold_states, publish_synthetic_model, write_states
from tests.serving.conftest import HISTORY, HOUR, MIN, NOW, T0, ev

NAMES = REFERENCE.feature_names


class MemoryStore:
    """The OnlineStore protocol over a dict; counts round trips."""

    def __init__(self) -> None:
        self.data: dict[tuple[str, int], bytes] = {}
        self.round_trips = 0

    def write(self, entity: str, rows: Sequence[OnlineRow]) -> None:
        for r in rows:
            self.data[(entity, r.entity_id)] = r.state

    def read_states(
        self, keys: Sequence[tuple[str, int]], bootstrap: bool = False
    ) -> list[bytes | None]:
        assert not bootstrap  # serving reads the current state, never the bootstrap one
        self.round_trips += 1
        return [self.data.get(k) for k in keys]

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def model(model_registry: Path) -> LoadedModel:
    return load_model(resolve(model_registry, "production"), REFERENCE.fingerprint())


def make_scorer(
    model: LoadedModel, events: Sequence[Event] = HISTORY, sink: PredictionSink | None = None
) -> tuple[Scorer, MemoryStore]:
    store = MemoryStore()
    write_states(store, fold_states(events, REFERENCE), REFERENCE)
    scorer = Scorer(REFERENCE, store, sink=sink)
    scorer.install(model)
    return scorer, store


def vec(r: ScoreResult) -> dict[str, float]:
    return dict(zip(r.feature_names, r.features, strict=True))


def test_exact_values_at_request_time(model: LoadedModel) -> None:
    scorer, store = make_scorer(model)
    r = scorer.score(ev("q1", 1, 10, 50.0, NOW))
    assert store.round_trips == 1  # card + merchant in one read
    v = vec(r)
    amounts = [10.0 + i for i in range(8)]  # card 1: 10h00..10h07; now = 10h12
    assert v["card_txn_count_10m"] == 6  # window [10h02, 10h12)
    assert v["card_txn_count_1h"] == 8
    assert v["card_txn_count_24h"] == 8
    assert v["card_amount_sum_1h"] == sum(amounts)
    assert v["card_amount_max_24h"] == 17.0
    assert v["card_amount_mean_7d"] == 13.5
    assert v["card_amount_std_7d"] == pytest.approx(math.sqrt(5.25), rel=1e-12)
    assert v["card_seconds_since_last"] == 300.0
    assert v["merchant_txn_count_1h"] == 8  # card 2's merchant-10 events were at 7h
    assert v["merchant_txn_count_24h"] == 11
    assert v["merchant_amount_mean_7d"] == pytest.approx((108.0 + 600.0) / 11, rel=1e-12)
    assert v["amount"] == 50.0
    assert v["amount_to_card_mean_7d"] == 50.0 / 13.5
    assert v["hour_of_day_utc"] == 10
    assert r.warnings == ()
    assert [(e.entity, e.entity_id, e.found, e.age_ms) for e in r.entities] == [
        ("card", 1, True, 5 * MIN),
        ("merchant", 10, True, 5 * MIN),
    ]
    ref = float(model.predict_reference(np.array([r.features]))[0])
    assert r.score == ref  # the native predictor: XGBoost's own float32, exactly
    assert r.decision is (r.score >= model.threshold)
    assert r.model_version == model.version == "v0001"
    assert r.feature_names == NAMES


def test_r2_card_idle_for_three_hours_has_empty_short_windows(model: LoadedModel) -> None:
    scorer, _ = make_scorer(model)
    v = vec(scorer.score(ev("q2", 2, 10, 20.0, NOW)))
    # card 2's last event was at 7h02; now is 10h12
    assert v["card_txn_count_10m"] == 0
    assert v["card_txn_count_1h"] == 0
    assert v["card_amount_sum_1h"] == 0.0
    assert v["card_txn_count_24h"] == 3
    assert v["card_amount_sum_24h"] == 600.0
    assert v["card_amount_mean_7d"] == 200.0
    assert v["card_amount_std_7d"] == pytest.approx(math.sqrt(20000 / 3), rel=1e-12)
    assert v["card_seconds_since_last"] == 3 * 3600 + 600


def test_r1_already_ingested_event_does_not_count_itself(model: LoadedModel) -> None:
    scored = ev("q3", 1, 10, 999.0, NOW)
    before, _ = make_scorer(model)
    after, _ = make_scorer(model, [*HISTORY, scored, ev("later", 1, 10, 5.0, NOW + MIN)])
    a, b = before.score(scored), after.score(scored)
    assert a.features == b.features
    assert a.score == b.score
    assert vec(b)["card_txn_count_10m"] == 6
    assert b.entities[0].age_ms == -MIN  # the state holds a newer event; it is excluded


def test_r1_equals_backfill(model: LoadedModel) -> None:
    """Scoring each event against the state after all events equals the backfill's
    point-in-time value for that event (events at or after t excluded)."""
    events = [
        ev(f"e{i}", 1 + i % 3, 20 + i % 2, 1.0 + (i * 7.3) % 50, T0 + i * 97_000) for i in range(60)
    ]
    scorer, _ = make_scorer(model, events)
    horizon = T0 + 59 * 97_000 - HOUR  # exact answers need t >= newest - exact_horizon
    spine = [e for e in events if e.event_time_ms >= horizon]
    table = pa.Table.from_pylist([
        {"transaction_id": e.transaction_id, "card_id": e.card_id, "merchant_id": e.merchant_id,
         "amount": e.amount, "currency": e.currency, "country": e.country, "mcc": e.mcc,
         "event_time": e.event_time_ms}
        for e in events
    ])  # fmt: skip
    _, accepted, _, _ = load_events(REFERENCE, table, BackfillReport())
    spine_table = pa.table({
        "card_id": [e.card_id for e in spine], "merchant_id": [e.merchant_id for e in spine],
        "event_time": pa.array([e.event_time_ms for e in spine], pa.int64()),
        "amount": [e.amount for e in spine],
    })  # fmt: skip
    expected = compute_features(REFERENCE, spine_table, accepted)
    results = scorer.score_batch(spine)
    assert len(results) == len(spine) > 20
    for j, name in enumerate(NAMES):
        want = np.asarray(expected.column(name).to_numpy(zero_copy_only=False), np.float64)
        got = np.array([r.features[j] for r in results])
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=name)
        np.testing.assert_allclose(got, want, rtol=1e-9, equal_nan=True, err_msg=name)


def test_unknown_card_is_scored_with_empty_windows_and_a_warning(model: LoadedModel) -> None:
    scorer, _ = make_scorer(model)
    r = scorer.score(ev("q4", 404, 10, 25.0, NOW))
    v = vec(r)
    assert v["card_txn_count_24h"] == 0 and v["card_amount_sum_24h"] == 0.0
    assert math.isnan(v["card_amount_mean_7d"]) and math.isnan(v["card_seconds_since_last"])
    assert math.isnan(v["amount_to_card_mean_7d"])
    assert v["merchant_txn_count_24h"] == 11
    assert r.warnings == (
        "card_id 404: no card state in the online store; scored with empty-window values",
    )
    assert (r.entities[0].found, r.entities[0].age_ms) == (False, None)


def test_batch_equals_singles_with_one_round_trip(model: LoadedModel) -> None:
    scorer, store = make_scorer(model)
    events = [ev(f"b{i}", 1 + i % 3, 10 + i % 2, 5.0 + i, NOW + i * 1000) for i in range(9)]
    batch = scorer.score_batch(events)
    assert store.round_trips == 1
    singles = [scorer.score(e) for e in events]
    assert [(r.features, r.score) for r in batch] == [(r.features, r.score) for r in singles]


def test_columnar_batch_equals_singles(model: LoadedModel) -> None:
    """Large batches take the column-at-a-time path; every field equals scoring alone."""
    scorer, store = make_scorer(model)
    events = [
        ev(f"c{i}", [1, 2, 3, 404][i % 4], 10 + i % 3, 5.0 + i, NOW + i * 997) for i in range(40)
    ]
    batch = scorer.score_batch(events)
    assert store.round_trips == 1
    for got, want in zip(batch, (scorer.score(e) for e in events), strict=True):
        assert [repr(x) for x in got.features] == [repr(x) for x in want.features]
        assert (got.transaction_id, got.score, got.decision, got.entities, got.warnings) == (
            want.transaction_id, want.score, want.decision, want.entities, want.warnings
        )  # fmt: skip
    old = [*events[:20], ev("old", 1, 10, 5.0, T0 + 8 * HOUR), *events[20:]]
    with pytest.raises(BatchItemError) as info:
        scorer.score_batch(old)
    assert info.value.index == 20 and str(info.value.error).startswith("event_time: ")
    store.data[("card", 2)] = b"garbage!"
    with pytest.raises(CorruptStateError, match=r"^card 2: state: 8 bytes is not a skewless"):
        scorer.score_batch(events)


def test_too_old_query_names_event_time(model: LoadedModel) -> None:
    scorer, _ = make_scorer(model)
    with pytest.raises(QueryTooOldError, match=r"^event_time: "):
        scorer.score(ev("old", 1, 10, 5.0, T0 + 8 * HOUR))
    batch = [ev("ok", 1, 10, 5.0, NOW), ev("old", 1, 10, 5.0, T0 + 8 * HOUR)]
    with pytest.raises(BatchItemError) as info:
        scorer.score_batch(batch)
    assert info.value.index == 1 and str(info.value.error).startswith("event_time: ")


def test_corrupt_state_is_named(model: LoadedModel) -> None:
    scorer, store = make_scorer(model)
    store.data[("card", 1)] = b"garbage!"
    with pytest.raises(CorruptStateError, match=r"^card 1: state: 8 bytes is not a skewless"):
        scorer.score(ev("q5", 1, 10, 5.0, NOW))


def test_not_ready_and_entity_features(model: LoadedModel) -> None:
    with pytest.raises(NotReadyError, match=r"^model: "):
        Scorer(REFERENCE, MemoryStore()).score(ev("q", 1, 10, 5.0, NOW))
    scorer, _ = make_scorer(model)
    f = scorer.entity_features("card", 2, NOW)
    assert dict(zip(f.names, f.values, strict=True))["card_txn_count_24h"] == 3
    assert f.state.found and f.state.age_ms == 3 * HOUR + 10 * MIN
    with pytest.raises(InvalidRequestError, match=r"^entity: 'shop' is not one of card, merchant"):
        scorer.entity_features("shop", 1, NOW)


def test_install_refuses_other_definitions(model: LoadedModel, tmp_path: Path) -> None:
    scorer, _ = make_scorer(model)
    publish_synthetic_model(tmp_path, fingerprint="0123456789abcdef", fs=REFERENCE)
    with pytest.raises(RegistryError, match="running definitions are"):
        load_model(resolve(tmp_path, "production"), REFERENCE.fingerprint())
    with pytest.raises(RegistryError, match="trained on definitions 0123456789abcdef"):
        scorer.install(dataclasses.replace(model, fingerprint="0123456789abcdef"))
    assert scorer.model is model


def test_sink_receives_every_scored_event(model: LoadedModel) -> None:
    got: list[tuple[str, float, tuple[float, ...]]] = []

    def sink(events: Sequence[Event], results: Sequence[ScoreResult], X: object = None) -> None:
        for e, r in zip(events, results, strict=True):
            got.append((e.transaction_id, r.score, tuple(r.features)))

    scorer, _ = make_scorer(model, sink=sink)
    r1 = scorer.score(ev("s1", 1, 10, 5.0, NOW))
    r2 = scorer.score(ev("s2", 2, 10, 7.0, NOW))
    assert got == [("s1", r1.score, tuple(r1.features)), ("s2", r2.score, tuple(r2.features))]
