"""Labels: validation from the definitions, latest wins, the join, the label horizon,
simulated delays and the CLI (the Kafka path: tests/integration/test_labels_kafka.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from features.loader import load_definitions
from features.reference import REFERENCE
from features.schema import SchemaError
from flows.labels import due, join, known_at, latest, outcome, read_labels, validate_labels
from flows.sim_labels import LabelDelays, simulate_labels
from flows.simulate import SimulationConfig, simulate
from skewless.cli import main

REPO = Path(__file__).resolve().parents[2]
CLICKS = REPO / "examples" / "clickstream" / "definitions.py"
MS = pa.timestamp("ms", tz="UTC")
DAY = 86_400_000
T0 = 1767952800000  # 2026-01-09T10:00:00Z


def test_invalid_labels_are_rejected_with_the_broken_field() -> None:
    table = pa.table(
        {
            "transaction_id": ["t1", "", "t3", "t4", "t5"],
            "label": [True, True, None, False, True],
            "label_time": [
                "2026-01-09T10:00:00Z",
                "2026-01-09T10:00:00Z",
                "2026-01-09T10:00:00Z",
                "yesterday",
                "2026-01-09T10:00:00+01:00",
            ],
        }
    )
    valid, rejects = validate_labels(REFERENCE, table)
    assert valid.column_names == ["transaction_id", "label", "label_time"]
    assert valid.column("transaction_id").to_pylist() == ["t1", "t5"]
    assert valid.schema.field("label_time").type == MS
    assert pc.cast(valid.column("label_time"), pa.int64()).to_pylist() == [
        1767952800000, 1767952800000 - 3_600_000,
    ]  # fmt: skip
    assert rejects.column("row").to_pylist() == [1, 2, 3]
    reasons = rejects.column("reason").to_pylist()
    assert reasons[0].startswith("transaction_id: ")
    assert reasons[1].startswith("label: ")
    assert reasons[2].startswith("label_time: ")


def test_a_file_without_the_id_column_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "labels.parquet"
    pq.write_table(pa.table({"id": ["a"], "label": [True], "label_time": [0]}), path)
    with pytest.raises(SchemaError, match="column 'transaction_id': missing"):
        read_labels(REFERENCE, path)


def _labels(ids: list[str], values: list[bool], times: list[int]) -> pa.Table:
    return pa.table(
        {"transaction_id": ids, "label": values, "label_time": pa.array(times, pa.int64()).cast(MS)}
    )


def test_latest_label_time_wins_whatever_the_arrival_order() -> None:
    # a chargeback (t=10), its reversal (t=20) arriving first, then a tie at t=20
    t = _labels(["a", "a", "b", "c", "c"], [False, True, True, True, False], [20, 10, 5, 20, 20])
    got = latest(t).to_pydict()
    assert got["transaction_id"] == ["a", "b", "c"]
    assert got["label"] == [False, True, False]  # the tie goes to the later row
    # as of t=15 the reversal was not known yet
    assert latest(known_at(t, 15)).to_pydict()["label"] == [True, True]


def test_a_label_not_yet_due_is_not_counted_as_a_negative() -> None:
    preds = pa.table(
        {
            "transaction_id": ["old_fraud", "old_legit", "young_fraud", "young_unlabelled"],
            "event_time": pa.array([0, 1 * DAY, 25 * DAY, 26 * DAY], pa.int64()).cast(MS),
        }
    )
    labels = _labels(["old_fraud", "young_fraud"], [True, True], [3 * DAY, 26 * DAY])
    as_of, horizon = 30 * DAY, 10 * DAY
    joined = join(preds, labels, as_of)
    assert joined.num_rows == 4
    counted = due(pc.cast(joined.column("event_time"), pa.int64()).to_numpy(), as_of, horizon)
    assert counted.tolist() == [True, True, False, False]
    y = outcome(joined)
    assert y[counted].tolist() == [1.0, 0.0]
    # as of day 2, the chargeback of day 3 is unknown: old_fraud is not yet labelled
    early = join(preds, labels, 2 * DAY)
    assert early.column("label").to_pylist() == [None, None, None, None]


def test_labels_work_for_other_definitions() -> None:
    fs = load_definitions(str(CLICKS))
    table = pa.table({"click_id": ["c1", "c2"], "label": [True, None], "label_time": [T0, T0]})
    valid, rejects = validate_labels(fs, table)
    assert valid.column_names == ["click_id", "label", "label_time"]
    assert valid.column("click_id").to_pylist() == ["c1"]
    assert rejects.column("reason").to_pylist() == ["label: missing"]
    preds = pa.table({"click_id": ["c2", "c1"], "score": [0.1, 0.9]})
    assert join(preds, valid).column("label").to_pylist() == [None, True]


@pytest.fixture(scope="module")
def events() -> pa.Table:
    return simulate(SimulationConfig(events=40_000, cards=1_000, merchants=100, days=10.0))


def test_simulated_labels_have_chargeback_delays(events: pa.Table) -> None:
    labels = simulate_labels(events, REFERENCE, seed=7)
    assert labels.equals(simulate_labels(events, REFERENCE, seed=7))
    ev_time = dict(
        zip(
            events.column("transaction_id").to_pylist(),
            pc.cast(events.column("event_time"), pa.int64()).to_pylist(),
            strict=True,
        )
    )
    fraud = set(events.filter(events.column("is_fraud")).column("transaction_id").to_pylist())
    lt = pc.cast(labels.column("label_time"), pa.int64()).to_numpy()
    assert np.all(np.diff(lt) >= 0)  # ordered by label_time, as they arrive
    ids = labels.column("transaction_id").to_pylist()
    value = labels.column("label").to_pylist()
    delays = np.array([(t - ev_time[i]) / DAY for i, t in zip(ids, lt, strict=True)])
    charge = np.array([v and i in fraud for i, v in zip(ids, value, strict=True)])
    d = LabelDelays()
    assert d.min_days <= delays[charge].min() and delays[charge].max() <= d.max_days
    assert 7.0 < float(np.median(delays[charge])) < 13.0  # days to weeks
    charged = {i for i, c in zip(ids, charge, strict=True) if c}
    never = 1 - len(charged) / len(fraud)
    assert 0.03 < never < 0.15  # some fraud is never reported
    assert not any(v and i not in fraud for i, v in zip(ids, value, strict=True))
    # reversals: a later `false` for a charged-back id, so latest() turns it negative
    reversed_ = [i for i, v in zip(ids, value, strict=True) if not v and i in fraud]
    assert reversed_ and set(reversed_) <= charged
    last = latest(labels).to_pydict()
    final = dict(zip(last["transaction_id"], last["label"], strict=True))
    assert all(final[i] is False for i in reversed_)
    # confirmed legit within hours
    legit = ~charge & ~np.isin(ids, reversed_)
    assert delays[legit].min() >= 1 / 24 and delays[legit].max() <= 2.0


def test_cli_simulate_writes_labels_beside_the_events(tmp_path: Path) -> None:
    out = tmp_path / "ev.parquet"
    argv = ["simulate", "--out", str(out), "--events", "3000", "--cards", "100",
            "--merchants", "20", "--days", "3"]  # fmt: skip
    assert main(argv) == 0
    labels, rejects = read_labels(REFERENCE, tmp_path / "ev.labels.parquet")
    assert labels.num_rows > 0 and rejects.num_rows == 0
    ev = pq.read_table(out)
    assert labels.equals(validate_labels(REFERENCE, simulate_labels(ev, REFERENCE, seed=7))[0])
    assert main([*argv[:2], str(tmp_path / "b.parquet"), *argv[3:], "--labels", "none"]) == 0
    assert not (tmp_path / "b.labels.parquet").exists()
