"""The click-stream example (``examples/clickstream``), a second domain, end to end.

Fast (no services): the definitions load, the generator is seeded and messy on purpose,
the backfill honours the contract on a brute force and training learns the label.
Integration (real Kafka + Redis): the clicks go through the stream, ``verify`` finds zero
mismatches, and clicks scored over gRPC with the generic ``Event`` get exactly the
backfill's features for the same rows.
"""

from __future__ import annotations

import doctest
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from features.definitions import FeatureSet, Op
from features.loader import load_definitions
from flows.backfill import AcceptedEvents, BackfillReport, load_events, run_backfill

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "clickstream"
DEFINITIONS = EXAMPLE / "definitions.py"
GENERATE = EXAMPLE / "generate.py"

EVENTS, SEED = 3_000, 7
#: what the generator plants with these arguments (and the backfill must find)
INVALID, DUPLICATES, LATE = 6, 30, 3
#: a Redis database no other test uses (flushed before use)
REDIS_DB = 14

FEATURES = (
    "user_click_count_10m", "user_click_count_1h", "user_click_count_24h",
    "user_dwell_sum_1h", "user_dwell_sum_24h", "user_dwell_mean_24h", "user_dwell_max_24h",
    "user_dwell_mean_7d", "user_seconds_since_last",
    "item_click_count_1h", "item_click_count_24h", "item_dwell_mean_24h", "item_position_min_7d",
    "dwell_to_user_mean_7d", "click_position",
)  # fmt: skip


def _module(path: Path) -> ModuleType:
    """Import an example file as a user would run it: by path, outside the packages."""
    name = f"clickstream_example_{path.stem}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _fs() -> FeatureSet:
    return load_definitions(DEFINITIONS)


# -- the brute force, written from the contract (DESIGN.md, "Window semantics") ----------


def _brute(fs: FeatureSet, events: AcceptedEvents, entity: str, keys: np.ndarray,
           times: np.ndarray) -> dict[str, np.ndarray]:  # fmt: skip
    """Every window feature of ``entity`` at each ``(key, t)``, one query at a time."""
    mine = events.by_entity[entity]
    out: dict[str, np.ndarray] = {}
    for agg in fs.for_entity(entity):
        col = np.empty(len(keys))
        for i, (k, t) in enumerate(zip(keys.tolist(), times.tolist(), strict=True)):
            own = mine.keys == k
            if agg.op is Op.SINCE_LAST:
                before = mine.ts[own & (mine.ts < t)]
                col[i] = (t - before.max()) / 1000 if len(before) else math.nan
                continue
            assert agg.window is not None
            lo = t // agg.window.hop_ms * agg.window.hop_ms - agg.window.length_ms
            sel = own & (mine.ts >= lo) & (mine.ts < t)
            if agg.op is Op.COUNT:
                col[i] = sel.sum()
                continue
            assert agg.field is not None
            v = mine.fields[agg.field][sel]
            empty = 0.0 if agg.op is Op.SUM else math.nan
            reduce: dict[Op, Callable[[np.ndarray], Any]] = {
                Op.SUM: np.sum, Op.MEAN: np.mean, Op.MAX: np.max, Op.MIN: np.min,
            }  # fmt: skip
            col[i] = reduce[agg.op](v) if len(v) else empty
        out[agg.name] = col
    return out


def _agree(name: str, fs: FeatureSet, got: float, want: float) -> bool:
    """The contract's tolerance: counts, min, max (and times) exactly; float sums and
    means (and what is computed from them) within a relative 1e-9."""
    if math.isnan(want) or math.isnan(got):
        return math.isnan(want) and math.isnan(got)
    ops = {a.name: a.op for a in fs.aggregations}
    if ops.get(name) in (Op.COUNT, Op.MIN, Op.MAX, Op.SINCE_LAST) or name == "click_position":
        return got == want
    return math.isclose(got, want, rel_tol=1e-9, abs_tol=0.0)


def _rounded(seconds: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 2) for k, v in seconds.items()}


def _column(table: pa.Table, name: str) -> np.ndarray:
    return np.asarray(table.column(name).to_numpy(zero_copy_only=False), dtype=np.float64)


