"""``Score`` one call in flight against the gRPC floor, alone (the serve suite's ``lone``
block without the rest of the suite: ~1 minute instead of ~5).

``python -m bench.serve_lone [--requests N] [--rounds R] [--naive] [--before TREE]``

The same setup as ``bench.serve`` (Redis holding simulated states, a synthetic model, each
server its own process, this process the sync client): ours, the floor and the floor plus
the direct path's Redis read (nothing else: what the hop alone adds) measured in
alternating rounds (:func:`bench.serve_throughput.compare_lone`), with server CPU per call.
``--before TREE`` adds our server run from another checkout (e.g. the main branch), so a
change is measured beside the code it replaces in the same run; ``--naive`` adds the naive
servicer's time above the floor (the 1/6 target); ``--stages`` adds
:mod:`bench.serve_stages` (µs per stage, warm and lone) on the same Redis. Prints the JSON
result.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bench import serve_procs as procs
from bench import serve_stages
from bench.serve_throughput import compare_lone

#: the floor plus the direct path's Redis read and nothing else: what the hop alone costs
#: (argv[1]: the Redis URL)
FLOOR_READ = """
import asyncio, sys
from grpc import aio
from features.reference import REFERENCE
from features.store import StoreConfig, open_store
from features.store.redis_async import async_reader
from serving._proto.skewless.v1 import scorer_pb2 as pb, scorer_pb2_grpc as pb_grpc
from serving.interceptors import interceptors

class FloorRead(pb_grpc.ScorerServicer):
    def __init__(self, reader):
        self.reader = reader
    async def Score(self, request, context):
        tx = request.transaction
        await self.reader.read_states([("card", tx.card_id), ("merchant", tx.merchant_id)])
        return pb.ScoreResponse(transaction_id=tx.transaction_id)

async def main():
    reader = async_reader(open_store(StoreConfig(redis_url=sys.argv[1]), REFERENCE))
    server = aio.server(interceptors=interceptors("", None))
    pb_grpc.add_ScorerServicer_to_server(FloorRead(reader), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"listening on port {port}", flush=True)
    await server.wait_for_termination()

asyncio.run(main())
"""


def run(
    *,
    requests: int = 3_000,
    rounds: int = 7,
    seconds: float = 60.0,
    naive: bool = False,
    before: Path | None = None,
    stages: bool = False,
    events: int = 100_000,
    seed: int = 7,
) -> dict[str, Any]:
    """The lone block: per target p50, time above the floor and server CPU per call."""
    from bench.serve import _prepare
    from flows.registry import resolve
    from serving._proto.skewless.v1 import scorer_pb2 as pb
    from serving.convert import event_transaction

    with tempfile.TemporaryDirectory(prefix="skewless-lone-") as tmp:
        work = Path(tmp)
        with procs.redis_server(work / "redis") as redis_url, contextlib.ExitStack() as st:
            sim = {"events": events, "cards": 10_000, "merchants": 1_000, "days": 7.0,
                   "seed": seed}  # fmt: skip
            registry, evs = _prepare(work, redis_url, sim, 300, 6)
            rng = np.random.default_rng(seed)
            end = max(e.event_time_ms for e in evs) + 60_000
            picks = rng.integers(0, len(evs), size=requests)
            reqs = [
                pb.ScoreRequest(transaction=event_transaction(
                    {"transaction_id": f"bench-{i}", "card_id": evs[j].card_id,
                     "merchant_id": evs[j].merchant_id,
                     "amount": float(rng.gamma(2.0, 30.0)) + 0.01, "currency": "EUR",
                     "country": "FR", "mcc": 5411, "event_time": end + i}))
                for i, j in enumerate(picks)
            ]  # fmt: skip
            cfg = {"registry": str(registry), "redis_url": redis_url,
                   "predictions": str(work / "predictions"), "max_batch": 500}  # fmt: skip
            floor = [sys.executable, "-c", procs.FLOOR]
            fpid, fport = st.enter_context(procs.server_process(floor, work / "floor.log"))
            servers = {"grpc_floor": (fpid, fport)}
            read = [sys.executable, "-c", FLOOR_READ, redis_url]
            servers["floor_plus_redis_read"] = st.enter_context(
                procs.server_process(read, work / "floor-read.log")
            )
            ours = [sys.executable, "-c", procs.OURS, json.dumps(cfg)]
            servers["ours"] = st.enter_context(procs.server_process(ours, work / "ours.log"))
            if before is not None:  # the same server from another checkout
                bcfg = {**cfg, "predictions": str(work / "predictions-before")}
                argv = [*procs.other_checkout(before), "-c", procs.OURS, json.dumps(bcfg)]
                servers["before"] = st.enter_context(
                    procs.server_process(argv, work / "before.log")
                )
            for name in servers.keys() - {"grpc_floor", "floor_plus_redis_read"}:  # no health
                procs.wait_serving(f"127.0.0.1:{servers[name][1]}")
            targets = {name: f"127.0.0.1:{port}" for name, (_, port) in servers.items()}
            pids = {name: [pid] for name, (pid, _) in servers.items()}
            out: dict[str, Any] = compare_lone(
                targets, reqs, requests, seconds, rounds=rounds, pids=pids
            )
            if naive:
                ncfg = {"redis_url": redis_url, "feast_dir": str(work / "feast"),
                        "version_dir": str(resolve(registry, "production"))}  # fmt: skip
                argv = [sys.executable, "-m", "bench.serve_naive", json.dumps(ncfg)]
                _, nport = st.enter_context(procs.server_process(argv, work / "naive.log"))
                lone = compare_lone(
                    {"grpc_floor": targets["grpc_floor"], "naive": f"127.0.0.1:{nport}"},
                    reqs, min(requests, 1_000), seconds, rounds=3,
                )  # fmt: skip
                above, ours = lone["naive"]["above_floor_ms"], out["ours"]["above_floor_ms"]
                out["naive"] = lone["naive"]
                out["ratio_naive_vs_ours"] = round(above / max(ours, 1e-6), 2)
            if stages:  # the servers idle meanwhile
                out["score_stages"] = serve_stages.run(registry, redis_url, reqs)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=3_000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--naive", action="store_true")
    ap.add_argument("--before", type=Path, default=None)
    ap.add_argument("--stages", action="store_true")
    args = ap.parse_args()
    result = run(requests=args.requests, rounds=args.rounds, naive=args.naive,
                 before=args.before, stages=args.stages)  # fmt: skip
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
