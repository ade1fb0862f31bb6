"""The freshness bench's hop table, from a timeline written by ``bench/stream_trace.py``."""

from __future__ import annotations

from bench.stream_fresh import hops, quantile


def test_hops_follow_each_message_from_its_poll_to_the_write_after_its_decode() -> None:
    trace = {
        # (start, end, messages, index of its timestamps); an empty poll has -1
        "polls": [(10.000, 10.001, 2, 0), (10.002, 10.003, 0, -1), (10.020, 10.021, 1, 1)],
        "stamps": [[9_990, 9_995], [10_018]],
        "decodes": [(10.001, 10.003, [0]), (10.021, 10.022, [1])],
        "prefetches": [(10.003, 10.004)],
        "writes": [(10.010, 10.015, 3)],  # none after the second decode
        "cpu": [(10.015, 1.0), (10.515, 1.25)],
        "sched": [(10.0, 1.0, 0.1), (12.0, 2.0, 0.5)],  # (wall, on a CPU, waiting for one)
        "gcs": [(9.0, 9.1, 2), (10.1, 10.12, 1), (10.2, 10.201, 0)],  # the first: before
        "snapshots": [10.5, 10.51, 10.52, 11.0],  # two end-of-epoch passes
    }
    got = hops(trace)
    assert got["polled"] == {"n": 2, "p50": 8.5, "p95": 10.8, "p99": 10.9, "max": 11.0}
    assert got["total"]["p50"] == 22.5 and got["total"]["max"] == 25.0
    for hop, ms in (("poll_call", 1.0), ("decode", 2.0), ("prefetch", 1.0), ("steps", 6.0),
                    ("write", 5.0)):  # fmt: skip
        assert got[hop]["n"] == 2 and got[hop]["p50"] == got[hop]["max"] == ms, hop
    assert got["polls"]["non_empty"] == 2 and got["polls"]["messages_without_a_write_after"] == 1
    assert got["polls"]["gap_between_polls_ms"]["max"] == 18.0
    assert got["stream_cpu_per_wall"] == 0.5
    assert got["stream_cpu_us_per_event"] == 250_000.0  # 0.25 s over the one message polled then
    assert got["pauses"] == {
        "gc_gen0": {"count": 1, "max_ms": 1.0, "total_ms": 1.0},
        "gc_gen1": {"count": 1, "max_ms": 20.0, "total_ms": 20.0},
        "snapshot_passes": [
            {"at_s": 0.5, "keys": 3, "ms": 20.0},
            {"at_s": 1.0, "keys": 1, "ms": 0.0},
        ],
    }
    assert got["worker_thread_share"] == {"on_cpu": 0.5, "waiting_for_a_cpu": 0.2}


def test_quantile_interpolates_within_a_bucket_as_prometheus_does() -> None:
    buckets = [(0.1, 98.0), (0.125, 99.0), (0.15, 100.0), (float("inf"), 100.0)]
    assert quantile(buckets, 0.99) == 0.125
    assert abs(quantile(buckets, 0.5) - 0.1 * 50 / 98) < 1e-12
    assert quantile([(0.1, 0.0), (float("inf"), 0.0)], 0.5) != quantile(buckets, 0.5)


def test_trace_counts_rows_alone_or_in_a_shard_s_list_and_not_ticks() -> None:
    from bench.stream_trace import _rows
    from flows.stream_io import RowOut
    from flows.stream_sink import TICK

    row = RowOut("card", None, 1_700_000_000_000)  # type: ignore[arg-type]
    assert _rows([row, TICK, [row, row]]) == 3
    assert _rows([TICK]) == 0
