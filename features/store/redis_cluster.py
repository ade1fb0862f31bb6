"""Redis Cluster for the online store: Feast's layout and the same pre-encoded commands as
:mod:`features.store.redis`, each routed to the master of its key's hash slot.

A URL names the cluster by a few seed nodes, the way Feast's ``connection_string`` does
for ``redis_type: redis_cluster``::

    redis+cluster://127.0.0.1:7000,127.0.0.1:7001     (or rediss+cluster:// for TLS)
    redis://127.0.0.1:7000?cluster=1                  (the same, one seed)

A call sends one pipeline per node it touches (every node's pipeline is written before
the first answer is awaited), so a card's read is one round trip per node and a batch of
writes is grouped per node. ``MOVED``/``ASK`` and a node that went away (kill, failover)
refresh the slot map from any node that answers and retry once; if that fails too the
caller gets a ``ConnectionError`` (the stream retries with backoff; the server answers
UNAVAILABLE), and the next call starts from a fresh map.
"""

from __future__ import annotations

import binascii
import struct
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from features.settings import masked_url
from features.store.protocol import OnlineRow, StoreUnavailableError
from features.store.redis import (
    RedisReplyError,
    RedisSetupError,
    RedisStore,
    RedisWire,
    _resp,
    read_replies,
)

SLOTS = 16384
_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
_ASKING = _resp("ASKING")
_CLUSTER_SLOTS = _resp("CLUSTER", "SLOTS")
# Answers that mean "not now, ask again after a refresh" rather than a bug.
_TRANSIENT = ("TRYAGAIN", "CLUSTERDOWN", "LOADING", "MASTERDOWN", "READONLY")

Address = tuple[str, int]
_ID = struct.Struct("<q")  # the int64 entity id inside Feast's key


def key_slot(key: bytes) -> int:
    """The hash slot Redis Cluster gives ``key``: CRC16 (XMODEM, ``binascii.crc_hqx``)
    mod 16384, of the part between the first ``{`` and the next ``}`` when that part is
    not empty (a hash tag), else of the whole key.

    >>> key_slot(b"123456789"), key_slot(b"foo"), key_slot(b"{user1000}.following")
    (12739, 12182, 3443)
    >>> key_slot(b"{}x") == key_slot(b"{}x"), key_slot(b"a{b}c{d}") == key_slot(b"b")
    (True, True)
    """
    start = key.find(b"{")
    if start != -1:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    return binascii.crc_hqx(key, 0) & (SLOTS - 1)


def is_cluster_url(url: str) -> bool:
    """``redis+cluster://``, ``rediss+cluster://`` or a ``cluster=1`` query.

    >>> is_cluster_url("redis+cluster://h:1,h:2"), is_cluster_url("redis://h:1/0?cluster=1")
    (True, True)
    >>> is_cluster_url("redis://h:1/0")
    False
    """
    scheme, _, rest = url.partition("://")
    if scheme in _SCHEMES:
        return True
    query = rest.partition("?")[2]
    return any(p.lower() in ("cluster=1", "cluster=true", "cluster=yes") for p in query.split("&"))


@dataclass(frozen=True)
class ClusterUrl:
    """A cluster URL taken apart: seeds, credentials and TLS options shared by every node."""

    scheme: str  # redis or rediss, for each node
    userinfo: str  # "user:password" as written (percent-encoded), or ""
    seeds: tuple[Address, ...]
    query: str  # the TLS options, without cluster=

    def node_url(self, address: Address) -> str:
        auth = f"{self.userinfo}@" if self.userinfo else ""
        query = f"?{self.query}" if self.query else ""
        return f"{self.scheme}://{auth}{address[0]}:{address[1]}/0{query}"


