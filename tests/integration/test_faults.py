"""Faults end to end, bounded in time: a broker restart mid-stream, a scoring-server
restart mid-run, and a sustained load on the server. Each must end with zero lost events,
zero wrong features and zero errors."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from features.reference import REFERENCE
from features.store import StoreConfig, open_store
from flows.backfill import compute_features
from serving._proto.skewless.v1 import scorer_pb2 as pb
from serving._proto.skewless.v1 import scorer_pb2_grpc as pb_grpc
from serving.convert import event_transaction
from serving.testing import publish_synthetic_model
from skewless.verify import check_online_states, values_agree
from tests.integration import stream_support as sup
from tests.service_fixtures import KafkaBroker

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_until_exact(
    url: str, table: pa.Table, proc: subprocess.Popen[Any], log: Path, timeout: float
) -> None:
    """Poll until every entity's online state equals the backfill over ``table``."""
    store = open_store(StoreConfig(redis_url=url), REFERENCE)
    events = sup.accepted(table)
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"the flow died:\n{log.read_text()[-3000:]}"
        report = check_online_states(
            REFERENCE, store, events, sample_per_entity=100_000, times_per_entity=2
        )
        if report.mismatches == 0:
            return
        assert time.monotonic() < deadline, (
            f"not exact after {timeout}s: {report.mismatches} mismatches"
        )
        time.sleep(1.0)


@pytest.fixture(scope="module")
def streamed_through_a_broker_restart(
    kafka_broker: KafkaBroker, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """Half the events, a broker restart while the flow tails the topic, then the rest."""
    work = tmp_path_factory.mktemp("faults")
    table = sup.events(16_000, seed=31, cards=600, merchants=60, days=3.0)
    first, second = table.slice(0, 8_000), table.slice(8_000)
    topic = sup.create_topic(kafka_broker.bootstrap, "faults", 2)
    sup.produce_mixed(kafka_broker.bootstrap, topic, first, [])
    url = sup.redis_db_url(redis_url, 8)
    log = work / "flow.log"
    env = sup.stream_env(kafka_broker.bootstrap, url, topic, work)
    f = log.open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "skewless", "stream"],
        cwd=sup.ROOT,
        env=env,
        stdout=f,
        stderr=subprocess.STDOUT,
    )
    try:
        sup.wait_for_keys(url, 100, proc)
        with kafka_broker.stopped(3):
            pass
        sup.produce_mixed(kafka_broker.bootstrap, topic, second, [])
        _wait_until_exact(url, table, proc, log, timeout=180)
    finally:
        sup.stop(proc)
    return {"table": table, "url": url, "work": work}


def test_broker_restart_mid_stream_loses_nothing(
    streamed_through_a_broker_restart: dict[str, Any],
) -> None:
    # the fixture already waited for exactness; check every entity once more, all times
    run = streamed_through_a_broker_restart
    report = check_online_states(
        REFERENCE, open_store(StoreConfig(redis_url=run["url"]), REFERENCE), sup.accepted(run["table"]),
        sample_per_entity=100_000, times_per_entity=4,
    )  # fmt: skip
    assert report.missing_states == {"card": 0, "merchant": 0}
    assert report.mismatches == 0 and report.compared > 5_000


class _Server:
    def __init__(self, run: dict[str, Any], registry: Path, port: int) -> None:
        self.args = [sys.executable, "-m", "skewless", "serve", "--address", f"127.0.0.1:{port}",
                     "--registry", str(registry), "--redis-url", run["url"], "--no-prediction-log"]  # fmt: skip
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SKEWLESS_")}
        self.log = run["work"] / f"serve-{port}.log"
        self.proc: subprocess.Popen[Any] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.args,
            cwd=sup.ROOT,
            env=self.env,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(30) == 0, self.log.read_text()[-2000:]

    def wait_serving(self, channel: grpc.Channel, timeout: float = 60) -> None:
        """What a load balancer does: route to the server only once health says SERVING."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + timeout
        while True:
            try:
                req = health_pb2.HealthCheckRequest()
                if (
                    health.Check(req, timeout=1, wait_for_ready=True).status
                    == health_pb2.HealthCheckResponse.SERVING
                ):
                    return
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline, self.log.read_text()[-2000:]
            time.sleep(0.1)

    def rss_mb(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")


def _requests(table: pa.Table) -> tuple[list[pb.ScoreRequest], pa.Table]:
    """The last hour's events, scored at their own times (every earlier event ingested)."""
    ms = pc.cast(table.column("event_time"), pa.int64())
    recent = table.filter(pc.greater_equal(ms, int(pc.max(ms).as_py()) - 3_600_000))
    rows = recent.drop(["is_fraud"]).to_pylist()
    reqs = []
    for r in rows:
        r["event_time"] = int(r["event_time"].timestamp() * 1000)
        reqs.append(pb.ScoreRequest(transaction=event_transaction(r), include_features=True))
    return reqs, recent


