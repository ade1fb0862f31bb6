"""The Redis read awaited on an event loop (:func:`async_reader`), for the scoring
server's ``Score`` path (:mod:`serving.coalesce`)."""

from __future__ import annotations

import asyncio
import math
import select
import selectors
import socket
import time
from collections.abc import Sequence
from typing import Any

from features.store.redis import RedisReplyError, RedisStore, RedisWire


def async_reader(store: object) -> AsyncStateReader | None:
    """``store``'s states read awaitable on an event loop; None where that is not offered:
    other stores, TLS (whose sockets asyncio cannot share) and Redis Cluster (which groups
    a read by node)."""
    wire = getattr(store, "_client", None)
    if type(store) is not RedisStore or type(wire) is not RedisWire or wire.tls:
        return None
    return AsyncStateReader(store, wire)


class AsyncStateReader:
    """:meth:`RedisStore.read_states` awaited on the running event loop, over a connection
    of its own, so the loop can take other calls while Redis answers
    (:mod:`serving.coalesce`). One read at a time: the caller serializes them.

    Waiting is where a lone call's time goes: an asyncio reader callback, a future and a
    task wake-up cost a call alone +20 µs warm and +60 µs with cold caches over a blocking
    read (``bench.serve_stages``). So while the loop has nothing else to do (no callback
    ready), the wait is one ``poll`` on this socket *and* every descriptor the loop
    watches: Redis answering first is read at once, as a blocking read would; anything
    else the loop watches becoming ready first (a new call, a reply to send) hands the
    wait back to the loop. Event loops other than asyncio's selector loop always await.

    Any failure closes the connection (a half-read one is never reused); the next read
    reconnects. Redis not answering within the store's socket timeout is unavailable; a
    loop too busy to look in time is not (the socket is checked once more at the end)."""

    def __init__(self, store: RedisStore, wire: RedisWire) -> None:
        self._store, self._wire = store, wire
        self._conn: tuple[socket.socket, Any] | None = None
        #: reads answered inside the poll / handed back to the loop (tests, the bench)
        self.polled = self.awaited = 0
        self._pending: tuple[int, float] | None = None
        self._fds: tuple[int, ...] = ()
        self._poll: Any = None

    async def read_states(self, keys: Sequence[tuple[str, int]]) -> list[bytes | None]:
        self.send(keys)
        return await self.receive()

    def send(self, keys: Sequence[tuple[str, int]]) -> None:
        """Send a read now; :meth:`receive` gets its states (work done in between overlaps
        the round trip). Every send must be received before the next one."""
        try:
            if self._conn is None:
                self._conn = self._wire.open()  # blocking connect and set-up, once
            self._conn[0].sendall(self._store._read_payload(keys))  # its timeout bounds it
        except OSError as exc:
            self.close()
            raise self._store._unavailable(exc) from exc
        self._pending = (len(keys), time.monotonic() + self._wire.timeout_s)

    async def receive(self) -> list[bytes | None]:
        """The states of the read :meth:`send` sent."""
        assert self._pending is not None and self._conn is not None, "receive without send"
        (replies, deadline), self._pending = self._pending, None
        sock, reader = self._conn
        out: list[Any] = []
        try:
            while len(out) < replies:
                reply = reader.gets()
                if reply is not False:
                    out.append(reply)
                    continue
                if not await self._readable(sock, deadline):
                    raise TimeoutError(f"no reply within {self._wire.timeout_s:g} s")
                data = sock.recv(1 << 16)
                if not data:
                    raise ConnectionError("connection closed by server")
                reader.feed(data)
        except OSError as exc:  # timeouts included
            self.close()
            raise self._store._unavailable(exc) from exc
        except BaseException:  # cancelled mid-read: the replies would be out of step
            self.close()
            raise
        import hiredis

        for reply in out:
            if isinstance(reply, hiredis.ReplyError):
                raise RedisReplyError(str(reply))
        return self._store._unwrap(out)

    async def _readable(self, sock: socket.socket, deadline: float) -> bool:
        """Until ``sock`` is readable (False: the deadline passed first)."""
        loop = asyncio.get_running_loop()
        fd = sock.fileno()
        selector = getattr(loop, "_selector", None)
        ready = getattr(loop, "_ready", None)
        if selector is not None and ready is not None and not ready:
            fds = tuple(
                k.fd for k in selector.get_map().values() if k.events & selectors.EVENT_READ
            )
            if fds != self._fds:  # what the loop watches changed: a new poll set
                self._fds, self._poll = fds, select.poll()
                for watched in (fd, *fds):
                    self._poll.register(watched, select.POLLIN)
            watch = self._poll
            ms = max(0, math.ceil((deadline - time.monotonic()) * 1000))
            events = watch.poll(ms)
            if not events:
                return False
            if any(e[0] == fd for e in events):
                self.polled += 1
                return True
        self.awaited += 1
        waiter = loop.create_future()

        def on_readable() -> None:
            if not waiter.done():
                waiter.set_result(True)

        loop.add_reader(fd, on_readable)
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                return await waiter
        except TimeoutError:  # a busy loop may come back late: only Redis's silence counts
            return bool(select.select([fd], [], [], 0)[0])
        finally:
            loop.remove_reader(fd)

    def close(self) -> None:
        conn, self._conn, self._pending = self._conn, None, None
        self._fds, self._poll = (), None  # the next connection's descriptor may differ
        if conn is not None:
            self._wire.forget(conn[0])
