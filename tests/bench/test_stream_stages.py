"""The stage table's "sink encode" (``bench/stream_stages.py``) is the sink's own work on a
poll's items: the rows its write takes and the pipeline bytes it sends for them, the
same bytes (not a row-by-row encode the sink no longer does)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.stream_stages import _encode
from features.reference import REFERENCE
from features.store import OnlineRow, StoreConfig
from flows.stream_io import LateOut, RowOut
from flows.stream_shard import RowBatch
from flows.stream_sink import HeldStates, _StorePartition


def _row(entity: str, entity_id: int, n: int) -> RowOut:
    width = len(REFERENCE.for_entity(REFERENCE.entity(entity)))
    values = [float(n + i) for i in range(width)]
    return RowOut(entity, OnlineRow(entity_id, 1_767_225_600_000 + n, values, b"st%d" % n), n)


def test_sink_encode_is_the_bytes_the_sink_sends(tmp_path: Path) -> None:
    sink = _StorePartition(StoreConfig(redis_url="redis://127.0.0.1:1/0", workdir=tmp_path),
                           REFERENCE, HeldStates(), 0)  # fmt: skip
    sent: list[bytes] = []

    def send(payload: bytes, replies: int) -> list[Any]:
        sent.append(bytes(payload))
        return [None] * replies

    sink.store._send = send  # type: ignore[attr-defined]
    items: list[Any] = [
        RowBatch([_row("card", 3, 1), _row("card", 8, 2)], ("card", 5)),
        RowBatch([_row("merchant", 4, 3)], ("merchant", 9)),
        LateOut(None, "card"),  # type: ignore[arg-type]
        RowBatch([_row("card", 3, 4)], ("card", 5)),  # the shard again: its newer row
    ]
    sink.write_batch(items)
    payload = _encode(sink, items)
    assert len(sent) == 1 and sent[0].startswith(payload)
    assert sent[0][len(payload) :].startswith(b"*6\r\n$3\r\nSET\r\n")  # the loss marker
    assert payload.count(b"HSET") == 3 and b"st1" not in payload and b"st4" in payload
