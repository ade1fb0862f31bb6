"""What the feature-repo tests share: the materialize window and the check that every
card the simulation drew is in the online store after `feast materialize`."""

from __future__ import annotations

from feast import FeatureStore

from flows.simulate import SimulationConfig, simulate

MATERIALIZE = ["materialize", "2000-01-01T00:00:00", "2100-01-01T00:00:00"]


def assert_every_card_online(store: FeatureStore, cfg: SimulationConfig) -> None:
    """Every card of ``cfg``'s events has a 24 h count in ``store``'s online store."""
    ids = sorted(set(simulate(cfg).column("card_id").to_pylist()))
    got = store.get_online_features(
        features=["card_features_as_of_last_event:card_txn_count_24h"],
        entity_rows=[{"card_id": i} for i in ids],
    ).to_dict()["card_txn_count_24h"]
    assert len(got) == len(ids) and all(v is not None for v in got), got
