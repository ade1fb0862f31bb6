"""The sharded layout's poll as columns (``skewless_native.decode_groups``): the groups'
events are views of the poll's block (``Events``), no ``Ingested`` is made for a valid
event, and everything read from them is what the tuples gave: each event materialized
exactly (types included), ``update_rows`` over the views equal to ``update_rows`` over the
tuples (outcomes, rows, state bytes), the shard step's rows and late output equal, two
polls' groups merged in order, and a view pickles as its ``Ingested`` list."""

from __future__ import annotations

import functools
import gc
import json
import pickle
from typing import Any

import pytest
import skewless_native as _native
from hypothesis import HealthCheck, given, settings

from flows import stream_decode
from flows.stream_entity import EntityLogic, _EntityContext
from flows.stream_io import Ingested, LateOut, RowOut
from flows.stream_shard import ShardLogic
from flows.stream_source import KafkaBatch
from tests.flows.test_stream_decode_native import _same
from tests.flows.test_stream_decode_route import PLAN, _decoder, _polls, _want


def _raw(card: int, merchant: int, txid: str, t: int) -> bytes:
    return json.dumps({"transaction_id": txid, "card_id": card, "merchant_id": merchant,
                       "amount": 1.5 + card, "currency": "EUR", "country": "FR", "mcc": 5411,
                       "event_time": t}).encode()  # fmt: skip


T0 = 1_767_225_600_000


def test_valid_events_are_column_views_not_ingested_tuples() -> None:
    polls = [KafkaBatch(0, list(range(50)), [str(c % 7).encode() for c in range(50)],
                        [_raw(c % 7, c % 3, f"t{c}", T0 + c) for c in range(50)], [5] * 50)]  # fmt: skip
    d = _decoder()
    gc.collect()
    gc.disable()  # no collection untracks a tuple between the two counts
    try:
        before = sum(1 for o in gc.get_objects() if type(o) is Ingested)
        poll = d.routed(polls)
        made = sum(1 for o in gc.get_objects() if type(o) is Ingested) - before
    finally:
        gc.enable()
    views = [v for _, (_, g) in poll.routed for v in g.values()]
    assert {type(v) for v in views} == {_native.Events}
    assert sum(len(v) for v in views) == 100  # 50 events, 2 entities
    assert made == 0  # on the tuples' path: 50


def _run(polls: list[Any], with_logic: bool) -> list[Any]:
    """The shard step over each poll's items, a logic per state key (fresh states)."""
    ctxs = {n: _EntityContext(PLAN, n, None, snapshots=False) for n in ("card", "merchant")}
    makes = {n: functools.partial(EntityLogic, c) for n, c in ctxs.items()}
    logics: dict[str, ShardLogic] = {}
    out: list[Any] = []
    for routed in polls:
        by_key: dict[str, list[Any]] = {}
        for key, group in routed:
            by_key.setdefault(key, []).append(group)
        for key, groups in by_key.items():
            logic = logics.setdefault(key, ShardLogic(makes, None, False, None))
            got, _ = logic.on_batch(groups)
            out += [(key, x) for x in got]
    return out


def _same_out(got: list[Any], want: list[Any]) -> None:
    assert len(got) == len(want)
    for (gk, g), (wk, w) in zip(got, want, strict=True):
        assert gk == wk and type(g) is type(w)
        if type(g) is LateOut:
            assert g.entity == w.entity
            _same(g.item, w.item)
        else:
            assert g == w  # a RowBatch of RowOut: values and state bytes


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(msgs=_polls())
def test_columns_give_what_the_tuples_gave(msgs: list[KafkaBatch]) -> None:
    got = _decoder().routed(msgs)
    want, _ = _want(msgs)
    for (gk, (_, gg)), (wk, (_, wg)) in zip(got.routed, want.routed, strict=True):
        assert gk == wk and list(gg) == list(wg)
        for gid, events in gg.items():
            assert len(events) == len(wg[gid])
            for a, b in zip(events, wg[gid], strict=True):
                _same(a, b)
            # pickled (the exchange between workers) as the list of tuples, byte for byte
            again = pickle.loads(pickle.dumps(events))
            old = pickle.loads(pickle.dumps(wg[gid]))
            assert type(again) is list and pickle.dumps(again) == pickle.dumps(old)
    if any(t >= 2**63 for b in msgs for t in b.timestamps):
        return  # an int64 Kafka timestamp: update_rows refuses others on both paths
    # the same polls twice: the second time every event is a duplicate (refused, counted)
    _same_out(_run([got.routed, got.routed], True), _run([want.routed, want.routed], True))


def test_update_rows_reads_the_columns_as_the_tuples(monkeypatch: pytest.MonkeyPatch) -> None:
    """Out-of-order and repeated events (late, duplicates) in one poll and across two
    polls merged in one batch: outcomes, rows and late events equal."""
    raws = [_raw(1, 9, "a", T0 + 5_000_000), _raw(1, 9, "b", T0), _raw(2, 9, "a", T0 + 1),
            _raw(1, 8, "c", T0 - 40 * 86_400_000), _raw(1, 9, "b", T0)]  # fmt: skip
    a = KafkaBatch(0, [0, 1, 2], [b"1", b"1", b"2"], raws[:3], [11, 12, 13])
    b = KafkaBatch(0, [3, 4], [b"1", b"1"], raws[3:], [0, 14])
    # a Kafka timestamp of 0 takes the decode call's clock: both decodes read the same one
    # (a millisecond between them failed CI once)
    monkeypatch.setattr(stream_decode.time, "time", lambda: 1_790_000_000.5)
    got = [_decoder().routed([a]).routed, _decoder().routed([b]).routed]
    want = [_want([a])[0].routed, _want([b])[0].routed]
    assert type(next(iter(got[0][0][1][1].values()))) is _native.Events
    one = _run(got, True)
    _same_out(one, _run(want, True))
    lates = [x for _, x in one if type(x) is LateOut]
    assert [x.item.event[0] for x in lates] == ["c"]
    assert any(type(x) is not LateOut and all(type(r) is RowOut for r in x) for _, x in one)
    # both polls' items for the same shards in one batch: each entity's order kept
    merged = _run([got[0] + got[1]], True)
    _same_out(merged, _run([want[0] + want[1]], True))
