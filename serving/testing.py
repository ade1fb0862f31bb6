"""Stand a scoring server up without the whole pipeline: for tests and benchmarks.

* :func:`publish_synthetic_model` registers a small XGBoost model (+ its ONNX artifact,
  exported by the training module's own exporter) with the metadata ``skewless train``
  writes, so :func:`serving.model.load_model` accepts it exactly like a trained one.
* :func:`fold_states` folds events into engine states (the native core, through the
  definitions' plan) and :func:`write_states` writes them to an online store the way the
  streaming flow does (state bytes + as-of-last-event values).

>>> from features.reference import REFERENCE, Event
>>> states = fold_states([Event("t1", 7, 3, 10.0, "EUR", "FR", 5411, 1_000_000)], REFERENCE)
>>> sorted(states), sorted(states["card"])
(['card', 'merchant'], [7])
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from features.definitions import FeatureSet
from features.layout import txid_hash
from features.native import NativeLayout
from features.plan import compile_plan
from features.store import OnlineRow, OnlineStore
from flows.registry import publish, set_alias


def fold_states(events: Iterable[Any], fs: FeatureSet) -> dict[str, dict[int, Any]]:
    """``{entity: {entity_id: state}}`` after applying ``events`` (stream rules: every
    entity decides duplicates and too-late events on its own events), on the native core."""
    plan = compile_plan(fs)
    out: dict[str, dict[int, Any]] = {p.name: {} for p in plan.entities}
    cores = [(p, NativeLayout(p.layout)) for p in plan.entities]
    for ev in events:
        t, txid = plan.event_time(ev), txid_hash(plan.event_id(ev))
        for p, core in cores:
            state = out[p.name].get(p.key(ev))
            if state is None:
                state = out[p.name][p.key(ev)] = core.new_state()
            core.update(state, t, p.values(ev), txid)
    return out


def write_states(store: OnlineStore, states: dict[str, dict[int, Any]], fs: FeatureSet) -> int:
    """Write folded states as the streaming flow does; returns the rows written."""
    plan = compile_plan(fs)
    n = 0
    for entity, by_id in states.items():
        core = NativeLayout(plan.entity(entity).layout).core
        rows = []
        for k, s in by_id.items():
            if s.max_seen is not None:
                features, blob = core.row(s)
                rows.append(OnlineRow(k, s.max_seen, features, blob))
        for i in range(0, len(rows), 1000):
            store.write(entity, rows[i : i + 1000])
        n += len(rows)
    return n


def synthetic_training_data(
    names: tuple[str, ...], rows: int = 2_000, seed: int = 7
) -> tuple[np.ndarray, np.ndarray]:
    """Feature-like random data with a learnable rule (large first or last column)."""
    rng = np.random.default_rng(seed)
    X = rng.gamma(2.0, 2.0, size=(rows, len(names)))
    X[rng.random(X.shape) < 0.1] = np.nan
    first, last = np.nan_to_num(X[:, 0]) > 8, np.nan_to_num(X[:, -1]) > 9
    y = ((first | last) ^ (rng.random(rows) < 0.02)).astype(np.float64)
    return X, y


def publish_synthetic_model(
    registry: Path,
    *,
    fs: FeatureSet,
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
