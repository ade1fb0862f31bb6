"""The stream bench's naive baseline (one ``FeatureStore.push`` per event) runs against the
real Feast SDK on a real Redis: a renamed push source broke it once without a failing test."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.stream import naive_push
from flows.simulate import SimulationConfig, simulate


def test_naive_push_baseline_runs(redis_url: str, tmp_path: Path) -> None:
    table = simulate(SimulationConfig(events=40, cards=5, merchants=3, days=1.0))
    out = naive_push(redis_url, table, tmp_path, limit=20)
    assert out["events"] == 20 and out["events_per_s"] > 0, out


def test_stage_table_and_floor_count_every_event_of_the_topic(
    kafka_bootstrap: str, redis_url: str, tmp_path: Path
) -> None:
    """The per-stage harness feeds the flow's own steps: every event decoded once, the
    same rows the flow writes; each floor variant reads the whole topic."""
    import redis

    from bench import stream_floor
    from bench.stream import _pairs, _topic, stage_table
    from bench.stream_shard import stage_table as stage_table_sharded
    from flows.produce import produce_messages
    from tests.integration import stream_support as sup

    table = simulate(SimulationConfig(events=3_000, cards=100, merchants=10, days=1.0))
    topic = _topic(kafka_bootstrap, "bench-stages")
    assert produce_messages(kafka_bootstrap, topic, _pairs(table)).failed == 0
    url = sup.fresh_db_url(redis_url, 14)
    got = stage_table(kafka_bootstrap, topic, url, tmp_path)
    assert got["events"] == 3_000
    assert set(got["cpu_us_per_event"]) == {
        "kafka source", "decode + validate", "prefetch", "key routing", "card step",
        "merchant step", "sink encode", "redis write",
    }  # fmt: skip
    client = redis.Redis.from_url(url)
    entities = {k for k in client.scan_iter(count=1000) if not k.startswith(b"skewless:")}
    cards, merchants = (len(set(table.column(c).to_pylist())) for c in ("card_id", "merchant_id"))
    assert len(entities) == cards + merchants
    # the sharded layout's stages (--state-layout sharded) write the very same rows
    want = sup.dump(url)
    sharded = stage_table_sharded(kafka_bootstrap, topic, sup.fresh_db_url(redis_url, 14), tmp_path)
    assert sharded["events"] == 3_000 and sharded["state_layout"] == "sharded"
    assert sup.dump(url) == want
    for variant in stream_floor.VARIANTS:
        out = stream_floor.run(variant, kafka_bootstrap, topic, 3_000, 500)
        assert out["events_per_cpu_s"] > 0, out


@pytest.mark.parametrize(("layout", "writes_per_poll"), [("entity", 2), ("sharded", 1)])
def test_freshness_follows_every_event_from_produce_to_its_write(
    kafka_bootstrap: str, redis_url: str, tmp_path: Path, layout: str, writes_per_poll: int
) -> None:
    """The trace's hooks still fit the flow (source, decode, prefetch, sink) in either
    state layout: every produced event is polled, decoded and matched to the write that
    carried its rows; the sharded layout writes each poll's rows once."""
    from bench.stream import freshness
    from bench.stream_fresh import summary
    from tests.integration import stream_support as sup

    table = simulate(SimulationConfig(events=600, cards=50, merchants=5, days=1.0))
    url = sup.fresh_db_url(redis_url, 13)
    args = ("--state-layout", layout)
    out = freshness(kafka_bootstrap, url, table, tmp_path, 600.0, args)
    hops = out["hops_ms"]
    assert out["produce_failed"] == 0
    for hop in ("produce_to_broker_ack", "polled", "decode", "steps", "write", "total"):
        assert hops[hop]["n"] == 600, (hop, hops[hop])
    assert hops["polls"]["messages_without_a_write_after"] == 0
    assert out["sink_histogram"]["rows"] >= hops["polls"]["writes"] > 0
    assert out["p99_ms"] >= out["p50_ms"] >= hops["polled"]["p50"] > 0
    assert hops["polls"]["writes"] == writes_per_poll * hops["polls"]["non_empty"]
    assert summary(out)["writes_per_non_empty_poll"] == writes_per_poll
