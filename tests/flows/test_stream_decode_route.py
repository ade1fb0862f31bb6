"""The sharded layout's decode (``Decoder.routed``: one ``skewless_native.decode_route``
call per poll that parses, checks the message keys and groups the events by entity, shard
and id) gives exactly what the router gives over the per-message decode: the same shard
step items (state keys, entities, ids, group order, each entity's events in arrival order,
the same Ingested tuples), the same dead letters with their reasons and where they were
read, and the same key-check offenders; over random and malformed messages, several polls
per call, keys that match the card id or not, and timestamps the native call leaves to
Python (so an unsure message found valid re-routes the poll). The prefetch reads the same
keys from the groups as from the events."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flows.stream_prefetch as prefetch_mod
from features.plan import compile_plan
from features.reference import REFERENCE
from features.store import StoreConfig
from flows import stream_io
from flows.stream import _router
from flows.stream_decode import Decoder
from flows.stream_io import DeadLetter, Ingested
from flows.stream_kafka import KeyCheck
from flows.stream_prefetch import Prefetch
from flows.stream_shard import Poll
from flows.stream_source import KafkaBatch
from tests.features.test_parse_fast import messages
from tests.flows.test_stream_decode_native import _same

PLAN = compile_plan(REFERENCE)


class _Recorded(KeyCheck):
    """The key check's offenders as reported (indices into the decoded poll)."""

    def __init__(self) -> None:
        super().__init__(PLAN)
        self.bad: list[list[int]] = []

    def report(self, msgs: list[Any], out: list[Any], bad: list[int]) -> None:
        self.bad.append(list(bad))


def _decoder() -> Decoder:
    d = Decoder(PLAN, check_keys=True, router=_router(PLAN))
    d.check_keys = _Recorded()
    return d


def _card_key(raw: bytes) -> bytes | None:
    """The message's card id as its Kafka key, when it has one."""
    try:
        card = json.loads(raw).get("card_id")
    except (ValueError, UnicodeDecodeError, AttributeError):
        return None
    return str(card).encode()


@st.composite
def _polls(draw: Any) -> list[KafkaBatch]:
    pool = draw(st.lists(messages("reference"), min_size=1, max_size=6))
    out = []
    for p in range(draw(st.integers(1, 3))):
        n = draw(st.integers(0, 12))
        raws = [draw(st.sampled_from(pool)) for _ in range(n)]  # repeats: shared groups
        keys = [
            draw(st.sampled_from([_card_key(r), None, b"7", b"x"]))
            if draw(st.integers(0, 3)) == 0
            else _card_key(r)
            for r in raws
        ]
        # 2**70: not an int64, the native call leaves it to Python, which finds it valid
        stamps = [draw(st.sampled_from([1, 1_700_000_000_000, 2**40, 2**70])) for _ in raws]
        out.append(KafkaBatch(p, [100 * p + i for i in range(n)], keys, raws, stamps))
    return out


def _want(msgs: list[KafkaBatch]) -> tuple[Poll, list[list[int]]]:
    d = _decoder()
    out = d(msgs)  # the per-poll decode + the key check, then the Python router
    assert d.router is not None
    return Poll(d.router.route(out), [x for x in out if type(x) is DeadLetter]), d.check_keys.bad


def _check(got: Poll, want: Poll) -> None:
    assert [k for k, _ in got.routed] == [k for k, _ in want.routed]
    for (_, (ge, gg)), (_, (we, wg)) in zip(got.routed, want.routed, strict=True):
        assert ge == we and list(gg) == list(wg)
        for gid in gg:
            assert len(gg[gid]) == len(wg[gid])
            for a, b in zip(gg[gid], wg[gid], strict=True):
                _same(a, b)
    assert got.dead == want.dead


def test_the_fused_native_path_is_taken() -> None:
    assert _decoder().fused, "no native decode_route (rebuild native/): the property tests nothing"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(msgs=_polls())
def test_routed_poll_equals_router_over_decode(msgs: list[KafkaBatch]) -> None:
    d = _decoder()
    before = stream_io.METRICS.dead_letters._value.get()
    got = d.routed(msgs)
    dead = stream_io.METRICS.dead_letters._value.get() - before
    want, bad = _want(msgs)
    _check(got, want)
    assert d.check_keys.bad == bad  # type: ignore[union-attr]
    assert dead == len(want.dead)


def _raw(card: int, merchant: int, txid: str) -> bytes:
    return json.dumps({"transaction_id": txid, "card_id": card, "merchant_id": merchant,
                       "amount": 1.5, "currency": "EUR", "country": "FR", "mcc": 5411,
                       "event_time": 1767225600000}).encode()  # fmt: skip


def test_groups_keys_and_dead_letters_of_two_polls() -> None:
    """Two polls in one call: the card groups hold both polls' events in arrival order,
    the dead letter names its partition and offset, the keys not the card id are the
    offenders (a None key too)."""
    a = KafkaBatch(0, [10, 11], [b"1", b"2"], [_raw(1, 5, "a"), b"{}"], [7, 7])
    b = KafkaBatch(1, [20, 21], [b"9", None], [_raw(1, 5, "b"), _raw(2, 5, "c")], [8, 9])
    d = _decoder()
    got = d.routed([a, b])
    assert d.check_keys.bad == [[2, 3]]  # type: ignore[union-attr]
    assert [x.where for x in got.dead] == [{"partition": 0, "offset": 11}]
    groups = {k: g for k, (_, g) in got.routed}
    card1 = next(g[1] for k, g in groups.items() if k.startswith("card/") and 1 in g)
    assert [x.raw for x in card1] == [_raw(1, 5, "a"), _raw(1, 5, "b")]
    merchant = [g[5] for k, g in groups.items() if k.startswith("merchant/")]
    assert [[x.event[0] for x in m] for m in merchant] == [["a", "b", "c"]]


def test_prefetch_reads_the_same_keys_from_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    read: list[list[tuple[str, int]]] = []
    monkeypatch.setattr(prefetch_mod, "read_start", lambda s, fs, keys, ev: read.append(keys)
                        or [None] * len(keys))  # fmt: skip
    polls = [[KafkaBatch(0, list(range(4)), [None] * 4,
                         [_raw(c, m, f"t{c}{m}") for c, m in [(1, 5), (2, 5), (1, 6), (3, 5)]],
                         [1] * 4)],
             [KafkaBatch(0, [4, 5], [None] * 2, [_raw(3, 7, "x"), _raw(4, 5, "y")], [1] * 2)]]  # fmt: skip
    store = StoreConfig(redis_url="redis://127.0.0.1:1/0")
    by_events, by_groups = Prefetch(PLAN, store, None), Prefetch(PLAN, store, None)
    for msgs in polls:
        d = _decoder()
        by_events([x for x in d(msgs) if type(x) is Ingested])
        by_groups.routed(d.routed(msgs))
    first, second = read[0::2], read[1::2]
    assert [sorted(k) for k in first] == [sorted(k) for k in second]
    assert sorted(read[1]) == [
        ("card", 1),
        ("card", 2),
        ("card", 3),
        ("merchant", 5),
        ("merchant", 6),
    ]
    assert sorted(read[3]) == [("card", 4), ("merchant", 7)]
