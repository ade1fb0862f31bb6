"""A stream cluster's start: a wrong ``-i`` is refused in one line before Bytewax starts,
a member alone gives up after ``--cluster-timeout`` naming who did not answer, and
members that do start meet and leave their addresses free for Bytewax."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from flows.simulate import SimulationConfig, simulate, write_events
from flows.stream_cluster import parse_addresses, wait_for_members

ROOT = Path(__file__).resolve().parents[2]


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [int(s.getsockname()[1]) for s in socks]
    for s in socks:
        s.close()
    return ports


def _stream(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SKEWLESS_", "BYTEWAX_"))}
    env["SKEWLESS_DATA_DIR"] = str(tmp_path)
    # a real (empty) events file: the replay file is checked before the cluster flags
    simulated = simulate(SimulationConfig(events=10, cards=2, merchants=2))
    write_events(simulated.slice(0, 0), tmp_path / "e.parquet")
    return subprocess.run(
        [sys.executable, "-m", "skewless", "stream", "--replay", str(tmp_path / "e.parquet"),
         *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("process_id", ["2", "-1", "7"])
def test_an_out_of_range_process_id_exits_2_in_one_line(tmp_path: Path, process_id: str) -> None:
    a, b = _free_ports(2)
    done = _stream(tmp_path, "-a", f"127.0.0.1:{a};127.0.0.1:{b}", "-i", process_id)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines == [
        f"skewless stream: -i/--process-id {process_id} is out of range: -a names 2 "
        "address(es), so it must be 0..1"
    ], done.stderr


def test_a_member_alone_gives_up_after_the_timeout_naming_the_others(tmp_path: Path) -> None:
    a, b, c = _free_ports(3)
    addresses = f"127.0.0.1:{a};127.0.0.1:{b};127.0.0.1:{c}"
    done = _stream(tmp_path, "-a", addresses, "-i", "1", "--cluster-timeout", "1.5")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("skewless stream: cluster: no answer within 1.5 s from ")
    assert f"127.0.0.1:{a} (-i 0), 127.0.0.1:{c} (-i 2)" in lines[0]
    assert f"127.0.0.1:{b}" not in lines[0]


@pytest.mark.parametrize(
    ("addresses", "process_id", "message"),
    [
        (None, 1, "-i/--process-id 1: a cluster needs -a/--addresses"),
        ("127.0.0.1:1;127.0.0.1:2", None, "-i/--process-id: required with 2 addresses"),
        ("127.0.0.1;127.0.0.1:2", 0, "-a/--addresses: '127.0.0.1' is not host:port"),
        ("127.0.0.1:2;127.0.0.1:2", 0, "-a/--addresses: an address appears twice"),
    ],
)
def test_cluster_arguments_are_checked(
    addresses: str | None, process_id: int | None, message: str
) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(")):
        parse_addresses(addresses, process_id)


def test_single_process_arguments_pass() -> None:
    assert parse_addresses(None, None) is None
    assert parse_addresses(None, 0) is None
    assert parse_addresses("127.0.0.1:5", None) == ["127.0.0.1:5"]
    assert parse_addresses(" 127.0.0.1:5 ; 127.0.0.1:6 ", 1) == ["127.0.0.1:5", "127.0.0.1:6"]


def _meet(members: list[str], order: list[int]) -> dict[int, object]:
    """Each member in its own thread, started in ``order``; what each returned or raised."""
    out: dict[int, object] = {}

    def run(i: int) -> None:
        try:
            out[i] = wait_for_members(members, i, timeout_s=60)
        except Exception as exc:  # reported below
            out[i] = exc

    threads = []
    for i in order:
        t = threading.Thread(target=run, args=(i,))
        t.start()
        threads.append(t)
    for t in threads:
        t.join(90)
    return out


@pytest.mark.parametrize("order", [[0, 1], [1, 0], [2, 0, 3, 1]])
def test_members_meet_and_free_their_addresses(order: list[int]) -> None:
    ports = _free_ports(len(order))
    members = [f"127.0.0.1:{p}" for p in ports]
    assert _meet(members, order) == dict.fromkeys(range(len(order)), True)
    for p in ports:  # Bytewax binds them next
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", p))
            s.listen()


def test_a_stop_request_ends_the_wait() -> None:
    members = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    assert wait_for_members(members, 0, timeout_s=60, stop=lambda: True) is False


def test_two_members_with_the_same_id_are_refused() -> None:
    ports = _free_ports(3)
    members = [f"127.0.0.1:{p}" for p in ports]
    # member 1 runs at its own address; a second "member 1" says hello from elsewhere
    out: dict[str, object] = {}

    def member() -> None:
        try:
            out["m"] = wait_for_members(members, 1, timeout_s=30)
        except Exception as exc:
            out["m"] = exc

    t = threading.Thread(target=member)
    t.start()
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", ports[1]), timeout=1) as s:
                s.sendall(b"skewless-cluster 1 3\n")
            break
        except OSError:
            threading.Event().wait(0.05)
    t.join(60)
    assert isinstance(out["m"], ValueError), out
    assert str(out["m"]) == "cluster: another member also runs with -i 1"