# -- the pieces every test shares ---------------------------------------------------------


@dataclass
class Built:
    """Generated events -> backfill -> trained model, once per module."""

    fs: FeatureSet
    dir: Path
    events_path: Path
    table: pa.Table
    report: BackfillReport
    features: pa.Table
    accepted: AcceptedEvents
    registry: Path
    train: Any
    seconds: dict[str, float] = field(default_factory=dict)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    from flows.train import TrainConfig, train_model

    fs = _fs()
    d = tmp_path_factory.mktemp("clickstream")
    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    gen = _module(GENERATE)
    table = gen.generate(events=EVENTS, seed=SEED)
    events_path = d / "clicks.parquet"
    gen.write_events(table, events_path)
    seconds["generate"] = time.perf_counter() - clock
    clock = time.perf_counter()
    report = run_backfill(fs, events_path, d / "backfill")
    seconds["backfill"] = time.perf_counter() - clock
    clock = time.perf_counter()
    registry = d / "registry"
    result = train_model(
        d / "backfill" / "features.parquet", registry, fs, TrainConfig(nthread=1),
        out=lambda _: None,
    )  # fmt: skip
    seconds["train"] = time.perf_counter() - clock
    _, accepted, _, _ = load_events(fs, table, BackfillReport())
    print(f"clickstream timings (s): {_rounded(seconds)}")
    return Built(
        fs, d, events_path, table, report, pq.read_table(d / "backfill" / "features.parquet"),
        accepted, registry, result, seconds,
    )  # fmt: skip


# -- fast: no services --------------------------------------------------------------------


def test_definitions_load_with_their_own_schema_and_features() -> None:
    fs = _fs()
    assert fs.feature_names == FEATURES
    assert (fs.project, fs.label, fs.primary.name) == ("clickstream", "purchased", "user")
    assert [(e.name, e.join_key) for e in fs.entities] == [("user", "user_id"), ("item", "item_id")]
    assert (fs.schema.event_id, fs.schema.event_time) == ("click_id", "ts")
    assert fs.fields == ("dwell_s", "position")  # the item reads two fields, the user one
    assert load_definitions(str(DEFINITIONS)).fingerprint() == fs.fingerprint()


