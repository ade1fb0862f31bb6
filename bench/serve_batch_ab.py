"""``ScoreBatch`` of this checkout beside another one (e.g. the main branch), same run.

``python -m bench.serve_batch_ab --before TREE [--rounds R] [--seconds S] [--stages]``

The serve suite's ScoreBatch setup (Redis holding the states of 10,000 cards and 1,000
merchants, the 300-round depth-6 model, 500 events per call, 4 in flight over 16
connections, prediction log on), with our server from this checkout (``new``) and from
``TREE`` (``old``, its own ``PYTHONPATH``), measured in alternating rounds
(:func:`bench.serve_batch.batch_throughput`, one round at a time): events/s and CPU µs per
event of the server, Redis and the client, and the server's by thread (``/proc``: the event
loop, the scoring thread, the prediction log's writer, gRPC's poller). ``--stages`` adds
:func:`bench.serve_batch.stage_table` of each checkout (in process, a subprocess each, in
alternating order). Prints the JSON result and each round's line as it goes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import serve_procs as procs

#: the in-process stage table of whichever checkout is first on PYTHONPATH (argv: JSON)
STAGES = """
import json, sys
from pathlib import Path
from bench.serve_batch import stage_table
c = json.loads(sys.argv[1])
raw = [Path(p).read_bytes() for p in c["raw"]]
out = stage_table(c["redis_url"], Path(c["feast"]), Path(c["version"]), raw,
                  Path(c["predictions"]), calls=c["calls"], seconds=c["seconds"])
print(json.dumps(out))
"""


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds so far of each thread of ``pid`` by name; Python's threads (all named
    ``python``: the prediction log's writer, then the scoring thread, started later) by
    their order of start."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    seen: dict[str, int] = {}
    for tid in sorted(os.listdir(f"/proc/{pid}/task"), key=int):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        if tid == str(pid):
            name = "loop"
        elif name == "python":
            seen[name] = seen.get(name, 0) + 1
            name = f"python-{seen[name]}"
        fields = stat[stat.rindex(")") + 2 :].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def run(before: Path, *, rounds: int = 3, seconds: float = 10.0, stages: bool = False,
        events: int = 100_000, batches: int = 8, seed: int = 7) -> dict[str, Any]:  # fmt: skip
    from bench.serve import _prepare
    from bench.serve_batch import batch_throughput
    from flows.registry import resolve
    from serving._proto.skewless.v1 import scorer_pb2 as pb
    from serving.convert import event_transaction

    batch_size = 500
    here = str(Path(__file__).resolve().parents[1])
    with tempfile.TemporaryDirectory(prefix="skewless-batch-ab-") as tmp:
        work = Path(tmp)
        with procs.redis_server(work / "redis") as redis_url, contextlib.ExitStack() as st:
            sim = {"events": events, "cards": 10_000, "merchants": 1_000, "days": 7.0,
                   "seed": seed}  # fmt: skip
            registry, evs = _prepare(work, redis_url, sim, 300, 6)
            rng = np.random.default_rng(seed)
            end = max(e.event_time_ms for e in evs) + 60_000
            picks = rng.integers(0, len(evs), size=batch_size * batches)
            txs = [
                event_transaction(
                    {"transaction_id": f"bench-{i}", "card_id": evs[j].card_id,
                     "merchant_id": evs[j].merchant_id,
                     "amount": float(rng.gamma(2.0, 30.0)) + 0.01, "currency": "EUR",
                     "country": "FR", "mcc": 5411, "event_time": end + i})
                for i, j in enumerate(picks)
            ]  # fmt: skip
            raw = [
                pb.ScoreBatchRequest(
                    transactions=txs[i * batch_size : (i + 1) * batch_size]
                ).SerializeToString()
                for i in range(batches)
            ]
            trees = {"new": here, "old": str(before)}
            servers = {}
            for name, tree in trees.items():
                cfg = {"registry": str(registry), "redis_url": redis_url,
                       "predictions": str(work / f"predictions-{name}"),
                       "max_batch": batch_size}  # fmt: skip
                argv = [*procs.other_checkout(tree), "-c", procs.OURS, json.dumps(cfg)]
                servers[name] = st.enter_context(procs.server_process(argv, work / f"{name}.log"))
                procs.wait_serving(f"127.0.0.1:{servers[name][1]}")
            per_round: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
            for k in range(rounds):
                for name in ("old", "new") if k % 2 == 0 else ("new", "old"):
                    pid, port = servers[name]
                    before_t = thread_cpu(pid)
                    got = batch_throughput(
                        {name: f"127.0.0.1:{port}"}, raw, batch_size, pids={name: pid},
                        redis_url=redis_url, seconds=seconds, rounds=1,
                    )[name]  # fmt: skip
                    after_t = thread_cpu(pid)
                    n = got["events_per_s"] * seconds  # ~events in the round
                    threads = {
                        t: round((after_t[t] - before_t.get(t, 0.0)) * 1e6 / n, 2)
                        for t in after_t
                        if after_t[t] - before_t.get(t, 0.0) > 0.0
                    }
                    row = {**got, "threads_us_per_event": threads,
                           "load": round(os.getloadavg()[0], 1)}  # fmt: skip
                    per_round[name].append(row)
                    print(name, k, json.dumps(row), file=sys.stderr, flush=True)
            out: dict[str, Any] = {"rounds": per_round}
            for name, rows in per_round.items():
                out[name] = {
                    "events_per_s_median": float(np.median([r["events_per_s"] for r in rows])),
                    "cpu_us_per_event_median": {
                        part: float(np.median([r["cpu_us_per_event"][part] for r in rows]))
                        for part in ("server", "redis", "client")
                    },
                }
            if stages:  # the servers idle meanwhile
                paths = []
                for i, r in enumerate(raw):
                    (work / f"req{i}.bin").write_bytes(r)
                    paths.append(str(work / f"req{i}.bin"))
                tables: dict[str, list[Any]] = {name: [] for name in trees}
                for k in range(rounds):
                    for name in ("old", "new") if k % 2 == 0 else ("new", "old"):
                        c = {"redis_url": redis_url, "feast": str(work / "feast"),
                             "version": str(resolve(registry, "production")), "raw": paths,
                             "predictions": str(work / f"stages-{name}-{k}"), "calls": 60,
                             "seconds": 15.0}  # fmt: skip
                        argv = [*procs.other_checkout(trees[name]), "-c", STAGES, json.dumps(c)]
                        done = subprocess.run(
                            argv, cwd=procs.REPO, capture_output=True, text=True, check=True
                        )
                        table = json.loads(done.stdout)
                        table["load"] = round(os.getloadavg()[0], 1)
                        tables[name].append(table)
                        print(name, "stages", k, json.dumps(table["cpu_us_per_event"]),
                              table["total_cpu_us_per_event"], file=sys.stderr,
                              flush=True)  # fmt: skip
                out["stages"] = tables
            out["at"] = time.strftime("%H:%M UTC", time.gmtime())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", type=Path, required=True, help="the other checkout (old)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10.0, help="per round and server")
    ap.add_argument("--stages", action="store_true", help="the in-process stage tables too")
    a = ap.parse_args()
    print(json.dumps(run(a.before, rounds=a.rounds, seconds=a.seconds, stages=a.stages), indent=1))


if __name__ == "__main__":
    main()