def _check_features(resps: list[pb.ScoreResponse], recent: pa.Table, table: pa.Table) -> int:
    want = compute_features(REFERENCE, recent, sup.accepted(table))
    ops = {a.name: a.op for a in REFERENCE.aggregations}
    wrong = 0
    for i, resp in enumerate(resps):
        for f in resp.features:
            w = want.column(f.name)[i].as_py()
            w = float("nan") if w is None else float(w)
            ok, _ = values_agree(
                ops.get(f.name, ops["card_amount_sum_1h"]),
                float("nan") if f.missing else f.value,
                w,
                1e7,
            )
            wrong += not ok
    return wrong


def _serve(run: dict[str, Any], tmp_path: Path, seed: int) -> tuple[_Server, grpc.Channel, Any]:
    """A registered model, a `skewless serve` process on the run's Redis, a ready stub."""
    registry = tmp_path / "registry"
    publish_synthetic_model(registry, seed=seed, fs=REFERENCE)
    port = _free_port()
    server = _Server(run, registry, port)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    server.wait_serving(channel)
    return server, channel, pb_grpc.ScorerStub(channel)


def test_server_restart_mid_run_fails_no_request_and_serves_exact_features(
    streamed_through_a_broker_restart: dict[str, Any], tmp_path: Path
) -> None:
    run = streamed_through_a_broker_restart
    reqs, recent = _requests(run["table"])
    assert len(reqs) > 50
    server, channel, stub = _serve(run, tmp_path, seed=3)
    resps = []
    for i, req in enumerate(reqs):
        if i == len(reqs) // 2:  # restart (graceful stop), on the same port, halfway through
            server.stop()
            server.start()
            server.wait_serving(channel)
        resps.append(stub.Score(req, timeout=10))
    channel.close()
    server.stop()
    assert [r.transaction_id for r in resps] == [r.transaction.transaction_id for r in reqs]
    assert _check_features(resps, recent, run["table"]) == 0


def test_sustained_load_30s_flat_memory_zero_errors(
    streamed_through_a_broker_restart: dict[str, Any], tmp_path: Path
) -> None:
    """4 clients for 30 s: no error, and the server's RSS flat after warm-up. The bound is
    the 60 s soak's, per second of load: it allowed 10% + 5 MB over the ~45 s after its
    warm-up; 17.5 s here is 0.39 of that, and 3.5% + 1.9 MB is under 0.39 of both, so a
    leak per request that failed it fails this. The server's timed work (the registry
    poll, every 1 s) still runs ~30 times. RSS sampled every second stayed within 0.25 MB
    from 8 s to 60 s (30,500 requests, load ~6): docs/perf-plan.md, "Session 11: the
    suite's time"."""
    run = streamed_through_a_broker_restart
    reqs, _ = _requests(run["table"])
    server, channel, stub = _serve(run, tmp_path, seed=4)
    errors: list[str] = []
    done = [0]
    stop = threading.Event()

    def load() -> None:
        i = 0
        while not stop.is_set():
            try:
                stub.Score(reqs[i % len(reqs)], timeout=5)
                done[0] += 1
            except grpc.RpcError as exc:
                errors.append(f"{exc.code()}: {exc.details()}")
            i += 1

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    samples = []
    try:
        for _ in range(6):  # 30 s, RSS every 5 s
            time.sleep(5)
            samples.append(server.rss_mb())
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    channel.close()
    server.stop()
    assert errors == []
    assert done[0] > 1_000
    warm = np.median(samples[1:3])  # after warm-up (10 s, 15 s)
    assert samples[-1] < warm * 1.035 + 1.9, f"memory grew: {samples}"