def parse_cluster_url(url: str) -> ClusterUrl:
    """Split a cluster URL; errors name ``redis_url`` and what is wrong.

    >>> c = parse_cluster_url("rediss+cluster://u:p@127.0.0.1:7000,127.0.0.1:7001?ssl_ca_certs=/ca")
    >>> c.seeds, c.node_url(c.seeds[1])
    ((('127.0.0.1', 7000), ('127.0.0.1', 7001)), 'rediss://u:p@127.0.0.1:7001/0?ssl_ca_certs=/ca')
    """
    scheme, sep, rest = url.partition("://")
    scheme = _SCHEMES.get(scheme, scheme)
    if not sep or scheme not in ("redis", "rediss"):
        raise ValueError(
            f"redis_url: {masked_url(url)!r} is not a Redis Cluster URL "
            "(use redis+cluster://host:port[,host:port...] or rediss+cluster://)"
        )
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    if path.strip("/") not in ("", "0"):
        raise ValueError(f"redis_url: Redis Cluster has only db 0, not /{path.strip('/')}")
    userinfo, _, hosts = netloc.rpartition("@")
    seeds = []
    for part in hosts.split(","):
        host, _, port = part.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"redis_url: cluster node {part!r} is not host:port")
        seeds.append((host.strip("[]"), int(port)))
    options = [p for p in query.split("&") if p and not p.lower().startswith("cluster=")]
    return ClusterUrl(scheme, userinfo, tuple(seeds), "&".join(options))


