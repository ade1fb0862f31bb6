"""The stream's memory reading Kafka (issue 12): RSS against distinct cards, with and
without idle eviction, sampled every second from ``/proc/PID/status`` while ``skewless
stream --no-tail`` drains a topic this process produced first (``python -m bench.memory
--kafka --cards 10000,100000,1000000``)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import numpy as np

DEFAULT_CARDS = (10_000, 100_000)
_T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def kafka_events(
    cards: int, per_card: int = 4, window: int = 40_000, seed: int = 11
) -> Iterator[list[tuple[bytes, bytes]]]:
    """``cards * per_card`` Kafka messages ``(key, JSON)`` in chunks, in time order over 30
    days: exactly ``cards`` distinct cards, each card's events within one window of
    ``window`` consecutive events (shuffled in it), so cards come, go idle and never return
    after their window: the population a worker holds stays bounded while the distinct
    cards grow. 200 merchants. Built chunk by chunk (never all in memory)."""
    rng = np.random.default_rng(seed)
    n = cards * per_card
    step = 30 * 86_400_000 / n
    for lo in range(0, n, window):
        hi = min(lo + window, n)
        card = np.arange(lo, hi, dtype=np.int64) // per_card
        rng.shuffle(card)
        t = _T0 + (np.arange(lo, hi) * step).astype(np.int64)
        merchant = rng.integers(0, 200, hi - lo)
        amount = np.round(rng.lognormal(3.0, 1.2, hi - lo), 2).clip(0.01, 100_000.0)
        out = []
        for i, c, ts, m, a in zip(
            range(lo, hi), card.tolist(), t.tolist(), merchant.tolist(), amount.tolist(),
            strict=True,
        ):  # fmt: skip
            when = datetime.fromtimestamp(ts / 1000, UTC).isoformat(timespec="milliseconds")
            value = (
                f'{{"transaction_id":"m{i:012d}","card_id":{c},"merchant_id":{m},'
                f'"amount":{a},"currency":"EUR","country":"FR","mcc":5411,'
                f'"event_time":"{when[:-6]}Z"}}'
            )
            out.append((str(c).encode(), value.encode()))
        yield out


def _status_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of ``pid`` in KiB, from /proc/PID/status."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line[:5]] = int(line.split()[1])
    return out


def _scrape(port: int) -> dict[str, float]:
    """The stream's counters that say how far it is (its Prometheus endpoint)."""
    import urllib.request

    names = {
        "skewless_stream_events_in_total": "events",
        "skewless_stream_entities_held": "held",
        "skewless_stream_entities_evicted_total": "evicted",
    }
    out: dict[str, float] = {}
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
    except OSError:
        return out
    for line in text.decode().splitlines():
        name, _, value = line.partition(" ")
        if name in names:
            out[names[name]] = float(value)
    return out


