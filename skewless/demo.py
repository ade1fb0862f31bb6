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


#: marks a folder the demo wrote (and may wipe); any other non-empty folder is refused
MARKER = ".skewless-demo"


class Steps:
    """Prints each step as it starts and its time when it ends; the seconds land in
    ``seconds`` (the report's ``steps``)."""

    def __init__(self, seconds: dict[str, float]) -> None:
        self.seconds = seconds
        self.name = ""
        self.began = 0.0

    def __call__(self, name: str, label: str) -> float:
        self.done()
        print(f"-> {label}", flush=True)
        self.name, self.began = name, time.perf_counter()
        return self.began

    def done(self) -> None:
        if self.name:
            self.seconds[self.name] = round(time.perf_counter() - self.began, 1)
            print(f"   {self.seconds[self.name]} s", flush=True)
            self.name = ""


def prepare(out: Path) -> None:
    """An empty folder for the demo: a new one, or one an earlier demo wrote (wiped). A
    folder with other data is refused, naming it: the demo writes a data root (registry,
    store, logs) and must not mix its model and state with someone else's."""
    if out.exists() and any(out.iterdir()):
        earlier = (out / "report.json").exists() and (out / "history.parquet").exists()
        if not (out / MARKER).exists() and not earlier:
            raise ValueError(
                f"demo: {out} already holds data the demo did not write; run it in its own "
                f"data root, e.g. `skewless --data-dir {out / 'demo'} demo`"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by `skewless demo`; the next demo run wipes this folder\n")


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
    from flows.stream_summary import print_summary, watch
    from flows.train import train_model
    from skewless.verify import check_online_states

    # the demo's folder is a data root: `skewless --data-dir OUT models|serve|verify` find
    # its registry, online store and prediction log there
    out: Path = (args.out or settings.data_dir).resolve()
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
    if redis_url:
        from skewless.demo_redis import guard

        guard(redis_url, REFERENCE, reset=args.reset_redis)
    prepare(out)
    report: dict[str, Any] = {"out": str(out), "steps": {}}
    began = time.perf_counter()
    step = Steps(report["steps"])

    step("simulate", f"simulate {args.events:,} events")
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

    t = step("backfill", "backfill the history")
    bf = run_backfill(REFERENCE, out / "history.parquet", out / "backfill")
    report["backfill_seconds"] = round(time.perf_counter() - t, 1)
    report["backfill"] = {"rejected": bf.rejected, "duplicates": bf.duplicates, "late": bf.late}

    t = step("train", "train (time-based split, ablation, ONNX parity)")
    registry = out / "registry"  # its own, even when SKEWLESS_REGISTRY_DIR names another
    trained = train_model(
        out / "backfill" / "features.parquet", registry, REFERENCE, out=lambda _: None
    )
    meta = trained.metadata
    report["model"] = {"version": trained.version, **_pick(meta)}
    report["train_seconds"] = round(time.perf_counter() - t, 1)

    step("materialize", "feast materialize the backfill's end state (bootstrap)")
    store_cfg = StoreConfig(redis_url=redis_url, workdir=out / "feast")
    fstore = open_feature_store(store_cfg, REFERENCE, data_dir=out / "backfill" / "feast")
    from datetime import UTC, datetime

    fstore.materialize(datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))

    source = f"Kafka at {kafka}" if kafka else "a Parquet replay"
    label = f"stream the latest day ({latest.num_rows:,} events) from {source} through Bytewax"
    t = step("stream", label)
    topic = ""
    if kafka:
        topic = _produce(kafka, latest)
    replay = None if kafka else out / "latest_day.parquet"
    cfg = StreamConfig(
        store=store_cfg, brokers=kafka, topic=topic,
        replay_path=replay, out_dir=out / "stream", tail=False,
    )  # fmt: skip
    fresh_before = _hist(METRICS.freshness)
    with watch(latest.num_rows) as counted:
        run_main(build_flow(REFERENCE, cfg))
    counts = print_summary(counted, REFERENCE, cfg)
    stream_s = time.perf_counter() - t
    report["stream"] = {
        "events": latest.num_rows, "seconds": round(stream_s, 1),
        "source": "kafka" if kafka else "replay",
        "events_per_s": round(latest.num_rows / stream_s),
        "freshness": _hist_summary(_hist(METRICS.freshness), fresh_before),
        "counts": counts.to_dict(),
    }  # fmt: skip

    step("skew_online", "skew check: online state vs backfill over all events")
    _, accepted, _, _ = load_events(REFERENCE, table, BackfillReport())
    store = open_store(store_cfg, REFERENCE)
    skew = check_online_states(
        REFERENCE, store, accepted, sample_per_entity=1000, times_per_entity=4
    )
    report["skew_online_state"] = {"compared": skew.compared, "mismatches": skew.mismatches}

    step("serve_score", "serve over gRPC and score the last hour's events")
    scored = latest.filter(
        pc.greater_equal(pc.cast(latest.column("event_time"), pa.int64()), end - MS_PER_HOUR)
    )
    scored = scored.slice(0, args.score)
    apart = settings.registry_dir != settings.data_dir / "registry"  # SKEWLESS_REGISTRY_DIR
    latencies, used = _score_over_grpc(out, scored, redis_url, registry_apart=apart)
    report["scoring"] = {
        "requests": len(latencies),
        "p50_ms": round(float(np.percentile(latencies, 50)), 3),
        "p99_ms": round(float(np.percentile(latencies, 99)), 3),
    }

    step("skew_scored", "skew check: features the server used vs the backfill at the same time")
    from flows.backfill import compute_features

    want = compute_features(REFERENCE, scored, accepted)
    report["skew_scored"] = _compare_scored(used, want)
    from skewless.demo_report import write_html

    step.done()
    report["total_seconds"] = round(time.perf_counter() - began, 1)
    (out / "report.json").write_text(json.dumps(report, indent=2))

    write_html(out, report, latencies, trained.version_dir)
    _print(report)
    from skewless.demo_commands import print_commands

    print_commands(out, settings, scored, kafka=bool(kafka), redis=bool(redis_url))
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
    out: Path, scored: pa.Table, redis_url: str = "", registry_apart: bool = False
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
    # as the printed `serve` command: the data root says where registry, store and log are
    cmd = [sys.executable, "-m", "skewless", "--data-dir", str(out), "serve",
           "--address", f"127.0.0.1:{port}", "--redis-url", redis_url]  # fmt: skip
    if registry_apart:
        cmd += ["--registry", str(out / "registry")]
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
