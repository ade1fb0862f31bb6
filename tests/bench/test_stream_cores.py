"""Where a drain's cores go (``bench/stream_cores.py``): each component's CPU over the
drain's own window, and what the machine's cores allow a second worker."""

from __future__ import annotations

from pathlib import Path

from bench.stream_cores import Sampler, ceiling, cores, sampled
from flows.simulate import SimulationConfig, simulate


def test_cores_are_cpu_seconds_over_the_window_interpolated_between_samples() -> None:
    s = Sampler(stream_pid=0, others={})
    s.names = {"thread:7": "timely:work-0"}
    s.samples = [  # (wall, CPU seconds so far)
        (10.0, {"thread:7": 1.0, "broker": 5.0, "machine_busy": 100.0, "machine_idle": 50.0}),
        (12.0, {"thread:7": 2.0, "broker": 5.2, "machine_busy": 103.0, "machine_idle": 51.0}),
        (14.0, {"thread:7": 3.0, "broker": 5.4, "machine_busy": 106.0, "machine_idle": 52.0}),
    ]
    got = cores(s, 11.0, 13.0)  # 1.0 s of the thread over 2 s, 0.2 s of the broker
    assert got["wall_s"] == 2.0
    assert got["stream_threads"] == {"timely:work-0 (7)": 0.5}
    assert got["stream_process"] == 0.5 and got["broker"] == 0.1
    assert got["machine_busy"] == 1.5 and got["machine_idle"] == 0.5
    assert got["everything_else"] == 0.9


def test_ceiling_from_one_workers_cpu_per_event() -> None:
    one = {"cpu_us_per_event": {"stream_process": 15.0, "busiest_thread": 14.0,
                                "broker": 2.0, "redis": 3.0}}  # fmt: skip
    got = ceiling(one, 2)
    assert got["one_worker_at_a_full_core_events_per_s"] == 71_429
    assert got["cores_it_needs_with_broker_and_redis"] == 1.43
    assert got["all_2_cores_events_per_s"] == 100_000
    assert got["second_worker_adds_at_most"] == 0.4
    assert ceiling(one, 8)["second_worker_adds_at_most"] == 1.0


def test_a_sampled_drain_counts_every_event_and_finds_the_services(
    kafka_bootstrap: str, redis_url: str, tmp_path: Path
) -> None:
    from bench.stream import _env, _pairs, _topic
    from flows.produce import produce_messages
    from tests.integration import stream_support as sup

    table = simulate(SimulationConfig(events=3_000, cards=100, merchants=10, days=1.0))
    topic = _topic(kafka_bootstrap, "bench-scale", partitions=2)
    assert produce_messages(kafka_bootstrap, topic, _pairs(table)).failed == 0
    url = sup.redis_db_url(redis_url, 13)
    env = lambda: _env(kafka_bootstrap, sup.fresh_db_url(redis_url, 13), topic, tmp_path)  # noqa: E731
    got = sampled(env, kafka_bootstrap, url, tmp_path, (1,))
    w1 = got["w1"]
    assert w1["events"] == 3_000
    assert {"broker", "redis"} <= set(w1["cpu_us_per_event"])
    assert w1["stream_process"] > 0 and w1["wall_s"] > 0
    assert got["ceiling"]["cores_it_needs_with_broker_and_redis"] >= 1.0
