"""``skewless predict`` == ``Score``, bit for bit, for any definitions.

A world of events is folded into an embedded Feast store the way the stream writes it, a
real gRPC server scores a random sample of its recent events plus events of entities it
has never seen, and ``predict`` scores the same rows from the backfill of the same
events: every score must be the same float.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from features.definitions import FeatureSet
from features.loader import load_definitions
from features.plan import compile_plan
from features.schema import InvalidEventError
from features.store import StoreConfig, open_store
from flows.artifacts import read_artifacts
from flows.backfill import BackfillReport, load_events
from flows.predict import predict_table
from flows.registry import resolve
from serving.testing import fold_states, publish_synthetic_model, write_states
from skewless.verify_predict import check_predict

ROOT = Path(__file__).resolve().parents[2]
CLICKSTREAM = ROOT / "examples" / "clickstream"
DAY = 86_400_000


def _generator() -> ModuleType:
    name = "predict_test_clickstream_generate"
    spec = importlib.util.spec_from_file_location(name, CLICKSTREAM / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _world(kind: str) -> tuple[FeatureSet, str, pa.Table]:
    if kind == "reference":
        from flows.simulate import SimulationConfig, simulate

        cfg = SimulationConfig(events=12_000, cards=400, merchants=40, days=3.0, seed=5)
        return load_definitions(None), "", simulate(cfg)
    spec = str(CLICKSTREAM / "definitions.py")
    return load_definitions(spec), spec, _generator().generate(events=12_000, seed=5)


def _wire(fs: FeatureSet, table: pa.Table) -> list[dict[str, object]]:
    """Rows of the schema's columns with the event time as epoch ms (as on the wire)."""
    names = list(fs.schema.names)
    t = fs.schema.event_time
    out = table.select(names)
    if pa.types.is_timestamp(out.column(t).type):
        ms = pc.cast(pc.cast(out.column(t), pa.timestamp("ms", tz="UTC")), pa.int64())
        out = out.set_column(names.index(t), t, ms)
    return out.to_pylist()


def _ms(fs: FeatureSet, table: pa.Table) -> np.ndarray:
    col = table.column(fs.schema.event_time)
    return pc.cast(pc.cast(col, pa.timestamp("ms", tz="UTC")), pa.int64()).to_numpy()


def _split(fs: FeatureSet, events: pa.Table) -> tuple[pa.Table, pa.Table]:
    """(history: what the store holds, sample: rows to score). The sample is 100 events
    of the last two hours (not in the store), 50 events of the history whose every entity
    state can still answer at their time (within its exact horizon, 1 h), and 30 copies of
    recent events whose primary entity (and, for half, every entity) was never seen."""
    t = _ms(fs, events)
    cut = int(t.max()) - 2 * 3_600_000
    history = events.filter(pa.array(t < cut))
    first, _, _, _ = load_events(fs, events, BackfillReport())
    ft = _ms(fs, first)
    ok = ft < cut
    for e in fs.entities:
        keys = history.column(e.join_key).to_numpy()
        newest: dict[int, int] = {}
        for k, v in zip(keys.tolist(), _ms(fs, history).tolist(), strict=True):
            newest[k] = max(newest.get(k, v), v)
        mine = first.column(e.join_key).to_numpy().tolist()
        ok &= np.array([ft[i] >= newest.get(k, 0) - 3_000_000 for i, k in enumerate(mine)])
    rng = np.random.default_rng(11)
    future = np.flatnonzero(ft >= cut)
    pick_f = np.sort(rng.choice(future, 130, replace=False))
    pick_h = np.sort(rng.choice(np.flatnonzero(ok), 50, replace=False))
    known = first.take(pa.array(np.concatenate([pick_h, pick_f[:100]])))
    novel = first.take(pa.array(pick_f[100:]))
    for k, e in enumerate(fs.entities):
        if k > 0:  # the other entities: unknown for the first half only
            half = np.arange(novel.num_rows) < novel.num_rows // 2
            old = novel.column(e.join_key).to_numpy()
            ids = np.where(half, 2_000_000_000 + np.arange(novel.num_rows), old)
        else:
            ids = 1_000_000_000 + np.arange(novel.num_rows)
        col = pa.array(ids, novel.schema.field(e.join_key).type)
        novel = novel.set_column(novel.schema.get_field_index(e.join_key), e.join_key, col)
    eid = fs.schema.event_id
    ids = pa.array([f"new-{i}" for i in range(novel.num_rows)], pa.string())
    novel = novel.set_column(novel.schema.get_field_index(eid), eid, ids)
    return history, pa.concat_tables([known, novel])


