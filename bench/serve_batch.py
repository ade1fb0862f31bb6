"""``ScoreBatch``: events/s over gRPC beside its same-run baselines, and where the time goes.

Part of the serve suite (:mod:`bench.serve`), against the same Redis and registry.

* :func:`batch_throughput`: events/s with ``depth`` batches in flight for several servers,
  measured in alternating rounds (a change in the machine's load hits all alike): the
  **ScoreBatch floor** (the same ``grpc.aio`` server and interceptors, the request read
  into validated events as ours reads it, with a ``ScoreBatch`` that returns a fixed
  response of the request's length: the transport's own cost), ours with one process and ours with
  ``serve --workers 2``. The client sends pre-serialized requests over ``connections``
  TCP connections (the kernel spreads connections, not calls, over workers) and checks
  one response per server, so that its own CPU, on the same 2 cores, stays small.
* :func:`stage_table`: the same requests in process, timed by stage, µs per event (wall
  clock, and the thread's CPU time, which a loaded machine inflates less):
  request read (bytes -> validated events, the server's own path:
  :meth:`serving.servicer.ScorerServicer.batch_request`), the scorer's stages
  (:data:`serving.score_batch.STAGES`, the production code timed through its ``mark``
  hook, Redis read and prediction log included) and the response encode (the bytes the
  server sends).
* :func:`predictor_rows_per_s`: the serving predictor's rows/s on one core at the batch
  size, beside its bit-equality checks (one row vs the batch; vs XGBoost).
"""

from __future__ import annotations

import gc
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

_METHOD = "/skewless.v1.Scorer/ScoreBatch"


class FloorScoreBatch:
    """The floor servicer's ``ScoreBatch``: the request read as our server reads it (bytes
    in: the native reader into validated events, or the strict parser and the Python
    conversion for what it leaves), a fixed serialized response of its length returned
    (bytes out), nothing else. Registered as ours is (:func:`serving.servicer.add_to_server`)."""

    _fixed: ClassVar[dict[int, bytes]] = {}
    _read: ClassVar[Any] = None

    async def score_batch_bytes(self, data: bytes, context: Any) -> bytes:
        from serving._proto.skewless.v1 import scorer_pb2 as pb

        if self._read is None:
            from features.reference import REFERENCE
            from serving.scorer import Scorer
            from serving.servicer import ScorerServicer

            type(self)._read = ScorerServicer(Scorer(REFERENCE), 1 << 20).batch_request
        n = len(self._read(data)[0])
        if n not in self._fixed:
            one = pb.ScoreResponse(
                transaction_id="floor-0000", score=0.5, threshold=0.5, model_version="v0001"
            )
            self._fixed[n] = pb.ScoreBatchResponse(responses=[one] * n).SerializeToString()
        return self._fixed[n]


def best(measured: dict[str, Any]) -> int:
    """The best ScoreBatch events/s of ours (1 or 2 processes) in :func:`measure`'s result."""
    grpc = measured["grpc"]
    return max(grpc[k]["events_per_s"] for k in grpc if k.startswith("workers_"))


