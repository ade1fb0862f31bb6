"""A missing service gets a message naming it and how to start it, fast, not a hang."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.simulate import SimulationConfig, simulate, write_events

ROOT = Path(__file__).resolve().parents[2]


def _dead_port() -> int:
    with socket.socket() as s:  # bound then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("env", "args", "service", "script"),
    [
        (
            {"SKEWLESS_KAFKA_BOOTSTRAP": "127.0.0.1:{port}"},
            ["stream", "--no-tail"],
            "Kafka",
            "kafka-start",
        ),
        (
            {"SKEWLESS_KAFKA_BOOTSTRAP": "127.0.0.1:{port}"},
            ["produce", "--events", "x.parquet"],
            "Kafka",
            "kafka-start",
        ),
        (
            {"SKEWLESS_REDIS_URL": "redis://127.0.0.1:{port}/0"},
            ["stream", "--replay", "x.parquet"],
            "Redis",
            "redis-start",
        ),
    ],
)
def test_missing_service_is_named_with_how_to_start_it(
    env: dict[str, str], args: list[str], service: str, script: str, tmp_path: Path
) -> None:
    port = _dead_port()
    # a real input: the input is checked first (no such file), the service after it
    write_events(
        simulate(SimulationConfig(events=10, cards=2, merchants=2)), tmp_path / "x.parquet"
    )
    full = {k: v for k, v in os.environ.items() if not k.startswith("SKEWLESS_")}
    full.update({k: v.format(port=port) for k, v in env.items()})
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "skewless", *args],
        cwd=tmp_path,
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert (
        f"{service} at 127.0.0.1:{port}" in done.stderr
        or f"{service} at redis://127.0.0.1:{port}" in done.stderr
    )
    assert f"scripts/services.sh {script}" in done.stderr
    assert time.monotonic() - start < 30