@pytest.mark.parametrize("path", [DEFINITIONS, GENERATE], ids=lambda p: p.name)
def test_example_docstrings_run(path: Path) -> None:
    """The examples' doctests (``examples/`` is outside the collected packages)."""
    result = doctest.testmod(_module(path), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_generator_is_seeded_and_messy_on_purpose(built: Built, tmp_path: Path) -> None:
    gen = _module(GENERATE)
    t = built.table
    assert t.num_rows == EVENTS and t.schema == gen.EVENT_SCHEMA
    assert t.schema.field("ts").type == pa.timestamp("ms", tz="UTC")
    assert gen.generate(events=EVENTS, seed=SEED).equals(t)
    assert not gen.generate(events=EVENTS, seed=SEED + 1).equals(t)
    # the command line writes the same table
    out = tmp_path / "cli.parquet"
    proc = subprocess.run(
        [sys.executable, str(GENERATE), "--out", str(out), "--events", str(EVENTS),
         "--seed", str(SEED)],
        capture_output=True, text=True, check=False, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert pq.read_table(out).equals(t)
    ids = Counter(t.column("click_id").to_pylist())
    assert sum(n - 1 for n in ids.values()) == DUPLICATES
    ts = pc.cast(t.column("ts"), pa.int64()).to_numpy()
    assert (np.diff(ts) < 0).sum() > 20  # out of order, as arrival order is
    share = float(pc.mean(pc.cast(t.column("purchased"), pa.int8())).as_py())
    assert 0.05 < share < 0.2


def test_backfill_counts_what_the_generator_planted(built: Built) -> None:
    r = built.report
    assert (r.events, r.rejected, r.duplicates, r.late) == (EVENTS, INVALID, DUPLICATES, LATE)
    assert r.spine_rows == EVENTS - INVALID - DUPLICATES
    assert r.by_entity["user"]["accepted"] == EVENTS - INVALID - DUPLICATES - LATE
    rejects = pq.read_table(built.dir / "backfill" / "rejects.parquet")
    broken = sorted(s.split(":")[0] for s in rejects.column("reason").to_pylist())
    assert broken == ["click_id", "device", "dwell_s", "dwell_s", "position", "user_id"]
    late = pq.read_table(built.dir / "backfill" / "late.parquet")
    assert sorted(late.column("click_id").to_pylist()) == [f"late{k:05d}" for k in range(LATE)]
    assert set(late.column("late_for").to_pylist()) == {"user,item"}
    assert [n for n in built.features.column_names if n in FEATURES] == list(FEATURES)


def test_backfill_features_equal_a_brute_force(built: Built) -> None:
    """Every window feature of 300 rows, from the contract's window rule by hand."""
    fs, f = built.fs, built.features
    rows = np.random.default_rng(0).choice(f.num_rows, 300, replace=False)
    sample = f.take(pa.array(rows))
    t = pc.cast(pc.cast(sample.column("ts"), pa.timestamp("ms", tz="UTC")), pa.int64())
    times = t.to_numpy()
    for e in fs.entities:
        keys = sample.column(e.join_key).to_numpy()
        want = _brute(fs, built.accepted, e.name, keys, times)
        for name, col in want.items():
            got = _column(sample, name)
            bad = [i for i in range(len(col)) if not _agree(name, fs, got[i], col[i])]
            assert not bad, (name, [(got[i], col[i]) for i in bad[:3]])
    mean7 = _column(sample, "user_dwell_mean_7d")
    ratio = _column(sample, "dwell_to_user_mean_7d")
    dwell = _column(sample, "dwell_s")
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(ratio, dwell / mean7)
    np.testing.assert_array_equal(_column(sample, "click_position"), _column(sample, "position"))


def test_training_learns_the_label_from_the_window_features(built: Built) -> None:
    meta = built.train.metadata
    assert tuple(meta["feature_names"]) == FEATURES
    assert meta["fingerprint"] == built.fs.fingerprint()
    test = meta["metrics"]["test"]
    assert test["roc_auc"] > 0.7, test
    assert meta["ablation"]["roc_auc_lift"] > 0.0, meta["ablation"]  # windows help


# -- integration: real Kafka + Redis ------------------------------------------------------


@dataclass
class Streamed:
    topic: str
    url: str
    bootstrap: str
    seconds: dict[str, float]


@pytest.fixture(scope="module")
def streamed(built: Built, kafka_bootstrap: str, redis_url: str) -> Streamed:
    """The clicks, keyed by user id, through Kafka and the flow into Redis."""
    import redis
    from bytewax.testing import run_main

    from features.store import StoreConfig
    from flows.produce import produce_messages
    from flows.stream import StreamConfig, build_flow
    from flows.stream_io import table_to_messages
    from tests.integration import stream_support as sup

    url = sup.redis_db_url(redis_url, REDIS_DB)
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    topic = f"clicks-{os.getpid()}-{time.time_ns() % 10**9}"
    sup.create_topic(kafka_bootstrap, topic, 2)
    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    keys = (str(u).encode() for u in built.table.column("user_id").to_pylist())
    msgs = list(zip(keys, table_to_messages(built.table), strict=True))
    report = produce_messages(kafka_bootstrap, topic, msgs)
    assert report.failed == 0 and report.sent == EVENTS, report
    seconds["produce"] = time.perf_counter() - clock
    clock = time.perf_counter()
    cfg = StreamConfig(
        store=StoreConfig(redis_url=url), brokers=kafka_bootstrap, topic=topic,
        out_dir=built.dir / "stream", tail=False,
    )  # fmt: skip
    run_main(build_flow(built.fs, cfg))  # returns only if the flow never crashed
    seconds["stream"] = time.perf_counter() - clock
    print(f"clickstream timings (s): {_rounded(seconds)}")
    return Streamed(topic, url, kafka_bootstrap, seconds)


@pytest.mark.integration
def test_online_states_equal_the_backfill(built: Built, streamed: Streamed) -> None:
    from features.store import StoreConfig, open_store
    from skewless.verify import check_online_states

    store = open_store(StoreConfig(redis_url=streamed.url), built.fs)
    try:
        report = check_online_states(
            built.fs, store, built.accepted, sample_per_entity=10_000, times_per_entity=4
        )
    finally:
        store.close()
    assert report.entities == built.report.entities  # every user and item, not a sample
    assert report.missing_states == {"user": 0, "item": 0}
    n = sum(built.report.entities[e.name] * len(built.fs.for_entity(e)) for e in built.fs.entities)
    assert report.compared == 4 * n
    assert report.mismatches == 0, report.to_json()


def _consume(bootstrap: str, topic: str, expected: int) -> list[Any]:
    """Every message of ``topic`` (waits for ``expected``, then drains a little longer)."""
    from confluent_kafka import Consumer

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"check-{topic}",
                  "auto.offset.reset": "earliest"})  # fmt: skip
    c.subscribe([topic])
    got: list[Any] = []
    deadline = time.monotonic() + 30
    idle = 0
    while (len(got) < expected or idle < 2) and time.monotonic() < deadline:
        msgs = [m for m in c.consume(100, 0.5) if m.error() is None]
        idle = 0 if msgs else idle + 1
        got += msgs
    c.close()
    return got