def batch_throughput(
    targets: dict[str, str],
    raw: Sequence[bytes],
    batch_size: int,
    *,
    pids: dict[str, int] | None = None,
    redis_url: str | None = None,
    seconds: float = 20.0,
    depth: int = 4,
    connections: int = 16,
    rounds: int = 3,
) -> dict[str, Any]:
    """Per target: ``events_per_s`` over all its rounds (``depth`` batches in flight,
    closed loop) and per round; ``ratio_vs_floor``. With ``pids`` (a server's process;
    its children count too) and ``redis_url``, also the CPU time per event of the server,
    of Redis and of this client: on a machine shared with other work, wall-clock rates
    move with the load, CPU per event much less, and it says what the 2 cores can carry."""
    import asyncio

    from grpc import aio

    from serving._proto.skewless.v1 import scorer_pb2 as pb

    def cpu(name: str) -> np.ndarray:
        """CPU seconds so far: the server ``name`` (its children too), Redis, this client."""
        server = redis = 0.0
        if pids and name in pids:
            import psutil

            proc = psutil.Process(pids[name])
            for p in (proc, *proc.children(recursive=True)):
                t = p.cpu_times()
                server += t.user + t.system
        if redis_url is not None:
            import redis as redis_py

            info: Any = redis_py.Redis.from_url(redis_url).info("cpu")
            redis = info["used_cpu_user"] + info["used_cpu_sys"]
        return np.array([server, redis, time.process_time()])

    async def main() -> dict[str, Any]:
        opts = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", -1)]
        calls = {}
        channels = []
        for name, address in targets.items():
            chs = [aio.insecure_channel(address, options=opts) for _ in range(connections)]
            channels += chs
            calls[name] = [ch.unary_unary(_METHOD) for ch in chs]  # bytes in, bytes out
        try:
            for name, stubs in calls.items():  # warm-up: every connection; one answer checked
                for k, call in enumerate(stubs):
                    out = await call(raw[k % len(raw)], timeout=60)
                got = len(pb.ScoreBatchResponse.FromString(out).responses)
                if got != batch_size:
                    raise RuntimeError(f"{name}: {got} responses to a batch of {batch_size}")
            per_round: dict[str, list[float]] = defaultdict(list)
            totals = {name: np.zeros(5) for name in targets}  # events, s, server/redis/client cpu
            budget = seconds / (rounds * len(targets))
            for _ in range(rounds):
                for name, stubs in calls.items():
                    before = cpu(name)
                    done, elapsed = await _closed_loop(stubs, raw, depth, budget)
                    used = cpu(name) - before
                    per_round[name].append(round(done * batch_size / elapsed))
                    totals[name] += (done * batch_size, elapsed, *used)
            out = {}
            for name, (ev, el, server, redis, client) in totals.items():
                out[name] = {"events_per_s": round(ev / el), "rounds": per_round[name]}
                if pids and name in pids:
                    out[name]["cpu_us_per_event"] = {
                        "server": round(server * 1e6 / ev, 2),
                        "redis": round(redis * 1e6 / ev, 2),
                        "client": round(client * 1e6 / ev, 2),
                    }
            return out
        finally:
            for ch in channels:
                await ch.close()

    out: dict[str, Any] = asyncio.run(main())
    if "floor" in out:
        floor = out["floor"]["events_per_s"]
        out["ratio_vs_floor"] = {
            name: round(v["events_per_s"] / floor, 3) for name, v in out.items() if name != "floor"
        }
    out["setup"] = {"batch_size": batch_size, "in_flight": depth, "connections": connections,
                    "rounds": rounds, "client": "asyncio, pre-serialized requests"}  # fmt: skip
    return out


async def _closed_loop(
    stubs: list[Any], raw: Sequence[bytes], depth: int, seconds: float
) -> tuple[int, float]:
    """(calls completed, seconds): ``depth`` loops, call ``i`` on connection ``i % len``."""
    import asyncio

    done = 0
    end = time.monotonic() + seconds

    async def loop(k: int) -> None:
        nonlocal done
        i = k
        while time.monotonic() < end:
            await stubs[i % len(stubs)](raw[i % len(raw)], timeout=60)
            done += 1
            i += depth

    start = time.perf_counter()
    await asyncio.gather(*(loop(k) for k in range(depth)))
    return done, time.perf_counter() - start


