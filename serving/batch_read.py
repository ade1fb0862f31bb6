"""``ScoreBatch``'s Redis read, received into one buffer and finalized from there.

A 500-event batch reads ~730 states (1.3 MB: a merchant state is 3.4 KB). Read through
:meth:`RedisStore.read_states`, each reply becomes a bytes object in hiredis, then another
when its feast ``ValueProto`` is unwrapped, and a third list maps each event to its
entity's bytes: ~2 µs of CPU per event before any feature is computed (docs/perf-plan.md,
"ScoreBatch, second round", session 8). Here the ``HGET`` payload is built natively with
each event's reply index, the replies are received into one reused buffer and scanned in
place (:class:`skewless_native.ReplyScan`), and
:meth:`skewless_native.RowFinalizer.fill_batch` finalizes every event from the buffer
into the model input: no Python object per key or per event.

Same keys, same bytes, same values as the ordinary read: the scan only reads bulk
strings and nils holding feast ``bytes_val``s; anything else (an error reply, another
reply type) makes :meth:`BatchStateReader.read` return None after closing its connection,
and the caller reads the keys the ordinary way, which raises what it always raised. Only
for :class:`~features.store.redis.RedisStore` (one server, plain TCP); other stores and
TLS take the ordinary read. The connection is this reader's own, one per thread (like the
``Score`` path's, :mod:`features.store.redis_async`), opened by the store's wire so that
the store's ``close`` closes it too.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Sequence
from typing import Any

from features.native import native
from features.store.redis import RedisStore, RedisWire

#: the receive buffer a thread starts with (a 500-event batch's replies: ~1.3 MB)
START_BYTES = 1 << 21
#: a buffer grown past this is not kept after the call that needed it
KEEP_BYTES = 1 << 24


def batch_reader(store: object) -> BatchStateReader | None:
    """The buffered batch read of ``store``, or None where it is not offered: stores other
    than one Redis server (Feast, Redis Cluster, the tests' dict stores) and TLS, which
    keep the ordinary read."""
    wire = getattr(store, "_client", None)
    if type(store) is not RedisStore or type(wire) is not RedisWire or wire.tls:
        return None
    return BatchStateReader(store, wire)


class _Conn(threading.local):
    sock: socket.socket | None = None
    buf: bytearray | None = None
    view: memoryview | None = None


class BatchStateReader:
    """``read(entities, ids)``: the replies of one pipelined read of every distinct
    ``(entity, id)``, ready for ``RowFinalizer.fill_batch``."""

    def __init__(self, store: RedisStore, wire: RedisWire) -> None:
        self.store, self.wire = store, wire
        self._local = _Conn()

    def read(
        self, entities: Sequence[str], ids: Sequence[list[int]]
    ) -> tuple[Any, bytearray, list[bytes]] | None:
        """``(scan, buffer, idx)`` for the events whose entity ``entities[j]`` has the id
        ``ids[j][i]``: ``idx[j]`` their reply indexes (u32 little-endian). None when a
        key or a reply is not one this read handles: read them the ordinary way."""
        store, parts, idx, base = self.store, [], [], 0
        try:
            for entity, col in zip(entities, ids, strict=True):
                payload, k, at = store._hset[entity].hget_many(
                    col, store._state_field[entity], base
                )
                parts.append(payload)
                idx.append(at)
                base += k
        except (TypeError, OverflowError):  # a key that is no int64: the ordinary read says so
            return None
        scan = native.ReplyScan(base)
        local = self._local
        try:
            sock = local.sock
            if sock is None or sock.fileno() < 0:  # first use, or closed by the store
                sock = local.sock = self.wire.open()[0]
            sock.sendall(b"".join(parts))
            buf, view = local.buf, local.view
            if buf is None or view is None:
                buf = local.buf = bytearray(START_BYTES)
                view = local.view = memoryview(buf)
            got = 0
            while not scan.done:
                if got == len(buf):  # grown, not resized: the scanned offsets stay valid
                    buf = bytearray(2 * len(buf))
                    buf[:got] = view[:got]
                    view = memoryview(buf)
                    local.buf, local.view = buf, view
                k = sock.recv_into(view[got:])
                if not k:
                    raise ConnectionError("connection closed by server")
                got += k
                scan.feed(buf, got)
            if scan.odd or got != scan.size:  # the rest of the replies are left unread
                self._drop()
                return None
        except OSError as exc:  # ConnectionError and socket timeouts included
            self._drop()
            raise store._unavailable(exc) from exc
        except BaseException:
            self._drop()
            raise
        if len(buf) > KEEP_BYTES:
            local.buf = local.view = None
        return scan, buf, idx

    def _drop(self) -> None:
        """Close this thread's connection (never reused half-read); the next read opens
        another."""
        local = self._local
        sock, local.sock = local.sock, None
        if sock is not None:
            self.wire.forget(sock)
