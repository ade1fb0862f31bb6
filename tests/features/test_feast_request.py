"""R3: a plain Feast reader gets request-time values. The on-demand views finalize the
stored state at ``request_time_ms`` with the native core, so the Feast SDK returns what
``GetFeatures`` (the scorer) returns, at several times; the feature view keeps the
as-of-last-event values."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from features.definitions import MS_PER_HOUR
from features.feast_objects import build_feast_objects, view_name
from features.feast_request import REQUEST_TIME, request_time_views
from features.reference import REFERENCE, Event
from features.store import StoreConfig, open_feature_store, open_store
from serving.scorer import Scorer
from serving.testing import fold_states, write_states

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def _history() -> list[Event]:
    rng = np.random.default_rng(3)
    t = T0 + np.sort(rng.integers(0, 30 * MS_PER_HOUR, 400))
    return [
        Event(f"t{i}", int(rng.integers(0, 12)), int(rng.integers(0, 4)),
              float(rng.integers(100, 90_000)) / 100, "EUR", "FR", 5411, int(ts))
        for i, ts in enumerate(t)
    ]  # fmt: skip


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_feast_sdk_returns_getfeatures_values_at_the_request_time(tmp_path: Path) -> None:
    events = _history()
    cfg = StoreConfig(workdir=tmp_path / "feast")
    store = open_store(cfg, REFERENCE)
    write_states(store, fold_states(events, REFERENCE), REFERENCE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        feast = open_feature_store(cfg, REFERENCE)
        objs = build_feast_objects(REFERENCE, tmp_path / "feast" / "offline")
        feast.apply([*objs.all(), *request_time_views("features.reference", objs)])
    scorer = Scorer(REFERENCE, store)
    newest = max(e.event_time_ms for e in events)
    times = [newest - 30 * 60_000, newest + 1, newest + 3 * MS_PER_HOUR, newest + 9 * 86_400_000]
    compared = 0
    for entity in REFERENCE.entities:
        names = [a.name for a in REFERENCE.for_entity(entity)]
        ids = sorted({getattr(e, entity.join_key) for e in events})
        for t in times:
            rows = [{entity.join_key: i, REQUEST_TIME: t} for i in ids]
            got = feast.get_online_features(
                features=[f"{entity.name}_features_at_request:{n}" for n in names],
                entity_rows=rows,
            ).to_dict()
            for k, i in enumerate(ids):
                try:
                    want = scorer.entity_features(entity.name, i, t).values
                except ValueError:  # too old for this entity's state: Feast says missing
                    assert all(got[n][k] is None for n in names), (entity.name, i, t)
                    continue
                for n, w in zip(names, want, strict=True):
                    g = got[n][k]
                    assert (g is None and math.isnan(w)) or g == w, (entity.name, i, t, n, g, w)
                    compared += 1
    assert compared > 300
    # R2: three hours after the last event the 1h count is 0 at request time, while the
    # as-of-last-event view still holds the count just after the newest event
    card = events[-1].card_id
    at_request = feast.get_online_features(
        features=["card_features_at_request:card_txn_count_1h"],
        entity_rows=[{"card_id": card, REQUEST_TIME: newest + 3 * MS_PER_HOUR}],
    ).to_dict()["card_txn_count_1h"]
    as_of_last = feast.get_online_features(
        features=[f"{view_name(REFERENCE.primary)}:card_txn_count_1h"],
        entity_rows=[{"card_id": card}],
    ).to_dict()["card_txn_count_1h"]
    assert at_request == [0] and as_of_last[0] >= 1