@pytest.mark.integration
def test_dead_letters_name_the_broken_field(built: Built, streamed: Streamed) -> None:
    dlq = _consume(streamed.bootstrap, f"{streamed.topic}.dlq", INVALID)
    reasons = sorted(dict(m.headers())["reason"].decode().split(":")[0] for m in dlq)
    assert reasons == ["click_id", "device", "dwell_s", "dwell_s", "position", "user_id"]


@pytest.mark.integration
def test_late_output_names_the_entities_that_dropped_each_click(
    built: Built, streamed: Streamed
) -> None:
    late = pq.read_table(built.dir / "backfill" / "late.parquet")
    want = Counter(
        (click, entity)
        for click, who in zip(late.column("click_id").to_pylist(),
                              late.column("late_for").to_pylist(), strict=True)
        for entity in who.split(",")
    )  # fmt: skip
    got = _consume(streamed.bootstrap, f"{streamed.topic}.late", sum(want.values()))
    seen = Counter(
        (json.loads(m.value())["click_id"], dict(m.headers())["late_for"].decode()) for m in got
    )
    assert seen == want
    assert {m.key() for m in got} == {str(u).encode() for u in late.column("user_id").to_pylist()}


@dataclass
class Served:
    rows: pa.Table  # the backfill rows that were scored
    single: list[Any]  # Score responses, one per row
    batch: list[Any]  # ScoreBatch responses, same rows
    log_dir: Path
    seconds: float


def _scorable_rows(built: Built, k: int) -> pa.Table:
    """Backfill rows whose time is within the exact horizon of both their user's and
    their item's newest event (older query times are refused, not approximated)."""
    from features.plan import compile_plan

    plan = compile_plan(built.fs)
    f = built.features
    t = pc.cast(pc.cast(f.column("ts"), pa.timestamp("ms", tz="UTC")), pa.int64()).to_numpy()
    ok = np.ones(f.num_rows, dtype=bool)
    for e in plan.entities:
        mine = built.accepted.by_entity[e.name]
        newest: dict[int, int] = {}
        for key, ts in zip(mine.keys.tolist(), mine.ts.tolist(), strict=True):
            newest[key] = max(ts, newest.get(key, ts))
        keys = f.column(e.join_key).to_numpy()
        lo = np.array([newest[key] for key in keys.tolist()]) - e.layout.horizon_ms
        ok &= t >= lo
    rows = np.flatnonzero(ok)
    assert len(rows) >= k, f"only {len(rows)} rows within the exact horizon"
    pick = np.sort(np.random.default_rng(1).choice(rows, k, replace=False))
    return f.take(pa.array(pick))


