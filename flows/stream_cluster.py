"""A stream cluster's start (``skewless stream -a A;B;... -i N``): check the arguments and
wait, for a bounded time, until every member is up, before Bytewax takes the addresses.

Measured on Bytewax 0.21 (timely underneath): member ``i`` listens on its own address for
the members above it and connects to those below it, retrying every second, forever; a
member started alone therefore waits forever, and ``-i`` past the last address underflows
a size (``capacity overflow``). And one cannot simply probe a peer's Bytewax port: its
listener reads an 8-byte member index from whatever connects, and panics on a short read.

So each member first holds its own address with a small listener of ours and sends every
other member a hello naming itself. A member goes on to Bytewax once it has heard from
every member, reached every member above it, and got a "go" from every member below it
(sent by that member as it leaves, on the hello connection): so no hello lands on a
Bytewax port (every member heard before leaving), and no Bytewax connection (from above
to below) lands on our listener (the one below had left). Past ``timeout_s`` it stops,
naming the members that did not answer.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import time
from collections.abc import Callable, Sequence

log = logging.getLogger("skewless.stream")

_MAGIC = b"skewless-cluster"


def parse_addresses(addresses: str | None, process_id: int | None) -> list[str] | None:
    """The members' ``host:port`` list, checked against ``-i``; ``None`` without ``-a``."""
    if not addresses:
        if process_id not in (None, 0):
            raise ValueError(
                f"-i/--process-id {process_id}: a cluster needs -a/--addresses "
                "'host:port;host:port' (one per process)"
            )
        return None
    members = [a.strip() for a in addresses.split(";") if a.strip()]
    for a in members:
        host, _, port = a.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"-a/--addresses: {a!r} is not host:port")
    if len(set(members)) != len(members):
        raise ValueError(f"-a/--addresses: an address appears twice ({addresses})")
    if process_id is None:
        if len(members) > 1:
            raise ValueError(
                f"-i/--process-id: required with {len(members)} addresses "
                f"(0..{len(members) - 1}, this process's place in -a)"
            )
        return members
    if not 0 <= process_id < len(members):
        raise ValueError(
            f"-i/--process-id {process_id} is out of range: -a names {len(members)} "
            f"address(es), so it must be 0..{len(members) - 1}"
        )
    return members


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def wait_for_members(
    members: Sequence[str],
    me: int,
    timeout_s: float,
    stop: Callable[[], bool] = lambda: False,
) -> bool:
    """Block until every other member has answered (see the module doc); ``False`` if
    ``stop()`` turned true first. Raises ``ConnectionError`` naming the silent members
    after ``timeout_s``, ``OSError`` if this member's own address cannot be bound."""
    if len(members) <= 1:
        return True
    with _Rendezvous(members, me) as r:
        deadline = time.monotonic() + timeout_s
        while not r.done():
            if stop():
                return False
            if time.monotonic() >= deadline:
                raise ConnectionError(
                    f"cluster: no answer within {timeout_s:g} s from {r.silent()}; start "
                    f"every member with the same -a and its own -i 0..{len(members) - 1} "
                    "(or raise --cluster-timeout)"
                )
            r.step()
        r.leave()
    log.info("cluster: all %d members answered; starting", len(members))
    return True