class _NodeWire(RedisWire):
    """One node's sockets (one per thread), with the round trip split in two so that a
    call writes every node's pipeline before it waits for any answer. Redis errors come
    back as values (a redirect concerns one command, not the whole pipeline)."""

    def send(self, payload: bytes) -> None:
        conn = getattr(self._local, "conn", None)
        sock, _ = conn if conn is not None else self._connect()
        try:
            sock.sendall(payload)
        except BaseException:
            self._drop(sock)
            raise

    def receive(self, replies: int) -> list[Any]:
        sock, reader = self._local.conn
        try:
            return read_replies(sock, reader, replies)
        except BaseException:
            self._drop(sock)
            raise

    def reset(self) -> None:
        """Close this thread's connection, if any (the next call reconnects)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            self._drop(conn[0])

    def _drop(self, sock: Any) -> None:
        self._local.conn = None
        with self._lock:
            self._all.discard(sock)
        sock.close()


class RedisClusterWire:
    """Pre-encoded commands routed by slot over :class:`_NodeWire` connections. The slot
    map is read with ``CLUSTER SLOTS`` on first use and again after any redirect or node
    failure, from the first node that answers (known masters and replicas, then seeds)."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self.spec = parse_cluster_url(url)
        self.timeout_s = timeout_s
        self._wires: dict[Address, _NodeWire] = {}
        self._slots: list[Address | None] | None = None
        self._known: list[Address] = list(self.spec.seeds)
        self._lock = threading.Lock()
        self._refreshing = threading.Lock()

    def _wire(self, address: Address) -> _NodeWire:
        wire = self._wires.get(address)
        if wire is None:
            with self._lock:
                wire = self._wires.get(address)
                if wire is None:
                    wire = _NodeWire(self.spec.node_url(address), self.timeout_s)
                    self._wires[address] = wire
        return wire

    def refresh(self) -> list[Address | None]:
        """Read the slot map from any reachable node; ``ConnectionError`` when none is."""
        with self._refreshing:
            errors = []
            for address in dict.fromkeys([*self._known, *self.spec.seeds]):
                try:
                    [reply] = self._wire(address).call(_CLUSTER_SLOTS, 1)
                except OSError as exc:
                    errors.append(f"{address[0]}:{address[1]} {exc}")
                    continue
                except RedisReplyError as exc:
                    if "cluster support disabled" in str(exc):
                        raise RedisSetupError(
                            f"online store: Redis at {address[0]}:{address[1]} is not a "
                            "Redis Cluster node; use redis://host:port/DB for one server"
                        ) from None
                    errors.append(f"{address[0]}:{address[1]} {exc}")
                    continue
                slots: list[Address | None] = [None] * SLOTS
                known: list[Address] = []
                for start, end, master, *replicas in reply:
                    nodes = [_address(n, address[0]) for n in (master, *replicas)]
                    slots[start : end + 1] = [nodes[0]] * (end - start + 1)
                    known.extend(nodes)
                self._known = list(dict.fromkeys([*known, *self._known]))
                self._slots = slots
                return slots
            raise ConnectionError(f"no Redis Cluster node answered ({'; '.join(errors)})")

    def call(self, slots: Sequence[int], commands: Sequence[bytes]) -> list[Any]:
        """Each command's reply, in order; ``commands[i]`` touches a key of ``slots[i]``.
        Commands must be safe to send twice (HSET of the same values, HGET)."""
        out: list[Any] = [None] * len(commands)
        todo = list(range(len(commands)))
        ask: dict[int, Address] = {}
        problem = ""
        for _attempt in range(2):
            table = self._slots if self._slots is not None else self.refresh()
            groups: dict[Address, list[int]] = {}
            for i in todo:
                address = ask.get(i) or table[slots[i]]
                if address is None:
                    self._slots = None
                    raise ConnectionError(f"Redis Cluster: no node serves slot {slots[i]}")
                groups.setdefault(address, []).append(i)
            retry: list[int] = []
            stale = False
            sent: list[tuple[_NodeWire, list[int]]] = []
            received: list[tuple[list[int], list[Any]]] = []
            try:  # every node's pipeline out, then every node's answers in, then a look
                for address, idx in groups.items():
                    wire = self._wire(address)
                    try:
                        wire.send(b"".join([_ASKING + commands[i] if i in ask else commands[i]
                                            for i in idx]))  # fmt: skip
                        sent.append((wire, idx))
                    except OSError as exc:
                        retry += idx
                        stale, problem = True, f"{address[0]}:{address[1]} {exc}"
                for wire, idx in sent:
                    try:
                        received.append((idx, wire.receive(len(idx) + sum(i in ask for i in idx))))
                    except OSError as exc:
                        retry += idx
                        stale, problem = True, f"{wire.address[0]}:{wire.address[1]} {exc}"
            except BaseException:  # never leave unread answers on a socket
                for wire, _ in sent:
                    wire.reset()
                raise
            asked, ask = ask, {}
            for idx, replies in received:
                pos = 0
                for i in idx:
                    pos += i in asked  # the ASKING's own +OK
                    reply = replies[pos]
                    pos += 1
                    if not isinstance(reply, Exception):
                        out[i] = reply
                        continue
                    text = str(reply)
                    if text.startswith("ASK "):
                        ask[i] = _redirect(text)
                    elif text.startswith("MOVED ") or text.startswith(_TRANSIENT):
                        stale = True
                    else:
                        raise RedisReplyError(text)
                    retry.append(i)
                    problem = text
            if not retry:
                return out
            todo = sorted(retry)
            if stale:
                self._slots = None
        raise ConnectionError(
            f"Redis Cluster: {len(todo)} command(s) not served after one retry ({problem})"
        )

    def close(self) -> None:
        for wire in list(self._wires.values()):
            wire.close()


def _address(node: Sequence[Any], asked: str) -> Address:
    host = node[0].decode() if isinstance(node[0], bytes) else str(node[0])
    return (host or asked, int(node[1]))  # an empty host means "the one you asked"


def _redirect(text: str) -> Address:
    host, _, port = text.split()[2].rpartition(":")
    return (host, int(port))