@pytest.fixture(scope="module")
def served(built: Built, streamed: Streamed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:  # fmt: skip
    """The trained model behind the real gRPC server, reading the stream's Redis."""
    from features.plan import compile_plan
    from serving._proto.skewless.v1 import scorer_pb2 as pb
    from serving.convert import event_message
    from serving.server import ServerConfig
    from tests.serving.conftest import RunningServer

    plan = compile_plan(built.fs)
    log_dir = tmp_path_factory.mktemp("predictions")
    config = ServerConfig(
        registry_dir=built.registry, address="127.0.0.1:0", redis_url=streamed.url,
        prediction_log_dir=log_dir, definitions=str(DEFINITIONS), max_batch_size=100,
    )  # fmt: skip
    clock = time.perf_counter()
    server = RunningServer(config)
    try:
        server.wait_health("SERVING")
        rows = _scorable_rows(built, 40)
        names = list(built.fs.schema.names)
        wire = rows.select(names).set_column(  # the time as epoch ms, as on the wire
            names.index("ts"), "ts", pc.cast(rows.column("ts"), pa.int64())
        )
        events = [event_message(r, plan) for r in wire.to_pylist()]
        single = [
            server.stub.Score(pb.ScoreRequest(event=ev, include_features=True), timeout=10)
            for ev in events
        ]
        batch = list(
            server.stub.ScoreBatch(
                pb.ScoreBatchRequest(events=events, include_features=True), timeout=10
            ).responses
        )
        seconds = time.perf_counter() - clock
        print(f"clickstream timings (s): {_rounded({'serve_and_score': seconds})}")
    finally:
        server.stop(1.0)  # flushes the prediction log
    yield Served(rows, single, batch, log_dir, seconds)


def _features(resp: Any) -> dict[str, float]:
    return {f.name: math.nan if f.missing else f.value for f in resp.features}


@pytest.mark.integration
def test_served_features_equal_the_backfill_for_the_same_rows(built: Built, served: Served) -> None:
    fs = built.fs
    ids = served.rows.column("click_id").to_pylist()
    assert [r.transaction_id for r in served.single] == ids
    assert [r.transaction_id for r in served.batch] == ids
    want = {name: _column(served.rows, name) for name in FEATURES}  # null -> NaN
    for i, (one, many) in enumerate(zip(served.single, served.batch, strict=True)):
        got = _features(one)
        assert tuple(got) == FEATURES
        for name in FEATURES:
            w = float(want[name][i])
            assert _agree(name, fs, got[name], w), (ids[i], name, got[name], w)
        assert [e.found for e in one.entities] == [True, True]
        assert not one.warnings
        assert many.score == one.score and _features(many).keys() == got.keys()
    assert len({r.score for r in served.single}) > 1
    # the rows are not trivial: recent history on both sides, some of it in short windows
    for name in ("user_click_count_1h", "item_click_count_24h", "user_dwell_sum_1h"):
        assert (want[name] > 0).sum() >= 10, name


@pytest.mark.integration
def test_verify_cli_reports_zero_mismatches(
    built: Built, streamed: Streamed, served: Served
) -> None:
    """``skewless --definitions ... verify --topic``: the topic's events, the online states
    and every logged prediction against the backfill."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKEWLESS_")}
    env.update(
        SKEWLESS_KAFKA_BOOTSTRAP=streamed.bootstrap, SKEWLESS_REDIS_URL=streamed.url,
        SKEWLESS_DATA_DIR=str(built.dir / "verify"), SKEWLESS_LOG_LEVEL="WARNING",
    )  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "skewless", "--definitions", str(DEFINITIONS), "verify",
         "--topic", streamed.topic, "--predictions", str(served.log_dir),
         "--registry", str(built.registry), "--sample", "10000"],
        capture_output=True, text=True, check=False, cwd=ROOT, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    body = json.loads(proc.stdout)
    assert body["mismatches"] == 0
    assert body["online_state"]["missing_states"] == {"user": 0, "item": 0}
    assert body["online_state"]["entities"] == built.report.entities
    preds = body["predictions"]
    assert preds["rows"] == 2 * len(served.single)  # Score and ScoreBatch, both logged
    assert preds["mismatches"] == 0 and preds["max_score_delta"] == 0.0
    assert preds["max_logged_score_error"] == 0.0
