"""Labels through a real Kafka topic: ``produce --labels`` -> ``<topic>.labels`` ->
``sync_labels`` -> labels.parquet (latest wins downstream), invalid ones dead-lettered."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient, NewTopic

from features.reference import REFERENCE
from flows.labels import latest, read_labels
from flows.labels_kafka import produce_labels, sync_labels
from skewless.cli import main

pytestmark = pytest.mark.integration
MS = pa.timestamp("ms", tz="UTC")
T0 = 1767952800000


def _topic(bootstrap: str, partitions: int = 2) -> str:
    base = f"lab-{uuid.uuid4().hex[:12]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    name = f"{base}.labels"
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result(timeout=60)
    return base


def _dead_letters(bootstrap: str, topic: str, n: int) -> list[tuple[bytes, dict[str, bytes]]]:
    c = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex,
         "auto.offset.reset": "earliest"}
    )  # fmt: skip
    c.subscribe([topic])
    out = []
    try:
        while len(out) < n:
            msg = c.poll(30)
            assert msg is not None, f"only {len(out)} of {n} dead letters on {topic}"
            if msg.error() is None:
                out.append((msg.value(), dict(msg.headers() or [])))
    finally:
        c.close()
    return out


def test_labels_round_trip_through_kafka(kafka_bootstrap: str, tmp_path: Path) -> None:
    topic = _topic(kafka_bootstrap)
    first = tmp_path / "first.parquet"
    pq.write_table(
        pa.table(
            {
                "transaction_id": ["t1", "t2", "", "t1"],
                "label": [True, True, True, None],
                "label_time": pa.array([T0, T0 + 1, T0 + 2, T0 + 3], pa.int64()).cast(MS),
            }
        ),
        first,
    )
    sent = produce_labels(REFERENCE, kafka_bootstrap, topic, first)
    assert (sent.sent, sent.failed) == (4, 0)
    store = tmp_path / "labels.parquet"
    report = sync_labels(REFERENCE, kafka_bootstrap, topic, store)
    assert (report.read, report.labels, report.dead_letters) == (4, 2, 2)
    labels, rejects = read_labels(REFERENCE, store)
    assert rejects.num_rows == 0
    assert sorted(labels.column("transaction_id").to_pylist()) == ["t1", "t2"]
    dead = _dead_letters(kafka_bootstrap, f"{topic}.labels.dlq", 2)
    reasons = sorted(h["reason"].decode() for _, h in dead)
    assert reasons[0].startswith("label: ") and reasons[1].startswith("transaction_id: ")
    assert all(json.loads(v)["label_time"] for v, _ in dead)  # the original bytes

    # a second sync reads nothing again; a reversal sent later is appended and wins
    again = sync_labels(REFERENCE, kafka_bootstrap, topic, store)
    assert (again.read, again.total_labels) == (0, 2)
    second = tmp_path / "second.parquet"
    pq.write_table(
        pa.table(
            {
                "transaction_id": ["t1"],
                "label": [False],
                "label_time": pa.array([T0 + 86_400_000], pa.int64()).cast(MS),
            }
        ),
        second,
    )
    # through the CLI, as a user replays a labels file
    env = {"SKEWLESS_KAFKA_BOOTSTRAP": kafka_bootstrap, "SKEWLESS_TOPIC": topic}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        assert main(["produce", "--labels", str(second), "--topic", topic]) == 0
    third = sync_labels(REFERENCE, kafka_bootstrap, topic, store)
    assert (third.read, third.labels, third.total_labels) == (1, 1, 3)
    final = latest(read_labels(REFERENCE, store)[0]).to_pydict()
    assert dict(zip(final["transaction_id"], final["label"], strict=True)) == {
        "t1": False,
        "t2": True,
    }
    assert pc.max(read_labels(REFERENCE, store)[0].column("label_time")).as_py() is not None


def test_monitor_reads_labels_from_kafka(kafka_bootstrap: str, tmp_path: Path) -> None:
    from flows.artifacts import read_artifacts
    from flows.labels import write_labels
    from flows.sim_labels import LabelDelays, simulate_labels
    from flows.simulate import SimulationConfig, simulate
    from tests.flows.monitor_support import features_of, train_on, write_log

    events = simulate(SimulationConfig(events=8_000, cards=300, merchants=40, days=4.0))
    features = features_of(REFERENCE, events)
    art = read_artifacts(train_on(REFERENCE, features, tmp_path), REFERENCE.fingerprint())
    write_log(REFERENCE, features, art, tmp_path / "log")
    labels = simulate_labels(events, REFERENCE, 7, LabelDelays(median_days=1.0, min_days=0.1))
    write_labels(labels, tmp_path / "labels.parquet")
    topic = _topic(kafka_bootstrap, partitions=1)
    assert produce_labels(REFERENCE, kafka_bootstrap, topic, tmp_path / "labels.parquet").sent
    out = tmp_path / "monitor"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SKEWLESS_KAFKA_BOOTSTRAP", kafka_bootstrap)
        mp.setenv("SKEWLESS_TOPIC", topic)
        argv = ["monitor", "--labels-from-kafka", "--predictions", str(tmp_path / "log"),
                "--registry", str(tmp_path / "registry"), "--out", str(out),
                "--label-horizon", "2d"]  # fmt: skip
        assert main(argv) == 0
    from_kafka = json.loads((out / "monitor.json").read_text())
    assert read_labels(REFERENCE, out / "labels.parquet")[0].equals(
        read_labels(REFERENCE, tmp_path / "labels.parquet")[0]
    )
    argv = ["monitor", "--labels", str(tmp_path / "labels.parquet"), "--predictions",
            str(tmp_path / "log"), "--registry", str(tmp_path / "registry"),
            "--out", str(tmp_path / "file"), "--label-horizon", "2d"]  # fmt: skip
    assert main(argv) == 0
    from_file = json.loads((tmp_path / "file" / "monitor.json").read_text())
    assert from_kafka["quality_total"] == from_file["quality_total"]
    assert from_kafka["quality_total"]["rows"] > 0
