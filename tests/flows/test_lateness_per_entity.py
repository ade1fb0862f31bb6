"""Lateness is decided per entity (DESIGN.md): an event too late for its card that is the
newest event of its merchant counts for the merchant, in the stream, the backfill and
serving; the late output names only the card."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from bytewax.testing import run_main

from features.definitions import MS_PER_DAY, MS_PER_HOUR
from features.reference import REFERENCE
from features.store import StoreConfig, open_store
from flows.backfill import BackfillReport, compute_features, load_events
from flows.stream import StreamConfig, build_flow
from serving.scorer import Scorer

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def _tx(txid: str, card: int, merchant: int, t: int) -> dict:
    return {"transaction_id": txid, "card_id": card, "merchant_id": merchant, "amount": 10.0,
            "currency": "EUR", "country": "FR", "mcc": 5411, "event_time": t}  # fmt: skip


def test_an_event_late_for_its_card_counts_for_its_merchant(tmp_path: Path) -> None:
    # card 1 shops daily at merchant 1 for 20 days, then an event 15 days old arrives: far
    # too late for card 1 (newest - 8d 1h), but the first (so newest) event of merchant 2
    rows = [_tx(f"d{d}", 1, 1, T0 + d * MS_PER_DAY) for d in range(20)]
    late_t = T0 + 5 * MS_PER_DAY + 3 * MS_PER_HOUR
    rows.append(_tx("late", 1, 2, late_t))
    schema = pa.schema([(k, pa.float64() if k == "amount" else pa.string()
                         if isinstance(v, str) else pa.int64()) for k, v in rows[0].items()])  # fmt: skip
    table = pa.Table.from_pylist(rows, schema)
    pq.write_table(table, tmp_path / "events.parquet")

    report = BackfillReport()
    _, accepted, _, late = load_events(REFERENCE, table, report)
    assert report.by_entity["card"]["late"] == 1 and report.by_entity["merchant"]["late"] == 0
    assert late.column("late_for").to_pylist() == ["card"]
    assert accepted.by_entity["merchant"].keys.tolist().count(2) == 1

    cfg = StreamConfig(
        store=StoreConfig(workdir=tmp_path / "feast"), replay_path=tmp_path / "events.parquet",
        out_dir=tmp_path / "stream", tail=False,
    )  # fmt: skip
    run_main(build_flow(REFERENCE, cfg))
    [record] = [
        json.loads(x) for x in (tmp_path / "stream" / "late-0.jsonl").read_text().splitlines()
    ]
    assert record["late_for"] == "card" and json.loads(record["raw"])["transaction_id"] == "late"

    # serving reads the merchant's state: the late event counts there, not for the card
    scorer = Scorer(REFERENCE, open_store(StoreConfig(workdir=tmp_path / "feast"), REFERENCE))
    at = late_t + 1
    m = scorer.entity_features("merchant", 2, at)
    got = dict(zip(m.names, m.values, strict=True))
    assert got["merchant_txn_count_1h"] == 1 and got["merchant_txn_count_24h"] == 1
    spine = pa.table({"card_id": [1], "merchant_id": [2], "event_time": [at]})
    want = compute_features(REFERENCE, spine, accepted)
    assert want.column("merchant_txn_count_24h").to_pylist() == [1]
    assert want.column("card_txn_count_24h").to_pylist() == [1]  # day 5 only: not the late one