class _Rendezvous:
    """One member's side of the start protocol (module doc)."""

    def __init__(self, members: Sequence[str], me: int) -> None:
        self.members, self.me, self.n = members, me, len(members)
        self.hello = b"%s %d %d\n" % (_MAGIC, me, self.n)
        host, port = _split(members[me])
        self.listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.listener.bind((host, port))
        except OSError as exc:
            self.listener.close()
            raise OSError(f"cluster: cannot listen on {members[me]} (-i {me}): {exc}") from None
        self.listener.listen(self.n)
        self.listener.setblocking(False)
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.listener, selectors.EVENT_READ, "accept")
        self.heard: dict[int, socket.socket | None] = {}  # above: kept open to send "go"
        self.reached: set[int] = set()  # above: hello sent
        self.waiting: dict[int, socket.socket] = {}  # below: hello sent, waiting for "go"
        self.go: set[int] = set()  # below: left for Bytewax
        self.buffers: dict[socket.socket, bytes] = {}
        self.next_try = 0.0

    def __enter__(self) -> _Rendezvous:
        return self

    def __exit__(self, *exc: object) -> None:
        for sock in [*self.buffers, *self.waiting.values(), *self.heard.values()]:
            if sock is not None:
                sock.close()
        self.sel.close()
        self.listener.close()

    def others(self) -> list[int]:
        return [i for i in range(self.n) if i != self.me]

    def done(self) -> bool:
        return (
            len(self.heard) == self.n - 1
            and len(self.go) == self.me
            and len(self.reached) == self.n - 1 - self.me
        )

    def silent(self) -> str:
        names = []
        for i in self.others():
            if i not in self.heard:
                names.append(f"{self.members[i]} (-i {i})")
            elif i < self.me and i not in self.go:
                names.append(f"{self.members[i]} (-i {i}, still waiting for others)")
        return ", ".join(names) or "(all answered; retry)"

    def step(self) -> None:
        now = time.monotonic()
        if now >= self.next_try:
            self.next_try = now + 0.2
            for i in self.others():
                if i in self.go or i in self.waiting or i in self.reached:
                    continue
                out = _send_hello(self.members[i], self.hello, keep=i < self.me)
                if isinstance(out, socket.socket):
                    self.waiting[i] = out
                    self.buffers[out] = b""
                    self.sel.register(out, selectors.EVENT_READ, ("go", i))
                elif out:
                    self.reached.add(i)
        for key, _ in self.sel.select(timeout=0.1):
            if key.data == "accept":
                with contextlib.suppress(BlockingIOError):
                    conn, _ = self.listener.accept()
                    conn.setblocking(False)
                    self.buffers[conn] = b""
                    self.sel.register(conn, selectors.EVENT_READ, "hello")
                continue
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            data = b""
            with contextlib.suppress(BlockingIOError, ConnectionError):
                data = sock.recv(256)
            buf = self.buffers[sock] + data
            if data and b"\n" not in buf and len(buf) < 256:
                self.buffers[sock] = buf
                continue
            self.sel.unregister(sock)
            del self.buffers[sock]
            if key.data == "hello":
                self._hello(sock, buf)
            else:  # the answer of a member below: "go", or it went away (retry)
                i = key.data[1]
                del self.waiting[i]
                sock.close()
                if buf.startswith(b"go"):
                    self.go.add(i)

    def _hello(self, sock: socket.socket, buf: bytes) -> None:
        peer = _parse_hello(buf, self.n)
        if peer == self.me:
            raise ValueError(f"cluster: another member also runs with -i {self.me}")
        if peer is None or peer < self.me:
            sock.close()
            if peer is not None:
                self.heard[peer] = None
            return
        old = self.heard.get(peer)
        if old is not None:  # the member restarted: answer its new connection
            old.close()
        sock.setblocking(True)
        self.heard[peer] = sock

    def leave(self) -> None:
        """Free the address, then tell the members above that this one leaves for Bytewax.
        In that order: a member above, once told, connects its Bytewax to this address,
        which must then refuse (Bytewax retries each second) rather than land on our
        listener and be reset (a panic in the member above: seen in a two-process run)."""
        self.sel.unregister(self.listener)
        self.listener.close()
        for sock in self.heard.values():
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.settimeout(1.0)
                    sock.sendall(b"go\n")


def _send_hello(address: str, hello: bytes, keep: bool) -> socket.socket | bool | None:
    """Send ``hello``; the open socket if ``keep`` (to wait for "go" on it), else True;
    None if the member does not answer yet."""
    try:
        sock = socket.create_connection(_split(address), timeout=1.0)
    except OSError:
        return None
    try:
        sock.sendall(hello)
        if keep:
            sock.setblocking(False)
            return sock
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        sock.close()
        return None
    sock.close()
    return True


def _parse_hello(buf: bytes, n: int) -> int | None:
    parts = buf.split()
    if len(parts) != 3 or parts[0] != _MAGIC or not parts[1].isdigit():
        return None
    if parts[2] != str(n).encode():
        raise ValueError(
            f"cluster: member {int(parts[1])} was started with {int(parts[2])} addresses, "
            f"this one with {n}: give every member the same -a"
        )
    return int(parts[1])