class RedisClusterStore(RedisStore):
    """:class:`RedisStore` over a cluster: the same commands, grouped by the node of each
    key's slot (the key is Feast's, so Feast's own cluster client finds the same slot)."""

    def build(self, timeout_s: float = 2.0) -> RedisClusterStore:
        self._client = RedisClusterWire(self.url, timeout_s)
        self._tagged: tuple[object, tuple[bytes, ...]] = (None, ())  # marker_tags' last map
        # key = head + int64 id + project: ~2x faster than building it with self.key
        cut = -(_ID.size + len(self.project))
        self._key_head = {e: self.key(e, 0)[:cut] for e in self._join}
        return self

    def _slots_of(self, keys: Iterable[tuple[str, int]]) -> list[int]:
        head, tail, pack = self._key_head, self.project, _ID.pack
        return [key_slot(head[e] + pack(i) + tail) for e, i in keys]

    def _unavailable(self, exc: Exception) -> StoreUnavailableError:
        return StoreUnavailableError(
            f"online store: Redis Cluster at {masked_url(self.url)} is unavailable ({exc}); "
            "start one with `scripts/services.sh redis-cluster-start DIR` or set "
            "SKEWLESS_REDIS_URL"
        )

    def _call(self, slots: list[int], commands: list[bytes]) -> list[Any]:
        try:
            return self._client.call(slots, commands)
        except OSError as exc:
            raise self._unavailable(exc) from exc

    def write(self, entity: str, rows: Sequence[OnlineRow]) -> None:
        if not rows:
            return
        enc = self._hset[entity].command
        commands = [enc(r.entity_id, list(r.values), r.state, r.event_ts_ms) for r in rows]
        self._call(self._slots_of([(entity, r.entity_id) for r in rows]), commands)

    def write_rows(
        self,
        by_entity: Mapping[str, Sequence[OnlineRow]],
        then: Sequence[Sequence[str | bytes]] = (),
    ) -> list[Any]:
        """As :meth:`RedisStore.write_rows`, each command sent to the node of its key (the
        second word of each ``then`` command; the stream puts a loss marker on every
        master: :meth:`marker_tags`)."""
        commands: list[bytes] = []
        keys: list[tuple[str, int]] = []
        for entity, rows in by_entity.items():
            enc = self._hset[entity].command
            commands += [enc(r.entity_id, list(r.values), r.state, r.event_ts_ms) for r in rows]
            keys += [(entity, r.entity_id) for r in rows]
        slots = self._slots_of(keys)
        n = len(commands)
        for c in then:
            key = c[1] if isinstance(c[1], bytes) else c[1].encode()
            slots.append(key_slot(key))
            commands.append(_resp(*c))
        if not commands:
            return []
        return self._call(slots, commands)[n:]

    def marker_tags(self, prefix: bytes, have: Sequence[bytes]) -> list[bytes]:
        """Hash tags to add to ``have`` so that every master of the current slot map
        serves a key ``prefix + tag`` (the stream's loss markers: one per master, since a
        node loses its data alone). ``[]`` while each master has one; a tag keeps its
        slot, so after a failover its key is on the master that took the slot over."""
        table = self._client._slots
        try:
            table = table if table is not None else self._client.refresh()
        except OSError as exc:
            raise self._unavailable(exc) from exc
        if table is self._tagged[0] and tuple(have) == self._tagged[1]:
            return []  # checked against this very map already
        owners = {table[key_slot(prefix + t)] for t in have}
        todo = set(filter(None, table)) - owners
        out: list[bytes] = []
        n = 0
        while todo and n < 1_000_000:  # every slot has a tag {m<n>} with n < 148,000
            tag = b"{m%d}" % n
            n += 1
            owner = table[key_slot(prefix + tag)]
            if owner in todo:
                todo.discard(owner)
                out.append(tag)
        self._tagged = (table, (*have, *out))
        return out

    def node_of(self, key: bytes) -> str:
        """``host:port`` of the master serving ``key`` (as last known), for messages."""
        table = self._client._slots
        address = table[key_slot(key)] if table is not None else None
        return "an unknown node" if address is None else f"{address[0]}:{address[1]}"

    def read_states(
        self, keys: Sequence[tuple[str, int]], bootstrap: bool = False
    ) -> list[bytes | None]:
        fields = self._boot_field if bootstrap else self._state_field
        hset = self._hset
        commands = [hset[e].hget(i, fields[e]) for e, i in keys]
        return self._unwrap(self._call(self._slots_of(keys), commands))