def _slope(samples: list[dict[str, Any]], per_card: int) -> float | None:
    """RSS bytes per extra distinct card (least squares) over the samples of the run's
    second half, when eviction (if any) is well under way; None with too few samples."""
    pts = [s for s in samples if "events" in s]
    pts = pts[len(pts) // 2 :]
    if len(pts) < 5:
        return None
    x = np.array([s["events"] / per_card for s in pts])
    y = np.array([s["rss_kb"] * 1024.0 for s in pts])
    if np.ptp(x) == 0:
        return None
    return float(np.polyfit(x, y, 1)[0])


def stream_kafka_rss(
    sizes: tuple[int, ...] = DEFAULT_CARDS,
    evict_after_s: float = 1.0,
    per_card: int = 4,
    brokers: str = "",
    redis_url: str = "",
) -> dict[str, Any]:
    """RSS of the real stream reading **Kafka** (``skewless stream --no-tail``, one worker)
    against distinct cards, without and with ``--evict-after`` (issue 12). Per size, the
    events (:func:`kafka_events`) are produced to a fresh 1-partition topic first, by this
    process (not the measured one); then each run drains the topic from the start. The
    stream's ``/proc/PID/status`` is sampled every second (VmRSS, and VmHWM for the peak)
    with its events/held/evicted counters, so RSS is known against distinct cards seen;
    ``slope_bytes_per_card`` is RSS growth per extra distinct card over the run's second
    half; ``online_rows_sha256`` digests the online rows (the same with and without
    eviction: the values stay exact). Starts its own Kafka and Redis
    (``scripts/services.sh``) unless given.
    ``python -m bench.memory --kafka --cards 10000,100000,1000000``."""
    import socket
    import tempfile
    from pathlib import Path

    import redis

    from flows.produce import produce_messages

    root = Path(__file__).resolve().parents[1]
    work = Path(tempfile.mkdtemp(prefix="skewless-bench-memkafka-"))
    services = str(root / "scripts" / "services.sh")
    started: list[str] = []

    def start(what: str) -> str:
        proc = subprocess.run(
            [services, f"{what}-start", str(work / what)], capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{what}-start failed: {proc.stderr.strip()[-500:]}")
        started.append(what)
        return proc.stdout.strip().splitlines()[-1]

    rows: list[dict[str, Any]] = []
    try:
        brokers = brokers or start("kafka")
        redis_url = redis_url or f"redis://{start('redis')}/0"
        url = redis_url.rsplit("/", 1)[0] + "/13"
        for cards in sizes:
            topic = f"memory-{cards}-{int(time.time())}"
            _create_topic(brokers, topic)
            t0 = time.perf_counter()
            for chunk in kafka_events(cards, per_card):
                report = produce_messages(brokers, topic, chunk, progress=False)
                if report.failed:
                    raise RuntimeError(f"produce to {topic}: {report.first_error}")
            produced_s = time.perf_counter() - t0
            for evict in (0.0, evict_after_s):
                client = redis.Redis.from_url(url)
                client.flushdb()
                with socket.socket() as s:
                    s.bind(("127.0.0.1", 0))
                    port = int(s.getsockname()[1])
                env = {k: v for k, v in os.environ.items() if not k.startswith("SKEWLESS_")}
                env.update(
                    SKEWLESS_REDIS_URL=url, SKEWLESS_DATA_DIR=str(work / "data"),
                    SKEWLESS_KAFKA_BOOTSTRAP=brokers, SKEWLESS_TOPIC=topic,
                    SKEWLESS_METRICS_PORT=str(port),
                    PYTHONPATH=os.environ.get("PYTHONPATH", str(root)),
                )  # fmt: skip
                args = [sys.executable, "-m", "skewless", "stream", "--no-tail"]
                args += ["--evict-after", str(evict)]
                start_t = time.perf_counter()
                log = (work / f"stream-{cards}-{evict}.log").open("wb")
                p = subprocess.Popen(args, cwd=root, env=env, stdout=log, stderr=log)
                samples: list[dict[str, Any]] = []
                peak = 0
                while p.poll() is None:
                    time.sleep(1.0)
                    try:
                        st = _status_kb(p.pid)
                    except OSError:
                        break
                    if not st.get("VmRSS"):
                        break  # exited (a zombie has no memory left)
                    peak = max(peak, st.get("VmHWM", 0))
                    sample = {"s": round(time.perf_counter() - start_t, 1),
                              "rss_kb": st.get("VmRSS", 0), **_scrape(port)}  # fmt: skip
                    samples.append(sample)
                log.close()
                if p.wait() != 0:
                    tail = (work / f"stream-{cards}-{evict}.log").read_text()[-800:]
                    raise RuntimeError(f"stream ({cards} cards) failed: {tail}")
                evicted = sum(1 for _ in client.scan_iter(match=b"skewless:*:evicted:*"))
                digest = _online_digest(client)
                client.close()
                slope = _slope(samples, per_card)
                rows.append(
                    {
                        "cards": cards, "events": cards * per_card, "evict_after_s": evict,
                        "peak_rss_mb": round(peak / 1024, 1),
                        "end_rss_mb": round(samples[-1]["rss_kb"] / 1024, 1) if samples else None,
                        "slope_bytes_per_card": None if slope is None else round(slope),
                        "max_held": max((s.get("held", 0) for s in samples), default=0),
                        "seconds": round(time.perf_counter() - start_t, 1),
                        "produce_seconds": round(produced_s, 1),
                        "evicted_snapshots_in_redis": evicted,
                        "online_rows_sha256": digest,
                        "rss_over_time": [
                            [s["s"], s["rss_kb"], s.get("events"), s.get("held")]
                            for s in samples
                        ],
                    }
                )  # fmt: skip
    finally:
        for what in started:
            subprocess.run([services, f"{what}-stop", str(work / what)], capture_output=True)
    return {"stream_kafka_rss": rows, "rss_over_time": "[seconds, VmRSS KiB, events, held]"}


def _online_digest(client: Any) -> str:
    """SHA-256 over every entity hash in the database, sorted (not the stream's own
    ``skewless:*`` keys): equal with and without eviction when the values are exact."""
    import hashlib

    keys = sorted(k for k in client.scan_iter(count=10_000) if not k.startswith(b"skewless:"))
    h = hashlib.sha256()
    for i in range(0, len(keys), 2_000):
        pipe = client.pipeline(transaction=False)
        for k in keys[i : i + 2_000]:
            pipe.hgetall(k)
        for k, fields in zip(keys[i : i + 2_000], pipe.execute(), strict=True):
            h.update(k)
            for f in sorted(fields):
                h.update(b"%d:%s%d:%s" % (len(f), f, len(fields[f]), fields[f]))
    return h.hexdigest()


def _create_topic(brokers: str, topic: str) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": brokers})
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(60)
