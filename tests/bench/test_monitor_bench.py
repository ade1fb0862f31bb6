"""The monitor bench writes its 1M-row log with pyarrow directly (the server's writer
builds a Python object per row); it must write what the server writes."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from bench.monitor import _write_log
from features.reference import REFERENCE
from flows.artifacts import read_artifacts
from flows.simulate import SimulationConfig, simulate
from tests.flows.monitor_support import features_of, train_on, write_log


def test_bench_log_has_the_servers_layout(tmp_path: Path) -> None:
    features = features_of(
        REFERENCE, simulate(SimulationConfig(events=20_000, cards=500, merchants=60, days=10.0))
    )
    art = read_artifacts(train_on(REFERENCE, features, tmp_path), REFERENCE.fingerprint())
    write_log(REFERENCE, features, art, tmp_path / "server")
    server = pq.read_table(tmp_path / "server" / "predictions-000000.parquet")
    scores = server.column("score").to_numpy()
    rows = features.slice(0, server.num_rows)
    _write_log(rows, scores, art.feature_names, art.version, art.threshold, REFERENCE,
               tmp_path / "bench")  # fmt: skip
    ours = pq.read_table(tmp_path / "bench" / "predictions-000000.parquet")
    assert ours.schema.remove_metadata() == server.schema.remove_metadata()
    assert ours.drop_columns(["scored_at"]).equals(server.drop_columns(["scored_at"]))
