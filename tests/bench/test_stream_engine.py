"""The engine micro-benchmark (``bench/stream_engine.py``) feeds the drain's events through
``update_rows`` as the flow routes them, and its timed twin changes the states exactly as
the plain call does (so its phase split is the split of the same work)."""

from __future__ import annotations

from typing import Any

from bench.stream_engine import _contexts, measure, polls, routed
from features.native import native
from features.reference import REFERENCE
from flows.simulate import SimulationConfig, simulate


def _run(groups: list[Any], timed: bool) -> tuple[dict[str, dict[int, bytes]], list[Any]]:
    ctxs = _contexts(REFERENCE)
    states: dict[str, dict[int, Any]] = {name: {} for name in ctxs}
    call = native.update_rows_timed if timed else native.update_rows
    got: list[Any] = []
    for poll in groups:
        for entity, by_id in poll:
            ctx = ctxs[entity]
            sts = [states[entity].setdefault(i, ctx.core.new_state()) for i in by_id]
            got.append(call(ctx.core, sts, list(by_id.values()), ctx.time_pos, ctx.value_pos))
    snaps = {
        e: {i: ctxs[e].core.snapshot(s) for i, s in held.items()} for e, held in states.items()
    }
    return snaps, got


def test_counts_every_routed_event_and_row() -> None:
    table = simulate(SimulationConfig(events=3_000, cards=100, merchants=10, days=2.0, seed=3))
    groups = routed(REFERENCE, polls(REFERENCE, table, poll=500))
    assert sum(len(g) for poll in groups for _, by_id in poll for g in by_id.values()) == 6_000
    plain_snaps, plain = _run(groups, timed=False)
    timed_snaps, timed = _run(groups, timed=True)
    assert timed_snaps == plain_snaps
    rows = sum(1 for call in plain for entity in call if entity[4] is not None)
    assert sum(t[1] for t in timed) == rows > 0
    assert sum(t[0] for t in timed) == 6_000
    out = measure(REFERENCE, table, rounds=1, poll=500)
    assert out["entity_events"] == 6_000 and out["events"] == 3_000
    assert sum(p["rows"] for p in out["phases"].values()) == rows
    assert out["cpu_us_per_event"] > 0 and out["phases_us_per_event"] > 0
