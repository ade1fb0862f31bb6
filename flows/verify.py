"""The skew check: online state vs the backfill over the same events, per feature.

For every sampled entity it reads the state bytes from the online store, finalizes them
at query times the state can answer exactly (its newest event minus the exact horizon,
up to just after the newest event) and compares with the vectorized backfill at the same
``(entity, t)``. Counts, min and max must be equal; sums, means and std within a relative
1e-9. Anything else is a mismatch, reported per feature.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from features.backfill import window_features
from features.codec import StateCodec
from features.definitions import FeatureSet, Op
from features.engine import Engine
from features.online_store import OnlineStore
from flows.backfill import AcceptedEvents

REL_TOL = 1e-9
EXACT_OPS = (Op.COUNT, Op.MIN, Op.MAX)


@dataclass
class FeatureSkew:
    compared: int = 0
    mismatches: int = 0
    max_rel_error: float = 0.0
    examples: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class SkewReport:
    entities: dict[str, int] = field(default_factory=dict)
    missing_states: dict[str, int] = field(default_factory=dict)
    features: dict[str, FeatureSkew] = field(default_factory=dict)

    @property
    def mismatches(self) -> int:
        return sum(f.mismatches for f in self.features.values()) + sum(self.missing_states.values())

    @property
    def compared(self) -> int:
        return sum(f.compared for f in self.features.values())

    def to_json(self) -> str:
        body = asdict(self)
        body["mismatches"], body["compared"] = self.mismatches, self.compared
        return json.dumps(body, indent=2, sort_keys=True)


def values_agree(op: Op, got: float, want: float, scale: float) -> tuple[bool, float]:
    """(agree, relative error) under the contract's tolerances."""
    g_nan = isinstance(got, float) and math.isnan(got)
    w_nan = isinstance(want, float) and math.isnan(want)
    if g_nan or w_nan:
        return g_nan and w_nan, 0.0 if g_nan and w_nan else math.inf
    if op in EXACT_OPS:
        return got == want, 0.0 if got == want else math.inf
    err = abs(got - want) / max(abs(want), 1e-300)
    tol = 1e-9 * scale if op is Op.STD else 0.0
    return math.isclose(got, want, rel_tol=REL_TOL, abs_tol=tol), err


def check_online_states(
    fs: FeatureSet,
    store: OnlineStore,
    events: AcceptedEvents,
    sample_per_entity: int = 200,
    times_per_entity: int = 4,
    seed: int = 0,
) -> SkewReport:
    """Compare every feature of a sample of entities at several exact query times."""
    rng = np.random.default_rng(seed)
    engine = Engine(fs)
    report = SkewReport()
    scale = float(max((v.max() for v in events.fields.values() if len(v)), default=1.0))
    for entity in fs.entities:
        layout = engine.layout(entity.name)
        codec = StateCodec(layout)
        ids = np.unique(events.keys[entity.name])
        if len(ids) > sample_per_entity:
            ids = np.sort(rng.choice(ids, sample_per_entity, replace=False))
        raw = store.read_states([(entity.name, int(i)) for i in ids])
        q_keys, q_t, finals = [], [], []
        missing = 0
        for entity_id, blob in zip(ids, raw, strict=True):
            if blob is None:
                missing += 1
                continue
            state = codec.decode(blob)
            assert state.max_seen is not None
            lo, hi = state.max_seen - layout.horizon_ms, state.max_seen + 1
            times = [hi, *rng.integers(lo, hi + 1, size=times_per_entity - 1).tolist()]
            for t in times:
                q_keys.append(int(entity_id))
                q_t.append(int(t))
                finals.append(layout.finalize(state, int(t)))
        report.entities[entity.name] = len(ids)
        report.missing_states[entity.name] = missing
        if not q_keys:
            continue
        bf = window_features(
            fs, entity.name, events.keys[entity.name], events.ts, events.fields,
            np.array(q_keys, dtype=np.int64), np.array(q_t, dtype=np.int64),
        )  # fmt: skip
        for pos, agg in enumerate(fs.for_entity(entity)):
            skew = report.features.setdefault(agg.name, FeatureSkew())
            col = bf[agg.name]
            for i, vals in enumerate(finals):
                want = int(col[i]) if agg.op is Op.COUNT else float(col[i])
                ok, err = values_agree(agg.op, vals[pos], want, scale)
                skew.compared += 1
                if not ok:
                    skew.mismatches += 1
                    if len(skew.examples) < 5:
                        skew.examples.append(
                            {"id": q_keys[i], "t": q_t[i], "online": vals[pos], "backfill": want}
                        )
                if math.isfinite(err):
                    skew.max_rel_error = max(skew.max_rel_error, err)
    return report
