"""Memory benchmark: live state per active card in the native core, as the stream holds it.

Each size runs in a fresh process (``python -m bench.memory --cards N``), so the figures
are not blurred by memory an earlier size freed: N distinct cards, ``events_per_card``
events each spread over two days, fed in time order through the card layout's native core
as :class:`flows.stream.EntityLogic` feeds it (``update``, then ``row`` when applied: the
row compacts the state and encodes it), every state held in a dict by card id. Reported:

* ``rss_bytes_per_card``: resident-set growth while feeding, over N (the events are built
  before the first reading);
* ``heap_bytes_per_card``: what the core counts of its own allocations per state
  (``State.heap_bytes``; absent from a build that cannot count them);
* ``encoded_bytes_per_card``: the mean serialized state, for scale;
* ``events_per_s``: the feeding rate (update and row, one Python call each), for scale.

The budget (DESIGN.md, performance budget: memory) is 2 KB live state per active card.
``SKEWLESS_BENCH_MEMORY_CARDS`` (comma-separated) sets the sizes; the default is 10k and
100k (1M takes ~1 min more: ``SKEWLESS_BENCH_MEMORY_CARDS=10000,100000,1000000``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

import numpy as np

BUDGET_BYTES = 2048
DEFAULT_CARDS = (10_000, 100_000)
_T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def events(cards: int, per_card: int, seed: int = 7) -> tuple[list[int], list[int], list[float]]:
    """``(card ids, event times, amounts)`` in time order: ``per_card`` events per card
    over two days, amounts as cents (what the simulator draws)."""
    rng = np.random.default_rng(seed)
    n = cards * per_card
    card = np.repeat(np.arange(cards, dtype=np.int64), per_card)
    ts = _T0 + rng.integers(0, 2 * 86_400_000, n)
    amount = np.clip(np.round(rng.lognormal(3.0, 1.2, n), 2), 0.01, 10_000_000.0)
    order = np.argsort(ts, kind="stable")
    return card[order].tolist(), ts[order].tolist(), amount[order].tolist()


def measure(cards: int, per_card: int = 8) -> dict[str, Any]:
    """One size, in this process; see the module docstring."""
    from features.layout import compile_layouts
    from features.native import compile_core, txid_hash_native
    from features.reference import REFERENCE

    core = compile_core(compile_layouts(REFERENCE)["card"])
    ids, ts, amounts = events(cards, per_card)
    before = _rss()
    start = time.perf_counter()
    states: dict[int, Any] = {}
    for i, (card, t, amount) in enumerate(zip(ids, ts, amounts, strict=True)):
        state = states.get(card)
        if state is None:
            state = states[card] = core.new_state()
        if core.update(state, t, [amount], txid_hash_native(str(i))) == 0:
            core.row(state)
    seconds = time.perf_counter() - start
    grown = _rss() - before
    heap: list[int] = [getattr(s, "heap_bytes", -1) for s in states.values()]
    encoded_total = sum(len(core.encode(s)) for s in states.values())
    out: dict[str, Any] = {
        "cards": cards,
        "events": len(ids),
        "events_per_s": round(len(ids) / seconds),
        "rss_bytes_per_card": round(grown / cards),
        "encoded_bytes_per_card": round(encoded_total / cards),
        "budget_bytes": BUDGET_BYTES,
    }
    if heap and min(heap) >= 0:  # a build that counts its own bytes
        out["heap_bytes_per_card"] = round(sum(heap) / cards)
    out["rss_vs_budget"] = round(out["rss_bytes_per_card"] / BUDGET_BYTES, 2)
    return out


def run(sizes: tuple[int, ...] | None = None) -> dict[str, Any]:
    """Every size in its own process: ``{"sizes": [one result per size]}``."""
    if sizes is None:
        env = os.environ.get("SKEWLESS_BENCH_MEMORY_CARDS")
        sizes = tuple(int(x) for x in env.split(",")) if env else DEFAULT_CARDS
    results = []
    for cards in sizes:
        proc = subprocess.run(
            [sys.executable, "-m", "bench.memory", "--cards", str(cards)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"bench.memory --cards {cards} failed: {proc.stderr.strip()}")
        results.append(json.loads(proc.stdout))
    return {"sizes": results, "budget_bytes": BUDGET_BYTES}


def stream_rss(
    sizes: tuple[int, ...] = DEFAULT_CARDS,
    evict_after_s: float = 1.0,
    per_card: int = 4,
    redis_url: str = "",
) -> dict[str, Any]:
    """Peak RSS of the real stream (``skewless stream --replay --no-tail``, one worker)
    against distinct cards, without and with ``--evict-after`` (issue 12). Each size is a
    simulated history of ``per_card`` events per card over 30 days, replayed as fast as
    the flow goes; the RSS of the stream's process is sampled every 50 ms (the peak is
    reported, with the number of evicted snapshots left in Redis). Starts its own
    Redis (``scripts/services.sh redis-start``) unless ``redis_url`` is given. 1M cards:
    ``python -m bench.memory --stream --cards 10000,100000,1000000``."""
    import tempfile
    from pathlib import Path

    import psutil
    import redis

    from flows.simulate import SimulationConfig, simulate, write_events

    root = Path(__file__).resolve().parents[1]
    work = Path(tempfile.mkdtemp(prefix="skewless-bench-memstream-"))
    services = str(root / "scripts" / "services.sh")
    started = not redis_url
    if started:
        proc = subprocess.run(
            [services, "redis-start", str(work / "redis")], capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise RuntimeError(f"redis-start failed: {proc.stderr.strip()[-500:]}")
        redis_url = f"redis://{proc.stdout.strip().splitlines()[-1]}/0"
    base = redis_url.rsplit("/", 1)[0]
    rows: list[dict[str, Any]] = []
    try:
        for cards in sizes:
            table = simulate(
                SimulationConfig(events=cards * per_card, cards=cards, merchants=200, days=30.0)
            )
            path = work / f"events-{cards}.parquet"
            write_events(table, path)
            distinct = len(set(table.column("card_id").to_pylist()))
            for evict in (0.0, evict_after_s):
                url = f"{base}/14"
                client = redis.Redis.from_url(url)
                client.flushdb()
                env = {k: v for k, v in os.environ.items() if not k.startswith("SKEWLESS_")}
                env.update(
                    SKEWLESS_REDIS_URL=url, SKEWLESS_DATA_DIR=str(work / "data"),
                    PYTHONPATH=os.environ.get("PYTHONPATH", str(root)),
                )  # fmt: skip
                args = [sys.executable, "-m", "skewless", "stream", "--replay", str(path)]
                args += ["--no-tail", "--evict-after", str(evict)]
                start = time.perf_counter()
                p = subprocess.Popen(
                    args, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
                )
                peak = 0
                ps = psutil.Process(p.pid)
                while p.poll() is None:
                    try:
                        peak = max(peak, ps.memory_info().rss)
                    except psutil.Error:
                        break
                    time.sleep(0.05)
                err = p.stderr.read().decode() if p.stderr else ""
                if p.wait() != 0:
                    raise RuntimeError(f"stream --replay ({cards} cards) failed: {err[-800:]}")
                evicted = sum(1 for _ in client.scan_iter(match=b"skewless:*:evicted:*"))
                client.close()
                rows.append(
                    {
                        "cards": distinct, "events": table.num_rows, "evict_after_s": evict,
                        "peak_rss_mb": round(peak / 2**20, 1),
                        "seconds": round(time.perf_counter() - start, 1),
                        "evicted_snapshots_in_redis": evicted,
                    }
                )  # fmt: skip
    finally:
        if started:
            subprocess.run([services, "redis-stop", str(work / "redis")], capture_output=True)
    return {"stream_rss": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cards", required=True, help="N (with --stream: N,N,...)")
    parser.add_argument("--per-card", type=int, default=8)
    parser.add_argument("--stream", action="store_true", help="the real stream's RSS: stream_rss")
    parser.add_argument(
        "--kafka", action="store_true", help="the real stream's RSS reading Kafka: stream_kafka_rss"
    )
    parser.add_argument("--evict-after", type=float, default=1.0)
    parser.add_argument("--brokers", default="", help="Kafka bootstrap (default: start one)")
    parser.add_argument("--redis-url", default="", help="Redis URL (default: start one)")
    args = parser.parse_args()
    if args.kafka:
        sizes = tuple(int(x) for x in args.cards.split(","))
        from bench.memory_kafka import stream_kafka_rss

        result = stream_kafka_rss(
            sizes, args.evict_after, brokers=args.brokers, redis_url=args.redis_url
        )
        print(json.dumps(result))
        return
    if args.stream:
        sizes = tuple(int(x) for x in args.cards.split(","))
        print(json.dumps(stream_rss(sizes), indent=1))
        return
    print(json.dumps(measure(int(args.cards), args.per_card)))


if __name__ == "__main__":
    main()
