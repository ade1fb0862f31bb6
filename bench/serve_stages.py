"""Where a ``Score`` spends its time: µs per stage, in process, on the real Redis.

Each stage of the server's ``Score`` path is timed alone (median over the requests), with
the same objects the server builds: the strict request parser (the floor's; ours reads a
typed request's bytes natively, timed as its own stage), the error interceptor's wrapper,
request -> event, the store read (blocking, and awaited on
an event loop as the coalescing servicer does), finalize, request features, predict, the
result plus its prediction-log entry, and the response. Two regimes:

* ``warm``: calls back to back (a loaded server: caches hot);
* ``lone``: an idle gap before each call, as between a lone client's calls. On this
  machine a stage then costs 2-4x its warm time (cold caches, a core woken from idle),
  which is why the sum of warm stages under-predicts a lone call's time above the floor.

``score_*`` is the scorer's whole single-event path (read + compute, log off) for
comparison with the sum of its stages; ``handler`` is the server's whole ``Score`` handler
on the direct path (bytes in, bytes out: :meth:`serving.coalesce.CoalescingServicer.score_bytes`,
the awaited read included, the prediction log after it), timed in its running loop.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

#: idle time before each call in the ``lone`` regime (a lone client's gap, about)
LONE_GAP_S = 0.0004


def _timed(fn: Callable[[Any], Any], args: Iterable[Any], gap_s: float) -> float:
    """Median µs of ``fn(arg)`` over ``args``, sleeping ``gap_s`` before each call."""
    out = []
    for a in args:
        if gap_s:
            time.sleep(gap_s)
        t = time.perf_counter_ns()
        fn(a)
        out.append(time.perf_counter_ns() - t)
    return round(statistics.median(out) / 1000, 2)


async def _awaited(call: Callable[[Any], Any], args: list[Any], gap_s: float) -> float:
    """Median µs of ``await call(arg)`` inside one running loop (as the server awaits it),
    each followed by a loop turn (what ``call_soon`` left runs there, untimed)."""
    out = []
    for a in args:
        if gap_s:
            time.sleep(gap_s)
        t = time.perf_counter_ns()
        await call(a)
        out.append(time.perf_counter_ns() - t)
        await asyncio.sleep(0)
    return round(statistics.median(out) / 1000, 2)


def run(registry: Path, redis_url: str, requests: list[Any], n: int = 1500) -> dict[str, Any]:
    """Per-stage µs (``warm`` and ``lone``) of ``Score`` for ``requests`` (ScoreRequests)."""
    import numpy as np

    from features.reference import REFERENCE
    from features.store import StoreConfig, open_store
    from features.store.redis_async import async_reader
    from flows.registry import resolve
    from serving._proto.skewless.v1 import scorer_pb2 as pb
    from serving.coalesce import CoalescingServicer, response_bytes
    from serving.convert import EventConverter, score_response
    from serving.interceptors import ErrorInterceptor
    from serving.model import load_model
    from serving.predlog import ParquetPredictionLog
    from serving.request_native import BatchRequestReader
    from serving.scorer import Scorer, _max_seen
    from serving.wire import strict_parser

    scorer = Scorer(REFERENCE)
    store = open_store(StoreConfig(redis_url, Path(tempfile.mkdtemp()), 0.5), REFERENCE)
    scorer.store = store
    scorer.install(load_model(resolve(registry, "production"), REFERENCE.fingerprint()))
    tmp = tempfile.TemporaryDirectory(prefix="skewless-stages-")
    plog = ParquetPredictionLog(Path(tmp.name), scorer.plan).start()
    loop = asyncio.new_event_loop()
    try:
        reqs = requests[:n]
        raw = [r.SerializeToString() for r in reqs]
        parse: Any = strict_parser(pb.ScoreRequest.FromString)
        conv = EventConverter(scorer.plan)
        native = BatchRequestReader.of(scorer.plan)
        assert native is not None
        events = [conv.request_event(r) for r in reqs]
        readers = scorer._readers
        keys = [[(r.name, r.key(e)) for r in readers] for e in events]
        raws = [store.read_states(k) for k in keys]
        ts = [scorer._event_time(e) for e in events]
        idx = list(range(len(reqs)))
        windows = [
            [r.values(raws[i][j], keys[i][j][1], ts[i]) for j, r in enumerate(readers)] for i in idx
        ]
        plan = scorer._plan
        assert plan is not None
        X = plan.row()
        X[0] = np.random.default_rng(0).random(plan.n)
        results = [scorer.score(e, log=False) for e in events]
        reader = async_reader(store)
        servicer = CoalescingServicer(scorer, 500)

        async def echo(request: Any, context: Any) -> Any:
            return request

        wrapped = ErrorInterceptor().wrap(echo, "/skewless.v1.Scorer/Score", False)

        rows = plan.finalizer

        def finalize(i: int) -> None:
            for j, r in enumerate(readers):
                entity_id, data = keys[i][j][1], raws[i][j]
                r.values(data, entity_id, ts[i])
                r.info(data, entity_id, _max_seen(data), ts[i], [])

        def drive(coro: Any) -> None:  # one step: these coroutines never suspend
            try:
                coro.send(None)
            except StopIteration:
                return

        stages: dict[str, Callable[[int], Any]] = {
            "deserialize (strict parser)": lambda i: parse(raw[i]),
            "error interceptor (wrapper)": lambda i: drive(wrapped(reqs[i], None)),
            "proto -> event": lambda i: conv.request_event(reqs[i]),
            "bytes -> event (native reader, the server's)": lambda i: native.parse_one(raw[i]),
            "redis read, blocking (2 HGET)": lambda i: store.read_states(keys[i]),
            "finalize (2 entities, + info)": lambda i: finalize(i),
            "finalize into the row (one native call, the direct path's)": lambda i: rows.fill(
                raws[i], ts[i]
            ),
            "request features": lambda i: scorer.plan.request_one(events[i], windows[i]),
            "predict (native, 1 row)": lambda i: plan.model.predict(X),
            "prediction-log append": lambda i: plog((events[i],), (results[i],)),
            "response (build + serialize)": lambda i: score_response(
                results[i], False
            ).SerializeToString(),
            "response (native encoder, the direct path's)": lambda i: response_bytes(
                results[i], False
            ),
            "score_one (read + compute, log off)": lambda i: scorer.score(events[i], log=False),
            "score_read (compute only, states given)": lambda i: scorer.score_read(
                events[i], keys[i], raws[i]
            ),
        }
        out: dict[str, Any] = {"requests": len(idx), "lone_gap_ms": LONE_GAP_S * 1000}
        for regime, gap in (("warm", 0.0), ("lone", LONE_GAP_S)):
            out[regime] = {name: _timed(fn, idx, gap) for name, fn in stages.items()}
            if reader is not None:
                lat = loop.run_until_complete(_awaited(reader.read_states, keys, gap))
                out[regime]["redis read, awaited on the loop"] = lat
                scorer.sink = plog
                try:  # the prediction log on, as served
                    lat = loop.run_until_complete(
                        _awaited(lambda b: servicer.score_bytes(b, None), raw, gap)
                    )
                finally:
                    scorer.sink = None
                out[regime]["handler (score_bytes, direct path, whole)"] = lat
        return out
    finally:
        plog.close()
        tmp.cleanup()
        store.close()
        loop.close()
