"""Idle eviction (``skewless stream --evict-after``, issue 12) against real Kafka and Redis:
entities dropped from the worker and read back when they return keep the online state
byte-identical to a run that never evicts, across a kill -9, with a bounded held count."""

from __future__ import annotations

import re
import threading
import weakref
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import redis
from bytewax.testing import run_main

from features.reference import REFERENCE
from features.store import StoreConfig, open_store
from flows import stream, stream_io
from flows.stream import StreamConfig, build_flow
from skewless.verify import check_online_states
from tests.integration import stream_support as sup

pytestmark = pytest.mark.integration

EVICT = [
    "--evict-after",
    "0.02",
    "--batch-size",
    "300",
]  # tiny: cards go idle and return many times per run


def _read_back(log: Path) -> int:
    """Entities read back after an eviction, from the run's last summary line."""
    found = re.findall(r"idle eviction: (\d+) entities evicted, (\d+) read back", log.read_text())
    assert found, log.read_text()[-2000:]
    return int(found[-1][1])


def _evicted_keys(url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return sum(1 for _ in client.scan_iter(match=b"skewless:stream:*:evicted:*", count=1000))
    finally:
        client.close()


def _phased() -> pa.Table:
    """Three phases in time order: ~200 cards (days 0-3), ~200 other cards (days 3-6), the
    first cards again (days 6-9): each card idles for a third of the run, then returns."""
    day = pa.scalar(3 * 86_400_000, pa.duration("ms"))
    parts = []
    for phase, seed in enumerate((21, 22, 21)):
        t = sup.events(7_000, seed=seed, cards=200, merchants=60, days=3.0)
        cards = t.column("card_id")
        if phase == 1:
            cards = pc.add(cards, 1_000_000)
        t = t.set_column(t.schema.get_field_index("card_id"), "card_id", cards)
        shifted = pc.add(t.column("event_time"), pc.multiply(day, phase)) if phase else None
        if shifted is not None:
            t = t.set_column(t.schema.get_field_index("event_time"), "event_time", shifted)
        txid = pc.binary_join_element_wise(f"p{phase}", t.column("transaction_id"), "")
        parts.append(t.set_column(0, "transaction_id", txid))
    return pa.concat_tables(parts)


@pytest.fixture(scope="module")
def clean_run(
    kafka_bootstrap: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """~21,000 events on a 3-partition topic, and one run without eviction."""
    topic = "evict"
    sup.create_topic(kafka_bootstrap, topic, 3)
    table = _phased()
    sup.produce_mixed(kafka_bootstrap, topic, table, sup.malformed(30))
    url = sup.fresh_db_url(redis_url, 7)
    out = tmp_path_factory.mktemp("evict-clean")
    log = out / "flow.log"
    sup.wait(sup.start_stream(sup.stream_env(kafka_bootstrap, url, topic, out), log=log), log)
    assert _evicted_keys(url) == 0
    return {"topic": topic, "clean": sup.dump(url), "table": table}


@pytest.mark.parametrize(("workers", "db"), [(1, 8), (2, 11)])
def test_evicted_cards_return_exact_and_byte_identical(
    clean_run: dict[str, Any],
    kafka_bootstrap: str,
    redis_url: str,
    tmp_path: Path,
    workers: int,
    db: int,
) -> None:
    url = sup.fresh_db_url(redis_url, db)
    env = sup.stream_env(kafka_bootstrap, url, clean_run["topic"], tmp_path)
    log = tmp_path / "flow.log"
    sup.wait(sup.start_stream(env, *EVICT, "-w", str(workers), log=log), log)
    assert _evicted_keys(url) > 100, "no card went idle: the test proves nothing"
    assert _read_back(log) > 100, "no card returned after its eviction"
    assert sup.dump(url) == clean_run["clean"]
    store = open_store(StoreConfig(redis_url=url), REFERENCE)
    ev = sup.accepted(clean_run["table"])
    report = check_online_states(REFERENCE, store, ev, sample_per_entity=200, times_per_entity=3)
    assert report.missing_states == {"card": 0, "merchant": 0}
    assert report.mismatches == 0, report.to_json()


def test_kill_9_with_eviction_then_recovery_is_byte_identical(
    clean_run: dict[str, Any], kafka_bootstrap: str, redis_url: str, tmp_path: Path
) -> None:
    url = sup.fresh_db_url(redis_url, 9)
    env = sup.stream_env(kafka_bootstrap, url, clean_run["topic"], tmp_path)
    log = tmp_path / "flow.log"
    rec = ["-r", str(tmp_path / "recovery"), "-s", "0.3", "-b", "0", *EVICT]
    first = sup.start_stream(env, *rec, log=log)
    sup.wait_for_keys(url, 250, first)
    first.kill()  # SIGKILL, mid-stream, with evicted snapshots ahead of the recovery epoch
    assert first.wait(30) == -9
    sup.wait(sup.start_stream(env, *rec, log=log), log)
    assert _evicted_keys(url) > 100
    assert _read_back(log) > 0
    assert sup.dump(url) == clean_run["clean"]


class _Spy:
    """The flow's per-entity structures, found as it builds them (recording subclasses):
    every one that could grow with the distinct entities ever seen, beside Bytewax's own
    map of logics (the live :class:`EntityLogic` objects, which it alone keeps)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.logics: weakref.WeakSet[Any] = weakref.WeakSet()
        self.made: dict[str, Any] = {}
        spy = self

        class Logic(stream.EntityLogic):
            def __init__(self, *args: Any) -> None:
                super().__init__(*args)
                spy.logics.add(self)

        for name, base in (("Prefetch", stream.Prefetch), ("Evictions", stream.Evictions),
                           ("HeldStates", stream.HeldStates)):  # fmt: skip

            def init(self: Any, *args: Any, _base: Any = base, _name: str = name) -> None:
                _base.__init__(self, *args)
                spy.made[_name] = self

            monkeypatch.setattr(stream, name, type(name, (base,), {"__init__": init}))
        monkeypatch.setattr(stream, "EntityLogic", Logic)

    def counts(self) -> dict[str, int]:
        prefetch, ev, held = (self.made[n] for n in ("Prefetch", "Evictions", "HeldStates"))
        with prefetch.lock:
            seen = sum(len(s) for s in prefetch.seen.values())
            cache = len(prefetch.cache)
        return {
            "bytewax_logics": len(self.logics),
            "held": sum(len(ids) for w in held.workers for _, ids in w.by_entity.values()),
            "prefetch_seen": seen,
            "prefetch_cache": cache,
            "pending_evictions": len(ev.pending),
        }


def test_every_per_entity_structure_stays_bounded_with_many_distinct_cards(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every structure that holds something per entity (Bytewax's logics, the held-state
    registry, the prefetch's ``seen`` and cache, the pending evictions) peaks far below
    the distinct entities once eviction runs, and the values stay exact."""
    cards = 50_000
    table = sup.events(100_000, seed=5, cards=cards, merchants=200, days=30.0)
    path = tmp_path / "events.parquet"
    pq.write_table(table, path)
    url = sup.fresh_db_url(redis_url, 10)
    cfg = StreamConfig(
        store=StoreConfig(redis_url=url), replay_path=path, out_dir=tmp_path, tail=False,
        batch_size=500, evict_after_s=0.2,
    )  # fmt: skip
    spy = _Spy(monkeypatch)
    flow = build_flow(REFERENCE, cfg)
    evicted = stream_io.METRICS.evicted
    base_evicted = evicted._value.get()
    peak: dict[str, int] = {}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            if evicted._value.get() > base_evicted:
                for name, n in spy.counts().items():
                    peak[name] = max(peak.get(name, 0), n)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        run_main(flow)
    finally:
        done.set()
        sampler.join()
    n_evicted = evicted._value.get() - base_evicted
    distinct = len(set(table.column("card_id").to_pylist())) + 200
    assert n_evicted > distinct // 2, n_evicted
    assert set(peak) == set(spy.counts()), peak
    # each holds the entities seen within the last 0.2 s, never the ~50k distinct ones
    assert peak["held"] > 0 and peak["bytewax_logics"] > 0, peak
    assert all(n < distinct // 4 for n in peak.values()), (peak, distinct)
    store = open_store(StoreConfig(redis_url=url), REFERENCE)
    report = check_online_states(
        REFERENCE, store, sup.accepted(table), sample_per_entity=300, times_per_entity=2
    )
    assert report.mismatches == 0, report.to_json()
