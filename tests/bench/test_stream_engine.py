"""The engine micro-benchmark (``bench/stream_engine.py``) feeds the drain's events through
``update_rows`` as the flow routes them (the decoder's ``Events`` views, not tuples), and
its cut passes (``update_rows_upto``) evolve
the states exactly as the whole call does (so its phase split is a split of the same
work)."""

from __future__ import annotations

from typing import Any

import pytest

from bench.stream_engine import _contexts, measure, polls, routed
from features.native import native
from features.reference import REFERENCE
from flows.simulate import SimulationConfig, simulate
from flows.stream_io import Ingested


def _run(groups: list[Any], phase: int | None) -> tuple[dict[str, dict[int, bytes]], int]:
    """Snapshots of every state after the pass, and how many rows it made (or counted)."""
    ctxs = _contexts(REFERENCE)
    states: dict[str, dict[int, Any]] = {name: {} for name in ctxs}
    rows = 0
    for poll in groups:
        for entity, by_id in poll:
            ctx = ctxs[entity]
            sts = [states[entity].setdefault(i, ctx.core.new_state()) for i in by_id]
            args = (ctx.core, sts, list(by_id.values()), ctx.time_pos, ctx.value_pos)
            if phase is None:
                rows += sum(1 for got in native.update_rows(*args) if got[4] is not None)
            else:
                rows += native.update_rows_upto(*args, phase)[1]
    snaps = {
        e: {i: ctxs[e].core.snapshot(s) for i, s in held.items()} for e, held in states.items()
    }
    return snaps, rows


@pytest.fixture(scope="module")
def table() -> Any:
    return simulate(SimulationConfig(events=3_000, cards=100, merchants=10, days=2.0, seed=3))


def test_every_cut_evolves_the_states_as_update_rows(table: Any) -> None:
    groups = routed(REFERENCE, polls(REFERENCE, table, poll=500))
    assert sum(len(g) for poll in groups for _, by_id in poll for g in by_id.values()) == 6_000
    want, rows = _run(groups, None)
    assert rows > 0
    for phase in (1, 2, 3):
        assert _run(groups, phase) == (want, rows), phase
    with pytest.raises(ValueError, match="phase 4 is not 1, 2 or 3"):
        ctx = _contexts(REFERENCE)["card"]
        native.update_rows_upto(ctx.core, [], [], ctx.time_pos, ctx.value_pos, 4)


def test_groups_are_the_flows_column_views(table: Any) -> None:
    """What the stream's step hands ``update_rows`` (``Decoder.routed``'s ``Events``), not
    a tuple per event; the same states and rows as the events materialized."""
    groups = routed(REFERENCE, polls(REFERENCE, table, poll=500))
    views = [g for poll in groups for _, by_id in poll for g in by_id.values()]
    assert len(views) > 100 and {type(g) for g in views} == {native.Events}
    tuples = [[(e, {i: list(g) for i, g in by_id.items()}) for e, by_id in poll] for poll in groups]
    assert {type(x) for poll in tuples for _, by_id in poll for g in by_id.values() for x in g} == {
        Ingested
    }
    assert _run(groups, None) == _run(tuples, None)


def test_measure_counts_every_event_and_row(table: Any) -> None:
    groups = routed(REFERENCE, polls(REFERENCE, table, poll=500))
    _, rows = _run(groups, None)
    out = measure(REFERENCE, table, rounds=1, poll=500)
    assert out["entity_events"] == 6_000 and out["events"] == 3_000
    assert sum(p["rows"] for p in out["phases"].values()) == rows
    assert sum(p["events"] for p in out["phases"].values()) == 6_000
    assert out["cpu_us_per_event"] > 0
