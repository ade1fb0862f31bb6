"""Stand a scoring server up without the whole pipeline: for tests and benchmarks.

* :func:`publish_synthetic_model` registers a small XGBoost model (+ its ONNX artifact,
  exported by the training module's own exporter) with the metadata ``skewless train``
  writes, so :func:`serving.model.load_model` accepts it exactly like a trained one.
* :func:`write_states` folds events into engine states and writes them to an online
  store the way the streaming flow does (state bytes + as-of-last-event values).

>>> from features.events import Event
>>> states = fold_states([Event("t1", 7, 3, 10.0, "EUR", "FR", 5411, 1_000_000)])
>>> sorted(states), sorted(states["card"])
(['card', 'merchant'], [7])
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from features.codec import StateCodec
from features.definitions import FeatureSet
from features.engine import Engine, EntityState, txid_hash
from features.events import Event
from features.reference import REFERENCE
from features.store import OnlineRow, OnlineStore
from flows.registry import publish, set_alias


def fold_states(events: Iterable[Event], fs: FeatureSet = REFERENCE) -> dict[str, dict[int, Any]]:
    """``{entity: {entity_id: EntityState}}`` after applying ``events`` (stream rules:
    duplicates and too-late events decided on the primary entity)."""
    engine = Engine(fs)
    out: dict[str, dict[int, EntityState]] = {e.name: {} for e in fs.entities}
    primary = engine.layout(fs.primary.name)
    others = [engine.layout(e.name) for e in fs.entities if e != fs.primary]
    for ev in events:
        key = getattr(ev, primary.entity.join_key)
        state = out[primary.entity.name].setdefault(key, primary.new_state())
        outcome = primary.update(
            state, ev.event_time_ms, (ev.amount,), txid_hash(ev.transaction_id)
        )
        if outcome.name != "APPLIED":
            continue
        for layout in others:
            k = getattr(ev, layout.entity.join_key)
            s = out[layout.entity.name].setdefault(k, layout.new_state())
            layout.update(s, ev.event_time_ms, (ev.amount,))
    return out


def write_states(
    store: OnlineStore, states: dict[str, dict[int, Any]], fs: FeatureSet = REFERENCE
) -> int:
    """Write folded states as the streaming flow does; returns the rows written."""
    engine = Engine(fs)
    n = 0
    for entity, by_id in states.items():
        layout = engine.layout(entity)
        codec = StateCodec(layout)
        rows = [
            OnlineRow(k, s.max_seen, layout.as_of_last(s), codec.encode(s))
            for k, s in by_id.items()
            if s.max_seen is not None
        ]
        for i in range(0, len(rows), 1000):
            store.write(entity, rows[i : i + 1000])
        n += len(rows)
    return n


def synthetic_training_data(
    names: tuple[str, ...], rows: int = 2_000, seed: int = 7
) -> tuple[np.ndarray, np.ndarray]:
    """Feature-like random data with a learnable fraud rule (bursts, big ratios)."""
    rng = np.random.default_rng(seed)
    X = rng.gamma(2.0, 2.0, size=(rows, len(names)))
    X[rng.random(X.shape) < 0.1] = np.nan
    col = {n: i for i, n in enumerate(names)}
    burst = np.nan_to_num(X[:, col.get("card_txn_count_10m", 0)]) > 6
    ratio = np.nan_to_num(X[:, col.get("amount_to_card_mean_7d", 0)]) > 7
    y = ((burst | ratio) ^ (rng.random(rows) < 0.02)).astype(np.float64)
    return X, y


def publish_synthetic_model(
    registry: Path,
    *,
    fs: FeatureSet = REFERENCE,
    fingerprint: str | None = None,
    rounds: int = 20,
    max_depth: int = 3,
    seed: int = 7,
    threshold: float = 0.5,
    alias: str | None = "production",
) -> str:
    """Train a small model on synthetic rows and publish it; returns its version.
    ``fingerprint`` overrides the definitions fingerprint (to test refusals)."""
    import xgboost as xgb

    from flows.artifacts import ONNX_INPUT, export_onnx, onnx_probability, onnx_session

    names = tuple(fs.feature_names)
    X, y = synthetic_training_data(names, seed=seed)
    params = {
        "objective": "binary:logistic",
        "max_depth": max_depth,
        "eta": 0.3,
        "seed": seed,
        "nthread": 1,
        "tree_method": "hist",
    }
    booster = xgb.train(params, xgb.DMatrix(X, y, feature_names=list(names)), rounds)
    onnx_bytes = export_onnx(booster, len(names))
    parity = float(
        np.max(np.abs(onnx_probability(onnx_session(onnx_bytes), X) - booster.inplace_predict(X)))
    )

    def write(d: Path) -> None:
        booster.save_model(str(d / "model.json"))
        (d / "model.onnx").write_bytes(onnx_bytes)

    meta = {
        "feature_names": list(names),
        "fingerprint": fingerprint or fs.fingerprint(),
        "threshold": threshold,
        "onnx_input_name": ONNX_INPUT,
        "parity_max_abs_diff": parity,
        "synthetic": True,
        "params": params,
        "rounds": rounds,
    }
    version = publish(Path(registry), write, meta)
    if alias:
        set_alias(Path(registry), alias, version)
    return version