def stage_table(
    redis_url: str,
    feast_dir: Path,
    version_dir: Path,
    raw: Sequence[bytes],
    predictions_dir: Path,
    *,
    calls: int = 60,
    seconds: float = 15.0,
) -> dict[str, Any]:
    """µs per event by stage (median over calls), the scorer as the server runs it."""
    from features.reference import REFERENCE
    from features.store import StoreConfig, open_store
    from serving.convert import batch_response_bytes
    from serving.model import load_model
    from serving.predlog import ParquetPredictionLog
    from serving.score_batch import STAGES
    from serving.scorer import Scorer
    from serving.server import GC_YOUNG
    from serving.servicer import ScorerServicer

    store = open_store(StoreConfig(redis_url, feast_dir), REFERENCE)
    scorer = Scorer(REFERENCE, store)
    scorer.install(load_model(version_dir, REFERENCE.fingerprint()))
    log = ParquetPredictionLog(predictions_dir, scorer.plan).start()
    scorer.sink = log
    read = ScorerServicer(scorer, 1 << 30).batch_request  # the server's own request path
    threshold = gc.get_threshold()
    gc.collect()
    gc.freeze()  # the garbage collector as the server sets it once ready
    if GC_YOUNG is not None:
        gc.set_threshold(GC_YOUNG, *threshold[1:])
    times: dict[str, list[float]] = defaultdict(list)
    cpu: dict[str, list[float]] = defaultdict(list)
    last = last_cpu = 0.0

    def mark(stage: str) -> None:
        nonlocal last, last_cpu
        now, now_cpu = time.perf_counter(), time.thread_time()
        times[stage].append(now - last)
        cpu[stage].append(now_cpu - last_cpu)
        last, last_cpu = now, now_cpu

    n = 0
    try:
        end = time.monotonic() + seconds
        for i in range(calls + 2):
            data = raw[i % len(raw)]
            last, last_cpu = time.perf_counter(), time.thread_time()
            events, include_features, _ = read(data)
            mark("request_read")
            results = scorer.score_columns(events, None, mark, infos=include_features)
            batch_response_bytes(results, include_features)
            mark("response_encode")
            n = len(events)
            if i < 2:  # warm-up calls are not counted
                times.clear()
                cpu.clear()
            elif time.monotonic() > end:
                break
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()
        log.close()
        store.close()
    order = ("request_read", *STAGES, "response_encode")
    wall = {s: round(float(np.median(times[s])) * 1e6 / n, 3) for s in order}
    on_cpu = {s: round(float(np.median(cpu[s])) * 1e6 / n, 3) for s in order}
    return {
        "us_per_event": wall,
        "cpu_us_per_event": on_cpu,
        "total_us_per_event": round(sum(wall.values()), 3),
        "total_cpu_us_per_event": round(sum(on_cpu.values()), 3),
        "in_process_events_per_s_one_thread": round(1e6 / sum(wall.values())),
        "calls": len(times["request_read"]),
        "batch_size": n,
    }


def predictor_rows_per_s(version_dir: Path, batch_size: int, calls: int = 40) -> dict[str, Any]:
    """The serving predictor (``predictor``: native, or ONNX Runtime for a model the native
    one refuses) on ``batch_size`` rows: rows/s on one core; whether each row scored alone
    gives the batch's bits and whether they are XGBoost's; and how many rows a two-thread
    ONNX session scores differently from one thread (why the ONNX fallback runs one)."""
    from features.reference import REFERENCE
    from flows.artifacts import ONNX_FILE, onnx_probability
    from serving.model import load_model
    from serving.testing import synthetic_training_data

    model = load_model(version_dir, REFERENCE.fingerprint())
    X, _ = synthetic_training_data(model.feature_names, rows=batch_size, seed=3)
    model.predict(X)
    t, cpu = [], []
    for _ in range(calls):
        t0, c0 = time.perf_counter(), time.thread_time()
        batch = model.predict(X)
        t.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
    ms, cpu_ms = float(np.median(t)) * 1e3, float(np.median(cpu)) * 1e3
    alone = np.array([model.predict(X[k : k + 1])[0] for k in range(batch_size)])
    # the same model with two intra-op threads: ONNX Runtime then splits a row's trees
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    two = ort.InferenceSession(
        str(model.path / ONNX_FILE), opts, providers=["CPUExecutionProvider"]
    )
    differ = int(np.sum(onnx_probability(two, X) != onnx_probability(model.session, X)))
    xgb = np.asarray(model.booster.inplace_predict(X), dtype=np.float32)
    return {
        "predictor": model.predictor,
        "rows": batch_size,
        "p50_ms": round(ms, 3),
        "us_per_row": round(ms * 1e3 / batch_size, 3),
        "cpu_us_per_row": round(cpu_ms * 1e3 / batch_size, 3),
        "rows_per_s_one_core": round(batch_size / cpu_ms * 1e3),
        "one_row_equals_batch": bool(np.array_equal(alone, batch)),
        "bits_equal_to_xgboost": bool(
            np.array_equal(batch.astype(np.float32).view(np.uint32), xgb.view(np.uint32))
        ),
        "rows_differing_with_two_threads": differ,
    }


def measure(
    targets: dict[str, str], raw: Sequence[bytes], batch_size: int, *, pids: dict[str, int],
    redis_url: str, feast_dir: Path, version_dir: Path, predictions_dir: Path,
    seconds: float = 20.0,
) -> dict[str, Any]:  # fmt: skip
    """Everything above, for servers already running at ``targets`` (``floor`` among them)."""
    grpc = batch_throughput(
        targets, raw, batch_size, pids=pids, redis_url=redis_url, seconds=seconds
    )
    stages = stage_table(redis_url, feast_dir, version_dir, raw, predictions_dir)
    predictor = predictor_rows_per_s(version_dir, batch_size)
    return {"grpc": grpc, "stages": stages, "predictor": predictor}
