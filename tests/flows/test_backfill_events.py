"""The backfill's id scan runs on the file's rows beside validation: a rejected row never
makes a valid row a duplicate, and duplicates around rejected rows are still found."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from features.reference import REFERENCE
from flows.backfill_events import BackfillReport, load_events
from tests.features.test_backfill_job import SCHEMA, T0


def _row(i: int, txid: str, card: int, amount: float = 10.0) -> dict:
    return {"transaction_id": txid, "card_id": card, "merchant_id": 1, "amount": amount,
            "currency": "EUR", "country": "FR", "mcc": 5411, "event_time": T0 + i * 1000}  # fmt: skip


def test_scan_before_validation_keeps_the_valid_rows_decisions() -> None:
    rows = [
        _row(0, "a", 1, amount=-1.0),  # rejected: its id must not make row 1 a duplicate
        _row(1, "a", 1),
        _row(2, "b", 1),
        _row(3, "c", 2, amount=-5.0),  # rejected, between the copies of "b"
        _row(4, "b", 1),  # a duplicate of row 2
        _row(5, "d", 2),
        _row(6, "d", 3),  # the same id for another card: the card's dedup keeps it
    ]
    report = BackfillReport()
    valid, events, rejects, _ = load_events(REFERENCE, pa.Table.from_pylist(rows, SCHEMA), report)
    assert rejects.column("row").to_pylist() == [0, 3]
    assert report.duplicates == 1
    assert valid.column("row").to_pylist() == [1, 2, 5, 6]
    card = events.by_entity["card"]
    assert card.txids.to_pylist() == ["a", "b", "d", "d"]
    assert np.array_equal(card.keys, [1, 1, 2, 3])
