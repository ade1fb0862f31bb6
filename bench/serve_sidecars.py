"""What the shadow model and the drift gauges cost a ``Score``, measured in one run.

The scorer is called in-process (``Scorer.score``, the ``Score`` path minus gRPC) with the
states held in a dict, so the few microseconds measured are not drowned in a store round
trip's jitter (the ratio is then an upper bound: a real call also waits for Redis). Four
configurations, in alternating rounds so that a change in the machine's load hits all
alike, each with its background threads running as in the server (the drift gauges
recomputed every ``gauge_interval_s``, the shadow draining every 50 ms):

* ``off``: the prediction log alone (the default server);
* ``gauges``: plus the drift gauges; ``shadow``: plus a shadow model; ``both``.

Reported: p50 per configuration, and per sidecar the p50 it adds (ms) and the p50 ratio
against ``off``. The budget (DESIGN.md): at most 0.02 ms per ``Score``.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

BUDGET_MS = 0.02


class _DictStore:
    """The online store's read path over a dict of real engine state bytes."""

    def __init__(self, data: dict[tuple[str, int], bytes]) -> None:
        self.data = data

    def read_states(self, keys: Sequence[tuple[str, int]], bootstrap: bool = False) -> list[Any]:
        return [self.data.get(k) for k in keys]

    def close(self) -> None:
        pass


def _setup(work: Path, cards: int) -> tuple[Any, Any, Any, list[Any]]:
    from features.native import NativeLayout
    from features.plan import compile_plan
    from features.reference import REFERENCE, Event
    from flows.profiles import FORMAT, binned, hour_of_day, write_profile
    from flows.registry import resolve
    from serving.model import load_model
    from serving.testing import fold_states, publish_synthetic_model, synthetic_training_data

    t0 = 1_767_225_600_000
    rng = np.random.default_rng(7)
    history = [
        Event(f"h{i}", int(rng.integers(cards)), int(rng.integers(100)), float(rng.gamma(2, 30)),
              "EUR", "FR", 5411, t0 + i * 1_000)
        for i in range(20 * cards)
    ]  # fmt: skip
    plan = compile_plan(REFERENCE)
    data: dict[tuple[str, int], bytes] = {}
    for entity, states in fold_states(history, REFERENCE).items():
        core = NativeLayout(plan.entity(entity).layout).core
        for k, s in states.items():
            data[(entity, k)] = core.row(s)[1]
    registry = work / "registry"
    fp = REFERENCE.fingerprint()
    publish_synthetic_model(registry, fs=REFERENCE, seed=1, rounds=100, max_depth=6)
    publish_synthetic_model(registry, fs=REFERENCE, seed=2, rounds=100, max_depth=6, alias="shadow")
    names = tuple(REFERENCE.feature_names)
    X, _ = synthetic_training_data(names, rows=5_000)
    hours = hour_of_day(np.full(len(X), t0))
    version_dir = resolve(registry, "production")
    write_profile(version_dir, {
        "format": FORMAT, "categorical": {},
        "features": {n: binned(X[:, j], hours) for j, n in enumerate(names)},
        "score": binned(rng.random(len(X)), hours),
    })  # fmt: skip
    production = load_model(version_dir, fp)
    shadow = load_model(resolve(registry, "shadow"), fp)
    end = t0 + 20 * cards * 1_000 + 60_000
    queries = [
        Event(f"q{i}", int(rng.integers(cards)), int(rng.integers(100)), 12.5, "EUR", "FR", 5411,
              end + i)
        for i in range(2_000)
    ]  # fmt: skip
    return _DictStore(data), production, shadow, queries


def run(
    *, rounds: int = 20, calls: int = 500, cards: int = 500, gauge_interval_s: float = 0.5
) -> dict[str, Any]:
    """Measure the four configurations; returns p50s, the added ms and the ratios."""
    from features.reference import REFERENCE
    from serving.drift_gauges import DriftGauges, tee
    from serving.predlog import ParquetPredictionLog
    from serving.scorer import Scorer
    from serving.shadow import Shadow

    with tempfile.TemporaryDirectory(prefix="skewless-sidecars-") as tmp:
        work = Path(tmp)
        store, production, shadow_model, queries = _setup(work, cards)
        scorer = Scorer(REFERENCE, store)
        scorer.install(production)
        log = ParquetPredictionLog(work / "predictions", scorer.plan, flush_rows=5_000).start()
        gauges = DriftGauges(lambda: scorer.model, scorer.plan.event_time,
                             interval_s=gauge_interval_s).start()  # fmt: skip
        shadow = Shadow(log).start()
        shadow.install(scorer.plan_for(shadow_model))
        sinks = {"off": log, "gauges": tee(gauges, log), "shadow": shadow,
                 "both": tee(gauges, shadow)}  # fmt: skip
        times: dict[str, list[int]] = {k: [] for k in sinks}
        score, clock = scorer.score, time.perf_counter_ns
        for _ in range(3 * calls):  # warm up every path
            score(queries[_ % len(queries)])
        try:
            for r in range(rounds):
                for name, sink in sinks.items():
                    scorer.sink = sink
                    out = times[name]
                    for i in range(calls):
                        q = queries[(r * calls + i) % len(queries)]
                        t = clock()
                        score(q)
                        out.append(clock() - t)
        finally:
            gauges.close()
            gauges.update()  # what arrived since the thread's last pass
            shadow.close()
            log.close()
        p50 = {k: float(np.percentile(v, 50)) / 1e6 for k, v in times.items()}
        added = {k: round(p50[k] - p50["off"], 4) for k in ("gauges", "shadow", "both")}
        return {
            "score_p50_ms": {k: round(v, 4) for k, v in p50.items()},
            "added_p50_ms": added,
            "p50_ratio_vs_off": {k: round(p50[k] / p50["off"], 3) for k in added},
            "budget_ms": BUDGET_MS,
            "met": {k: v <= BUDGET_MS for k, v in added.items()},
            "shadow": {"scored": shadow.scored, "errors": shadow.errors, "skipped": shadow.skipped},
            "gauge_window_rows": int(gauges.rows._value.get()),
            "setup": {"rounds": rounds, "calls_per_round": calls, "cards": cards,
                      "store": "in-process dict (real state bytes)", "model": "100 x depth 6"},
        }  # fmt: skip


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=1))
