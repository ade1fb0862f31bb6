"""The rows a sink write takes (``flows.stream_sink.latest_rows``): each ``(entity, id)``'s
last row, per entity in first-seen order, and the produced times in that order. The
sharded layout's shard batches name their shard (``RowBatch.shard``), so a write whose
batches are all of distinct shards takes their rows as they are (no per-row dict); the
same rows and order as the per-row dedup, which stays the path of everything else."""

from __future__ import annotations

import functools
import pickle
from typing import Any

from flows.stream_entity import EntityLogic, _EntityContext
from flows.stream_io import RowOut
from flows.stream_shard import RowBatch, ShardLogic, shard_of
from flows.stream_sink import latest_rows
from flows.stream_source import KafkaBatch
from tests.flows.test_stream_columns import T0, _raw
from tests.flows.test_stream_decode_route import PLAN, _decoder


def _row(entity: str, entity_id: int, produced: int) -> RowOut:
    from features.store import OnlineRow

    return RowOut(
        entity, OnlineRow(entity_id, produced - 5, [float(produced)], b"s%d" % produced), produced
    )


def _dedup(items: list[Any]) -> tuple[dict[str, list[Any]], list[int]]:
    """The reference: every row in order into a dict, the last row of a key kept."""
    latest: dict[tuple[str, int], RowOut] = {}
    for item in items:
        for r in item if isinstance(item, RowBatch) else [item]:
            latest[(r.entity, r.row.entity_id)] = r
    by_entity: dict[str, list[Any]] = {}
    for (entity, _), r in latest.items():
        by_entity.setdefault(entity, []).append(r.row)
    return by_entity, [r.produced_ms for r in latest.values()]


def test_the_shard_step_names_the_shard_of_its_rows() -> None:
    """Every row of a ``RowBatch`` the shard step makes is of the shard it names (so two
    batches naming different shards never hold the same entity), and it survives pickle."""
    ctxs = {n: _EntityContext(PLAN, n, None, snapshots=False) for n in ("card", "merchant")}
    makes = {n: functools.partial(EntityLogic, c) for n, c in ctxs.items()}
    msgs = [KafkaBatch(0, list(range(60)), [str(c % 9).encode() for c in range(60)],
                       [_raw(c % 9, c % 4, f"t{c}", T0 + c) for c in range(60)], [5] * 60)]  # fmt: skip
    batches: list[RowBatch] = []
    for _, group in _decoder().routed(msgs).routed:
        got, _ = ShardLogic(makes, None, False, None).on_batch([group])
        batches += [x for x in got if type(x) is RowBatch]
    assert sum(len(b) for b in batches) == 9 + 4
    for b in batches:
        assert b and b.shard == (b[0].entity, shard_of(b[0].row.entity_id))
        assert {(r.entity, shard_of(r.row.entity_id)) for r in b} == {b.shard}
        back = pickle.loads(pickle.dumps(b))
        assert type(back) is RowBatch and back == b and back.shard == b.shard
    assert len({b.shard for b in batches}) == len(batches)


def test_distinct_shards_are_taken_as_they_are() -> None:
    a = RowBatch([_row("card", 3, 10), _row("card", 7, 11)], ("card", 1))
    m = RowBatch([_row("merchant", 3, 12)], ("merchant", 1))
    b = RowBatch([_row("card", 5, 13)], ("card", 2))
    by_entity, produced = latest_rows([a, m, b])
    assert (by_entity, produced) == _dedup([a, m, b])
    assert list(by_entity) == ["card", "merchant"]
    assert [r.entity_id for r in by_entity["card"]] == [3, 7, 5]
    assert produced == [10, 11, 12, 13]
    assert all(x is y.row for x, y in zip(by_entity["card"], [*a, *b], strict=True))


def test_a_key_written_twice_keeps_its_last_row_where_it_first_came() -> None:
    """Two batches of one shard (two activations before the write), a batch without its
    shard, single rows (the entity layout): the per-row dedup decides."""
    first = RowBatch([_row("card", 3, 10), _row("card", 7, 11)], ("card", 1))
    again = RowBatch([_row("card", 7, 20), _row("card", 9, 21)], ("card", 1))
    unnamed = RowBatch([_row("card", 3, 30)])
    for items in (
        [first, again],
        [first, unnamed],
        [_row("card", 3, 1), first, _row("card", 3, 2)],
    ):
        assert latest_rows(items) == _dedup(items)
    by_entity, produced = latest_rows([first, again])
    assert [(r.entity_id, r.event_ts_ms) for r in by_entity["card"]] == [(3, 5), (7, 15), (9, 16)]
    assert produced == [10, 20, 21]
    assert latest_rows([]) == ({}, [])
