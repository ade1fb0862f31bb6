"""``skewless serve --workers 2`` as real processes: both workers answer on the one port
(each logging to its own prediction-log shard), SIGTERM to the parent stops them all and
exits 0, and a worker that dies takes the service down with a non-zero exit code."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import psutil
import pyarrow.parquet as pq
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving._proto.skewless.v1 import scorer_pb2 as pb
from serving._proto.skewless.v1 import scorer_pb2_grpc as pb_grpc
from serving.convert import event_transaction
from tests.serving.conftest import NOW, ev
from tests.serving.test_cli import MAIN, REPO

#: connections opened; each lands on a worker picked by the kernel's SO_REUSEPORT hash,
#: so all on one worker has probability 2 * 2**-CONNECTIONS
CONNECTIONS = 24


@pytest.fixture
def workers(
    registry: Path, feast_dir: Path, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[str], int, Path]]:
    """(parent, port, data dir) of ``serve --workers 2`` on a free port."""
    data = tmp_path / "data"
    data.mkdir()
    shutil.copytree(feast_dir, data / "feast")
    env = {
        **os.environ,
        "SKEWLESS_DATA_DIR": str(data),
        "SKEWLESS_REGISTRY_DIR": str(registry),
        "SKEWLESS_GRPC_ADDRESS": "127.0.0.1:0",
        "SKEWLESS_REDIS_URL": "",
        "SKEWLESS_KAFKA_BOOTSTRAP": "",
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", MAIN, "serve", "--workers", "2", "--grace", "5"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # once both workers listen
        assert line.startswith("listening on port "), proc.stderr.read() if proc.stderr else line
        yield proc, int(line.split()[-1]), data
    finally:
        if proc.poll() is None:
            for child in psutil.Process(proc.pid).children():
                child.kill()
            proc.kill()
            proc.wait(10)


def _channel(port: int) -> grpc.Channel:
    # a private subchannel pool: a new TCP connection, not one shared with other channels
    return grpc.insecure_channel(f"127.0.0.1:{port}", [("grpc.use_local_subchannel_pool", 1)])


def _wait_serving(channel: grpc.Channel, timeout: float = 120.0) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout
    while health.Check(health_pb2.HealthCheckRequest(), timeout=10).status != 1:
        assert time.monotonic() < deadline, "worker never became SERVING"
        time.sleep(0.1)


def test_two_workers_answer_and_stop_cleanly(
    workers: tuple[subprocess.Popen[str], int, Path],
) -> None:
    proc, port, data = workers
    pids = [c.pid for c in psutil.Process(proc.pid).children()]
    assert len(set(pids)) == 2 and proc.pid not in pids
    sent = []
    for i in range(CONNECTIONS):
        with _channel(port) as ch:
            _wait_serving(ch)
            tx = event_transaction(ev(f"w{i}", 1, 10, 5.0 + i, NOW))
            assert pb_grpc.ScorerStub(ch).Score(pb.ScoreRequest(transaction=tx), timeout=10)
            sent.append(f"w{i}")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in pids)
    shards = {
        w: sorted((data / "predictions").glob(f"predictions-{w}-*.parquet")) for w in ("w0", "w1")
    }
    logged = {w: pq.read_table(files).column("transaction_id").to_pylist() if files else []
              for w, files in shards.items()}  # fmt: skip
    assert logged["w0"] and logged["w1"], logged  # both workers answered
    assert sorted(logged["w0"] + logged["w1"]) == sorted(sent)  # each row once


def test_a_dead_worker_stops_the_service(
    workers: tuple[subprocess.Popen[str], int, Path],
) -> None:
    proc, _, _ = workers
    first, second = psutil.Process(proc.pid).children()
    first.kill()
    assert proc.wait(60) == 1
    second.wait(30)  # stopped by the parent (psutil cannot see a grandchild's exit code)
    assert not second.is_running()
    assert proc.stderr is not None
    err = proc.stderr.read()
    assert f"(pid {first.pid}) exited with code -9; stopping the others" in err, err[-2000:]
