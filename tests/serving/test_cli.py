"""``skewless serve`` / ``skewless score``: the client against a real server, and the
server as a real process stopped by SIGTERM (graceful: in-flight calls finish, the
prediction log is flushed)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from features.settings import Settings
from serving._proto.skewless.v1 import scorer_pb2 as pb
from serving._proto.skewless.v1 import scorer_pb2_grpc as pb_grpc
from serving.cli import add_cli
from serving.convert import event_transaction
from tests.serving.conftest import NOW, RunningServer, ev

REPO = Path(__file__).resolve().parents[2]

#: the CLI wiring skewless/cli.py does, in a few lines (so this runs as a subprocess too)
MAIN = """
import argparse, os, sys
from features.settings import Settings
from serving.cli import add_cli
p = argparse.ArgumentParser(); sub = p.add_subparsers(dest="command"); handlers = {}
add_cli(sub, lambda name: lambda fn: handlers.setdefault(name, fn))
args = p.parse_args(sys.argv[1:])
sys.exit(handlers[args.command](args, Settings.from_env(os.environ)))
"""


def run_cli(argv: list[str], settings: Settings) -> int:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command")
    handlers: dict[str, Any] = {}
    add_cli(sub, lambda name: lambda fn: handlers.setdefault(name, fn))
    args = p.parse_args(argv)
    return int(handlers[args.command](args, settings))


def test_score_one_event_from_flags(
    server: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(grpc_address=server.address)
    argv = ["score", "--transaction-id", "cli1", "--card-id", "1", "--merchant-id", "10",
            "--amount", "50", "--event-time", str(NOW), "--include-features"]  # fmt: skip
    assert run_cli(argv, settings) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["transaction_id"] == "cli1" and out["model_version"] == "v0001"
    assert out["features"]["card_txn_count_10m"] == 6.0
    assert [e["age_ms"] for e in out["entities"]] == [300_000, 300_000]


def test_score_json_and_errors(server: RunningServer, capsys: pytest.CaptureFixture[str]) -> None:
    settings = Settings(grpc_address=server.address)
    obj = {"transaction_id": "j1", "card_id": 2, "merchant_id": 10, "amount": 3.5,
           "currency": "EUR", "country": "FR", "mcc": 1,
           "event_time": "2026-01-01T10:12:00Z"}  # fmt: skip
    assert run_cli(["score", "--json", json.dumps(obj)], settings) == 0
    assert json.loads(capsys.readouterr().out)["transaction_id"] == "j1"
    old = {**obj, "card_id": 1, "event_time": "2026-01-01T08:00:00Z"}  # server-side refusal
    assert run_cli(["score", "--json", json.dumps(old)], settings) == 1
    assert capsys.readouterr().err.startswith(
        "skewless score: FAILED_PRECONDITION: event.event_time: "
    )


def test_score_files(
    server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(grpc_address=server.address)
    rows = [{"transaction_id": f"f{i}", "card_id": 1 + i % 3, "merchant_id": 10, "amount": 1.0 + i,
             "currency": "EUR", "country": "FR", "mcc": 5411, "event_time": NOW + i}
            for i in range(7)]  # fmt: skip
    bad = {**rows[0], "transaction_id": "bad", "amount": -1.0}
    jsonl = tmp_path / "events.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in [*rows[:3], bad, *rows[3:]]) + "\n")
    assert run_cli(["score", "--file", str(jsonl), "--batch-size", "3"], settings) == 0
    cap = capsys.readouterr()
    assert [json.loads(line)["transaction_id"] for line in cap.out.splitlines()] == [
        f"f{i}" for i in range(7)
    ]
    assert "events.jsonl:4: skipped: amount: -1.0 must be finite" in cap.err
    table = pa.Table.from_pylist(rows)
    table = table.set_column(
        table.schema.get_field_index("event_time"), "event_time",
        pa.array([r["event_time"] for r in rows], pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
    )  # fmt: skip
    pq.write_table(table, tmp_path / "events.parquet")
    assert run_cli(["score", "--file", str(tmp_path / "events.parquet")], settings) == 0
    scores = [json.loads(line)["score"] for line in capsys.readouterr().out.splitlines()]
    single = server.stub.Score(pb.ScoreRequest(transaction=event_transaction(rows[4])), timeout=5)
    assert len(scores) == 7 and scores[4] == single.score


@pytest.fixture
def served(
    registry: Path, feast_dir: Path, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[str], str, Path]]:
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
        [sys.executable, "-c", MAIN, "serve", "--grace", "5"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until bound (or the process died)
        assert line.startswith("listening on port "), proc.stderr.read() if proc.stderr else line
        yield proc, f"127.0.0.1:{int(line.split()[-1])}", data
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_sigterm_stops_gracefully(served: tuple[subprocess.Popen[str], str, Path]) -> None:
    proc, address, data = served
    channel = grpc.insecure_channel(address)
    health = health_pb2_grpc.HealthStub(channel)
    start = time.monotonic()
    while health.Check(health_pb2.HealthCheckRequest(), timeout=5).status != 1:
        assert time.monotonic() - start < 60, "server never became SERVING"
        time.sleep(0.1)
    stub = pb_grpc.ScorerStub(channel)

    def requests() -> Iterator[pb.ScoreRequest]:
        for i in range(10):  # a stream in flight across the SIGTERM, ~1 s long
            yield pb.ScoreRequest(transaction=event_transaction(ev(f"g{i}", 1, 10, 9.0, NOW)))
            time.sleep(0.1)

    got: list[str] = []
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            got.extend(r.transaction_id for r in stub.ScoreStream(requests(), timeout=30))
        except BaseException as exc:  # recorded, asserted below
            errors.append(exc)

    t = threading.Thread(target=consume)
    t.start()
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    t.join(15)
    assert proc.wait(15) == 0
    channel.close()
    assert errors == [] and got == [f"g{i}" for i in range(10)]
    files = sorted((data / "predictions").glob("predictions-*.parquet"))
    logged = pq.read_table(files).column("transaction_id").to_pylist() if files else []
    assert logged == got  # flushed on shutdown


@pytest.mark.parametrize("setting", ["address", "metrics_port"])
def test_serve_on_a_busy_port_says_so_in_one_line(
    registry: Path, tmp_path: Path, setting: str
) -> None:
    """The real console entry (``python -m skewless serve``) while another socket holds the
    port: one line on stderr naming the setting and the address, exit code 2, no traceback."""
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        address = f"127.0.0.1:{port}"
        env = {
            **os.environ,
            "SKEWLESS_DATA_DIR": str(tmp_path),
            "SKEWLESS_REGISTRY_DIR": str(registry),
            "SKEWLESS_REDIS_URL": "",
            "SKEWLESS_KAFKA_BOOTSTRAP": "",
            "SKEWLESS_METRICS_PORT": "0",
        }
        for leaked in ("PROMETHEUS_MULTIPROC_DIR", "PROMETHEUS_MULTIPROCESS_DIR"):
            env.pop(leaked, None)  # set by feast's import in this test process
        flags = (
            ["--address", address]
            if setting == "address"
            else ["--address", "127.0.0.1:0", "--metrics-port", str(port)]
        )
        proc = subprocess.run(
            [sys.executable, "-m", "skewless", "serve", *flags, "--no-prediction-log"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.splitlines() == [
        f"skewless serve: {setting}: cannot bind {address}: address already in use"
    ]
    assert proc.returncode == 2