@pytest.mark.parametrize("kind", ["reference", "clickstream"])
def test_predict_equals_score(kind: str, tmp_path: Path) -> None:
    from serving._proto.skewless.v1 import scorer_pb2 as pb
    from serving.convert import event_message
    from serving.server import ServerConfig
    from tests.serving.conftest import RunningServer

    fs, spec, events = _world(kind)
    history, sample = _split(fs, events)
    plan = compile_plan(fs)
    records = []
    for row in _wire(fs, history):
        try:
            records.append(plan.validator.validate(row))
        except InvalidEventError:
            continue  # the stream sends it to the dead letters
    store = open_store(StoreConfig(workdir=tmp_path / "feast"), fs)
    write_states(store, fold_states(records, fs), fs)
    store.close()
    registry = tmp_path / "registry"
    publish_synthetic_model(registry, fs=fs, rounds=60, max_depth=4, seed=3)

    model = read_artifacts(resolve(registry, "production"), fs.fingerprint())
    predicted, report, _ = predict_table(fs, history, model, spine=sample)
    assert report.scored == sample.num_rows == 180

    config = ServerConfig(
        registry_dir=registry, feast_dir=tmp_path / "feast", address="127.0.0.1:0",
        definitions=spec, max_batch_size=100, prediction_log_dir=tmp_path / "log",
    )  # fmt: skip
    server = RunningServer(config)
    try:
        server.wait_health("SERVING")
        messages = [event_message(r, plan) for r in _wire(fs, sample)]
        single = [server.stub.Score(pb.ScoreRequest(event=m), timeout=10) for m in messages]
        batch = [
            r
            for i in range(0, len(messages), 100)
            for r in server.stub.ScoreBatch(
                pb.ScoreBatchRequest(events=messages[i : i + 100]), timeout=10
            ).responses
        ]
    finally:
        server.stop(0)
    served = [r.score for r in single]
    want = predicted.column("score").to_pylist()
    diff = [(i, a, b) for i, (a, b) in enumerate(zip(served, want, strict=True)) if a != b]
    assert diff == [], f"{len(diff)} of {len(want)} scores differ, e.g. {diff[:3]}"
    assert [r.score for r in batch] == want  # ScoreBatch too
    assert predicted.column(fs.schema.event_id).to_pylist() == [r.transaction_id for r in single]
    assert [r.model_version for r in single] == predicted.column("model_version").to_pylist()
    assert len(set(served)) > 20  # the sample really exercises the model
    assert any(r.warnings for r in single[150:])  # the unknown entities were unknown

    # verify's check over the server's prediction log (Score and ScoreBatch): zero mismatches
    log = pa.concat_tables([pq.read_table(f) for f in sorted((tmp_path / "log").glob("*.parquet"))])
    _, accepted, _, _ = load_events(fs, history, BackfillReport())
    same = check_predict(fs, log, accepted, registry)
    assert (same.compared, same.mismatches, same.max_abs_diff) == (360, 0, 0.0)
    scores = log.column("score").to_numpy().copy()
    scores[7] = np.nextafter(scores[7], 2.0)
    tampered = log.set_column(log.schema.get_field_index("score"), "score", pa.array(scores))
    same = check_predict(fs, tampered, accepted, registry)
    assert same.mismatches == 1 and same.examples[0]["served"] == scores[7]


def test_predict_cli(tmp_path: Path) -> None:
    from skewless.cli import main

    fs, _, events = _world("reference")
    registry = tmp_path / "registry"
    publish_synthetic_model(registry, fs=fs, rounds=10, seed=3)
    bad = events.slice(0, 1)
    bad = bad.set_column(bad.schema.get_field_index("amount"), "amount", pa.array([-1.0]))
    bad = bad.set_column(0, "transaction_id", pa.array(["bad-1"]))
    events = pa.concat_tables([events, bad])
    pq.write_table(events, tmp_path / "events.parquet")
    out = tmp_path / "pred" / "scores.parquet"
    argv = ["predict", "--events", str(tmp_path / "events.parquet"), "--out", str(out),
            "--registry", str(registry)]  # fmt: skip
    assert main(argv) == 0
    got = pq.read_table(out)
    first, _, _, _ = load_events(fs, events, BackfillReport())
    assert got.num_rows == first.num_rows
    assert got.column_names == ["transaction_id", "event_time", "score", "decision",
                                "threshold", "model_version"]  # fmt: skip
    assert set(got.column("model_version").to_pylist()) == {"v0001"}
    p = got.column("score").to_numpy()
    assert ((p >= 0) & (p <= 1)).all()
    assert (got.column("decision").to_numpy(zero_copy_only=False) == (p >= 0.5)).all()
    rejects = pq.read_table(tmp_path / "pred" / "scores.rejects.parquet")
    assert "bad-1" in rejects.column("transaction_id").to_pylist()
    assert "bad-1" not in got.column("transaction_id").to_pylist()
    assert main([*argv[:-1], str(tmp_path / "nowhere")]) == 2  # a missing registry: one line
