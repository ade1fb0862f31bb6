"""``skewless demo``: the whole loop on embedded defaults, no Kafka or Redis.

simulate -> backfill the history -> train -> ``feast materialize`` the backfill's end state
into the embedded (SQLite) online store -> stream the latest day through the Bytewax flow
-> serve over gRPC (a separate process) -> score the last hour's events -> check that every
feature the server used equals the backfill's, and that the online state equals the
backfill at exact query times. Prints a short report and writes ``report.html``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from features.definitions import MS_PER_DAY, MS_PER_HOUR, Op
from features.reference import REFERENCE
from features.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


#: when each step of the running demo began (perf_counter): the report's step timings
_STARTED: dict[str, float] = {}


def _step(name: str) -> float:
    print(f"-> {name}", flush=True)
    _STARTED[name] = time.perf_counter()
    return _STARTED[name]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_demo(args: argparse.Namespace, settings: Settings) -> int:
    from bytewax.testing import run_main

    from features.store import StoreConfig, open_feature_store, open_store
    from flows.backfill import BackfillReport, load_events, run_backfill
    from flows.simulate import SimulationConfig, simulate, write_events
    from flows.stream import StreamConfig, build_flow
    from flows.stream_io import METRICS
    from flows.train import train_model
    from skewless.verify import check_online_states

    out: Path = (args.out or settings.data_dir / "demo").resolve()
    kafka = settings.kafka_bootstrap if args.kafka else ""
    redis_url = settings.redis_url if args.redis else ""
    if args.kafka and not kafka:
        raise ValueError(
            "--kafka: set SKEWLESS_KAFKA_BOOTSTRAP (start a broker with "
            "`scripts/services.sh kafka-start DIR`)"
        )
    if args.redis and not redis_url:
        raise ValueError(
            "--redis: set SKEWLESS_REDIS_URL "
            "(start Redis with `scripts/services.sh redis-start DIR`)"
        )
    if kafka or redis_url:
        from flows.stream_run import preflight

        preflight(dataclasses.replace(settings, kafka_bootstrap=kafka, redis_url=redis_url))
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    report: dict[str, Any] = {"out": str(out)}
    began = time.perf_counter()
    _STARTED.clear()

    t = _step(f"simulate {args.events:,} events")
    table = simulate(SimulationConfig(events=args.events), progress=sys.stderr.isatty())
    write_events(table, out / "events.parquet")
    ms = pc.cast(table.column("event_time"), pa.int64())
    end = int(pc.max(ms).as_py()) + 1
    cut = end - MS_PER_DAY
    history = table.filter(pc.less(ms, cut))
    latest = table.filter(pc.greater_equal(ms, cut))
    pq.write_table(history, out / "history.parquet")
    pq.write_table(latest, out / "latest_day.parquet")
    report["events"] = {"history": history.num_rows, "latest_day": latest.num_rows}

    t = _step("backfill the history")
    bf = run_backfill(REFERENCE, out / "history.parquet", out / "backfill")
    report["backfill_seconds"] = round(time.perf_counter() - t, 1)
    report["backfill"] = {"rejected": bf.rejected, "duplicates": bf.duplicates, "late": bf.late}

    t = _step("train (time-based split, ablation, ONNX parity)")
    trained = train_model(
        out / "backfill" / "features.parquet", out / "registry", REFERENCE, out=lambda _: None
    )
    meta = trained.metadata
    report["model"] = {"version": trained.version, **_pick(meta)}
    report["train_seconds"] = round(time.perf_counter() - t, 1)

    t = _step("feast materialize the backfill's end state (bootstrap)")
    store_cfg = StoreConfig(redis_url=redis_url, workdir=out / "feast")
    fstore = open_feature_store(store_cfg, REFERENCE, data_dir=out / "backfill" / "feast")
    from datetime import UTC, datetime

    fstore.materialize(datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))

    source = f"Kafka at {kafka}" if kafka else "a Parquet replay"
    t = _step(f"stream the latest day ({latest.num_rows:,} events) from {source} through Bytewax")
    topic = ""
    if kafka:
        topic = _produce(kafka, latest)
    replay = None if kafka else out / "latest_day.parquet"
    cfg = StreamConfig(
        store=store_cfg, brokers=kafka, topic=topic,
        replay_path=replay, out_dir=out / "stream", tail=False,
    )  # fmt: skip
    fresh_before = _hist(METRICS.freshness)
    run_main(build_flow(REFERENCE, cfg))
    stream_s = time.perf_counter() - t
    report["stream"] = {
        "events": latest.num_rows, "seconds": round(stream_s, 1),
        "source": "kafka" if kafka else "replay",
        "events_per_s": round(latest.num_rows / stream_s),
        "freshness": _hist_summary(_hist(METRICS.freshness), fresh_before),
    }  # fmt: skip

    t = _step("skew check: online state vs backfill over all events")
    _, accepted, _, _ = load_events(REFERENCE, table, BackfillReport())
    store = open_store(store_cfg, REFERENCE)
    skew = check_online_states(
        REFERENCE, store, accepted, sample_per_entity=1000, times_per_entity=4
    )
    report["skew_online_state"] = {"compared": skew.compared, "mismatches": skew.mismatches}

    t = _step("serve over gRPC and score the last hour's events")
    scored = latest.filter(
        pc.greater_equal(pc.cast(latest.column("event_time"), pa.int64()), end - MS_PER_HOUR)
    )
    scored = scored.slice(0, args.score)
    latencies, used = _score_over_grpc(out, scored, redis_url)
    report["scoring"] = {
        "requests": len(latencies),
        "p50_ms": round(float(np.percentile(latencies, 50)), 3),
        "p99_ms": round(float(np.percentile(latencies, 99)), 3),
    }

    t = _step("skew check: features the server used vs the backfill at the same event time")
    from flows.backfill import compute_features

    want = compute_features(REFERENCE, scored, accepted)
    report["skew_scored"] = _compare_scored(used, want)
    from skewless.demo_report import write_html
    from skewless.demo_report_tables import step_seconds

    report["steps"] = step_seconds(_STARTED, time.perf_counter())
    report["total_seconds"] = round(time.perf_counter() - began, 1)
    (out / "report.json").write_text(json.dumps(report, indent=2))

    write_html(out, report, latencies, trained.version_dir)
    _print(report)
    return 0 if report["skew_scored"]["mismatches"] == 0 and skew.mismatches == 0 else 1


def _pick(meta: dict[str, Any]) -> dict[str, Any]:
    test = meta.get("metrics", {}).get("test", {})
    keys = ("roc_auc", "pr_auc", "log_loss", "precision_at_threshold", "recall_at_threshold")
    picked = {k: round(float(test[k]), 4) for k in keys if k in test}
    ablation = meta.get("ablation", {}).get("request_only", {})
    return picked | {
        "threshold": meta.get("threshold"),
        "request_only_pr_auc": round(float(ablation.get("pr_auc", float("nan"))), 4),
    }


def _hist(h: Any) -> list[tuple[float, float]]:
    out = []
    for metric in h.collect():
        for s in metric.samples:
            if s.name.endswith("_bucket"):
                out.append((float(s.labels["le"]), s.value))
    return sorted(out)


def _hist_summary(
    after: list[tuple[float, float]], before: list[tuple[float, float]]
) -> dict[str, Any]:
    b = dict(before)
    counts = [(le, c - b.get(le, 0.0)) for le, c in after]
    total = counts[-1][1] if counts else 0.0
    within = next((c for le, c in counts if le >= 0.5), 0.0)
    p50 = next((le for le, c in counts if total and c >= 0.5 * total), float("nan"))
    p99 = next((le for le, c in counts if total and c >= 0.99 * total), float("nan"))
    return {"rows": int(total), "p50_ms_at_most": p50 * 1000, "p99_ms_at_most": p99 * 1000,
            "buckets": [[le, c] for le, c in counts if le != float("inf")],
            "share_within_500ms": round(within / total, 4) if total else None}  # fmt: skip


def _produce(bootstrap: str, table: pa.Table) -> str:
    """The events into a new topic (key = card id), as `skewless produce` sends them."""
    from confluent_kafka.admin import AdminClient, NewTopic

    from flows.produce import produce_messages
    from flows.stream_io import table_to_messages

    topic = f"skewless-demo-{int(time.time())}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])[topic].result(60)
    keys = (str(c).encode() for c in table.column("card_id").to_pylist())
    report = produce_messages(bootstrap, topic, zip(keys, table_to_messages(table), strict=True))
    if report.failed:
        raise RuntimeError(f"produce: {report.failed} events not delivered ({report.first_error})")
    return topic


def _score_over_grpc(
    out: Path, scored: pa.Table, redis_url: str = ""
) -> tuple[list[float], list[dict[str, float]]]:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from features.plan import compile_plan
    from serving._proto.skewless.v1 import scorer_pb2 as pb
    from serving._proto.skewless.v1 import scorer_pb2_grpc as pb_grpc
    from serving.convert import event_transaction

    plan = compile_plan(REFERENCE)
    port = _free_port()
    log = (out / "serve.log").open("wb")
    cmd = [sys.executable, "-m", "skewless", "--data-dir", str(out), "serve",
           "--address", f"127.0.0.1:{port}", "--registry", str(out / "registry"),
           "--redis-url", redis_url]  # fmt: skip
    server = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 60
        while True:
            try:
                status = health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    break
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"server did not become ready; see {out / 'serve.log'}")
            time.sleep(0.1)
        stub = pb_grpc.ScorerStub(channel)
        latencies, used = [], []
        for row in tqdm(scored.to_pylist(), desc="score", disable=not sys.stderr.isatty()):
            row["event_time"] = int(row["event_time"].timestamp() * 1000)
            row.pop("is_fraud", None)
            req = pb.ScoreRequest(transaction=event_transaction(row, plan), include_features=True)
            t0 = time.perf_counter()
            resp = stub.Score(req, timeout=5)
            latencies.append((time.perf_counter() - t0) * 1000)
            used.append({f.name: (float("nan") if f.missing else f.value) for f in resp.features})
        channel.close()
        return latencies, used
    finally:
        server.terminate()
        server.wait(20)


def _compare_scored(used: list[dict[str, float]], want: pa.Table) -> dict[str, Any]:
    from skewless.verify import values_agree

    ops = {a.name: a.op for a in REFERENCE.aggregations}
    mismatches, compared, per_feature = 0, 0, {}
    for name in REFERENCE.feature_names:
        col = want.column(name).to_pylist()
        bad = 0
        for i, u in enumerate(used):
            w = col[i]
            w = float("nan") if w is None else float(w)
            ok, _ = values_agree(ops.get(name, Op.SUM), float(u[name]), w, 1e7)
            compared += 1
            bad += not ok
        per_feature[name] = bad
        mismatches += bad
    return {"compared": compared, "mismatches": mismatches, "per_feature": per_feature}


def _print(r: dict[str, Any]) -> None:
    m, s, st = r["model"], r["scoring"], r["stream"]
    print()
    print(f"model {m['version']}: test ROC-AUC {m.get('roc_auc')}  PR-AUC {m.get('pr_auc')} "
          f"(request-time features only: {m.get('request_only_pr_auc')})  precision "
          f"{m.get('precision_at_threshold')}  recall {m.get('recall_at_threshold')}")  # fmt: skip
    print(f"stream: {st['events']:,} events in {st['seconds']} s ({st['events_per_s']:,}/s); "
          f"freshness p99 <= {st['freshness']['p99_ms_at_most']:.0f} ms")  # fmt: skip
    print(
        f"scoring over gRPC: {s['requests']} requests, p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms"
    )
    print(f"skew, online state vs backfill: {r['skew_online_state']['mismatches']} mismatches "
          f"in {r['skew_online_state']['compared']:,} values")  # fmt: skip
    print(f"skew, features used by Score vs backfill: {r['skew_scored']['mismatches']} mismatches "
          f"in {r['skew_scored']['compared']:,} values")  # fmt: skip
    print(f"report: {Path(r['out']) / 'report.html'}  ({r['total_seconds']} s in all)")
