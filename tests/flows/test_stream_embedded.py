"""The Bytewax flow on embedded defaults (Parquet replay -> Feast SQLite store):
online state == backfill, dead letters hold exactly the invalid rows, Feast SDK reads."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from bytewax.testing import run_main

from features.feast_objects import view_name
from features.reference import REFERENCE
from features.reference_codec import StateCodec
from features.reference_engine import Engine
from features.store import StoreConfig, open_store
from flows.backfill import BackfillReport, load_events
from flows.simulate import SimulationConfig, simulate
from flows.stream import StreamConfig, build_flow
from skewless.verify import check_online_states


def _messy_events(n: int = 4000) -> tuple[pa.Table, int]:
    """Simulated events plus duplicates, local reordering and invalid rows."""
    t = simulate(SimulationConfig(events=n, cards=150, merchants=20, days=4.0, seed=11))
    rows = t.to_pylist()
    rng = np.random.default_rng(5)
    for i in rng.choice(len(rows) - 10, 60, replace=False):  # local out-of-order
        rows[i], rows[i + 3] = rows[i + 3], rows[i]
    for i in rng.choice(len(rows), 40, replace=False):  # exact duplicates, later
        rows.insert(min(len(rows), int(i) + 25), dict(rows[int(i)]))
    bad = [
        {"amount": -5.0}, {"amount": float("nan")}, {"currency": "usd"}, {"country": "FRA"},
        {"mcc": 12000}, {"transaction_id": ""}, {"amount": 2e7},
    ]  # fmt: skip
    for k, patch in enumerate(bad):
        rows.insert(100 + 300 * k, {**rows[10 * k], "transaction_id": f"bad{k}", **patch})
    return pa.Table.from_pylist(rows, schema=t.schema), len(bad)


@pytest.fixture(scope="module")
def streamed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pa.Table, int]:
    out = tmp_path_factory.mktemp("stream")
    table, n_bad = _messy_events()
    pq.write_table(table, out / "events.parquet")
    cfg = StreamConfig(
        store=StoreConfig(workdir=out / "feast"), replay_path=out / "events.parquet",
        out_dir=out / "stream", tail=False, batch_size=500,
    )  # fmt: skip
    run_main(build_flow(REFERENCE, cfg))
    return out, table, n_bad


def test_online_state_equals_backfill(streamed: tuple[Path, pa.Table, int]) -> None:
    out, table, _ = streamed
    report = BackfillReport()
    _, events, _, _ = load_events(REFERENCE, table, report)
    assert report.duplicates == 40 and report.rejected == 7
    store = open_store(StoreConfig(workdir=out / "feast"), REFERENCE)
    skew = check_online_states(REFERENCE, store, events, sample_per_entity=1000, times_per_entity=5)
    assert skew.missing_states == {"card": 0, "merchant": 0}
    assert skew.entities["card"] == len(np.unique(events.by_entity["card"].keys))
    assert skew.compared > 5000
    assert skew.mismatches == 0, skew.to_json()


def test_dead_letters_hold_exactly_the_invalid_rows(streamed: tuple[Path, pa.Table, int]) -> None:
    out, _, n_bad = streamed
    lines = [
        json.loads(x)
        for f in sorted((out / "stream").glob("dlq-*.jsonl"))
        for x in f.read_text().splitlines()
    ]
    want = sorted("" if k == 5 else f"bad{k}" for k in range(n_bad))  # bad5 has an empty id
    assert sorted(json.loads(x["raw"])["transaction_id"] for x in lines) == want
    reasons = {json.loads(x["raw"])["transaction_id"]: x["reason"] for x in lines}
    assert reasons["bad0"].startswith("amount:") and reasons["bad2"].startswith("currency:")
    assert reasons["bad3"].startswith("country:") and reasons["bad4"].startswith("mcc:")


def test_feast_sdk_reads_as_of_last_event_values(streamed: tuple[Path, pa.Table, int]) -> None:
    out, table, _ = streamed
    store = open_store(StoreConfig(workdir=out / "feast"), REFERENCE)
    layout = Engine(REFERENCE).layout("card")
    codec = StateCodec(layout)
    card_ids = sorted(set(table.column("card_id").to_pylist()))[:25]
    names = [f"{view_name(REFERENCE.primary)}:{n}" for n in layout.names]
    got = store.feature_store.get_online_features(
        features=names, entity_rows=[{"card_id": c} for c in card_ids]
    ).to_dict()
    states = store.read_states([("card", c) for c in card_ids])
    for i, (card, blob) in enumerate(zip(card_ids, states, strict=True)):
        assert blob is not None
        # the decoded state finalizes to the very bits the stream wrote
        want = layout.as_of_last(codec.decode(blob, readonly=True))
        for pos, name in enumerate(layout.names):
            value = got[name][i]
            if isinstance(want[pos], float) and math.isnan(want[pos]):
                assert value is None, (card, name)
            else:
                assert value == want[pos], (card, name, value, want[pos])


def _scrape(port: int) -> dict[str, float]:
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("skewless_stream_") and " " in line:
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_prometheus_endpoint_counts_what_the_flow_did(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    table, n_bad = _messy_events(1500)
    pq.write_table(table, tmp_path / "events.parquet")
    cfg = StreamConfig(
        store=StoreConfig(workdir=tmp_path / "feast"), replay_path=tmp_path / "events.parquet",
        out_dir=tmp_path / "stream", tail=False, metrics_port=port,
    )  # fmt: skip
    flow = build_flow(REFERENCE, cfg)  # starts the endpoint
    before = _scrape(port)
    run_main(flow)
    after = _scrape(port)

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    assert delta("skewless_stream_dead_letters_total") == n_bad
    assert delta("skewless_stream_events_in_total") == table.num_rows - n_bad
    assert delta('skewless_stream_duplicates_total{entity="card"}') == 40
    assert delta("skewless_stream_sink_write_seconds_count") > 0
    assert delta("skewless_stream_freshness_seconds_count") > 0
