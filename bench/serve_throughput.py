"""``Score`` throughput of several servers, compared in the same run (``bench.serve``).

A closed loop of ``inflight`` calls from an asyncio client over ``connections`` TCP
connections: with ``serve --workers``, the kernel spreads connections (not calls) over
the worker processes, so one connection would measure one worker. The targets are
measured in alternating rounds, so a change in the machine's load hits all of them alike.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def percentiles(lat: list[float]) -> dict[str, float]:
    a = np.asarray(lat) * 1000
    return {
        "p50_ms": round(float(np.percentile(a, 50)), 4),
        "p99_ms": round(float(np.percentile(a, 99)), 4),
        "mean_ms": round(float(a.mean()), 4),
        "requests": len(lat),
    }


def cpu_s(pids: Sequence[int]) -> float:
    """User + system CPU seconds of processes ``pids`` and their children (``--workers``)."""
    import psutil

    total = 0.0
    for pid in pids:
        proc = psutil.Process(pid)
        for p in (proc, *proc.children(recursive=True)):
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
    return total


def _throughput(
    address: str, reqs: list[Any], n: int, seconds: float, inflight: int, connections: int,
    pids: Sequence[int] = (),
) -> dict[str, float]:  # fmt: skip
    """``Score`` with ``inflight`` calls in flight (closed loop) over ``connections`` TCP
    connections, from an asyncio client (a sync client's futures cost more per call than
    the floor server does)."""
    import asyncio

    from grpc import aio

    from serving._proto.skewless.v1 import scorer_pb2_grpc as pb_grpc

    async def main() -> dict[str, float]:
        opts = [("grpc.use_local_subchannel_pool", 1)]  # one TCP connection per channel
        channels = [aio.insecure_channel(address, options=opts) for _ in range(connections)]
        stubs = [pb_grpc.ScorerStub(ch) for ch in channels]
        try:
            for stub in stubs:  # warm-up: connect every channel
                for r in reqs[:20]:
                    await stub.Score(r, timeout=30)
            lat: list[float] = []
            end = time.monotonic() + seconds

            async def loop(k: int) -> None:
                stub, i = stubs[k % connections], k
                while len(lat) < n and time.monotonic() < end:
                    t = time.perf_counter()
                    await stub.Score(reqs[i % len(reqs)], timeout=30)
                    lat.append(time.perf_counter() - t)
                    i += inflight

            server0, client0 = cpu_s(pids), time.process_time()
            start = time.perf_counter()
            await asyncio.gather(*(loop(k) for k in range(inflight)))
            elapsed = time.perf_counter() - start
            server_s, client_s = cpu_s(pids) - server0, time.process_time() - client0
        finally:
            for ch in channels:
                await ch.close()
        cpu = {"client_cpu_us_per_call": round(client_s / len(lat) * 1e6, 1)}
        if pids:
            cpu["server_cpu_us_per_call"] = round(server_s / len(lat) * 1e6, 1)
        return {"requests_per_s": round(len(lat) / elapsed, 1), **percentiles(lat), **cpu}

    return asyncio.run(main())


def compare_throughput(
    targets: dict[str, str], reqs: list[Any], n: int, seconds: float, inflight: int,
    connections: int, rounds: int = 5, pids: Mapping[str, Sequence[int]] | None = None,
    ghz: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Each target's median round, and its ratio to the floor: the median over rounds of
    the rate divided by the floor's rate in the same round (a round measures every target
    back to back, so a slow drift of the machine's load cancels out). ``targets``: name ->
    address, the floor named ``grpc_floor``; ``pids``: name -> server process, whose CPU
    (children included) per call is reported beside the client's own, median over rounds:
    on a shared machine those say where a rate is lost when the rates alone are noisy.
    ``ghz``: the ghz binary to load with instead of the Python asyncio client."""
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
    pids = pids or {}
    for _ in range(rounds):
        for name, address in targets.items():
            if ghz is not None:
                sample = ghz_throughput(address, reqs, n // rounds, inflight, connections,
                                        pids.get(name, ()), ghz, seconds / rounds)  # fmt: skip
            else:
                sample = _throughput(address, reqs, n // rounds, seconds / rounds, inflight,
                                     connections, pids.get(name, ()))  # fmt: skip
            runs[name].append(sample)
    out: dict[str, Any] = {"in_flight": inflight, "connections": connections, "rounds": rounds}
    for name, samples in runs.items():
        rates = sorted(r["requests_per_s"] for r in samples)
        median = next(r for r in samples if r["requests_per_s"] == rates[len(rates) // 2])
        out[name] = {**median, "rounds_requests_per_s": [r["requests_per_s"] for r in samples]}
        for key in ("server_cpu_us_per_call", "client_cpu_us_per_call"):
            if key in median:
                out[name][key] = float(np.median([r[key] for r in samples]))
    floor = [r["requests_per_s"] for r in runs["grpc_floor"]]
    out["ratio_vs_floor"] = {}
    for name in targets:
        if name != "grpc_floor":
            ratios = sorted(r["requests_per_s"] / f for r, f in zip(runs[name], floor, strict=True))
            out["ratio_vs_floor"][name] = round(ratios[len(ratios) // 2], 3)
    return out


def compare_lone(
    targets: dict[str, str], reqs: list[Any], n: int, seconds: float, rounds: int = 5,
    pids: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """``Score`` one call in flight (a sync client, as a lone caller), every target in
    each of ``rounds`` rounds back to back: per target the median round's p50 and server
    CPU per call, and its time above the floor (``grpc_floor``) as the median over rounds
    of p50 minus the floor's p50 in the same round (a load change hits both alike)."""
    import grpc

    from serving._proto.skewless.v1 import scorer_pb2_grpc as pb_grpc

    pids = pids or {}
    channels = {name: grpc.insecure_channel(a) for name, a in targets.items()}
    try:
        stubs = {name: pb_grpc.ScorerStub(ch) for name, ch in channels.items()}
        for stub in stubs.values():  # warm-up: connections, caches, allocator
            for r in reqs[:200]:
                stub.Score(r, timeout=10)
        p50s: dict[str, list[float]] = {name: [] for name in targets}
        cpus: dict[str, list[float]] = {name: [] for name in targets}
        per_round = max(1, n // rounds)
        for _ in range(rounds):
            for name, stub in stubs.items():
                lat: list[float] = []
                end = time.monotonic() + seconds / rounds / len(targets)
                cpu0 = cpu_s(pids.get(name, ()))
                for i in range(per_round):
                    t = time.perf_counter()
                    stub.Score(reqs[i % len(reqs)], timeout=10)
                    lat.append(time.perf_counter() - t)
                    if time.monotonic() > end:
                        break
                cpus[name].append((cpu_s(pids.get(name, ())) - cpu0) / len(lat) * 1e6)
                p50s[name].append(float(np.median(lat)) * 1000)
    finally:
        for ch in channels.values():
            ch.close()
    floor = np.asarray(p50s["grpc_floor"])
    out: dict[str, Any] = {"rounds": rounds}
    for name in targets:
        out[name] = {
            "p50_ms": round(float(np.median(p50s[name])), 4),
            "rounds_p50_ms": [round(x, 4) for x in p50s[name]],
            "above_floor_ms": round(float(np.median(np.asarray(p50s[name]) - floor)), 4),
        }
        if name in pids:
            out[name]["server_cpu_us_per_call"] = round(float(np.median(cpus[name])), 1)
    return out


def ghz_throughput(
    address: str, reqs: list[Any], n: int, inflight: int, connections: int,
    pids: Sequence[int] = (), ghz: str = "ghz", seconds: float = 0.0,
) -> dict[str, float]:  # fmt: skip
    """``Score`` at ``inflight`` in flight from ghz (the Go load tool: a leaner client than
    Python's, so more of the 2 cores is left to the servers); ghz's own CPU per call is
    reported beside the server's (``RUSAGE_CHILDREN``)."""
    import json
    import resource
    import subprocess

    from google.protobuf.json_format import MessageToDict

    repo = Path(__file__).resolve().parents[1]
    data = json.dumps([MessageToDict(r, preserving_proto_field_name=True) for r in reqs[:500]])
    cmd = [ghz, "--insecure", "--proto", "protos/skewless/v1/scorer.proto", "--import-paths",
           "protos", "--call", "skewless.v1.Scorer.Score", "-n", str(n), "-c", str(inflight),
           "--connections", str(connections), "--timeout", "30s", "-d", data, "--format",
           "json", address]  # fmt: skip
    if seconds:  # with a duration ghz ignores the count: the time bounds the run
        cmd[-1:-1] = ["-z", f"{seconds:g}s"]
    before, server0 = resource.getrusage(resource.RUSAGE_CHILDREN), cpu_s(pids)
    run = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=600, check=False)
    after, server_s = resource.getrusage(resource.RUSAGE_CHILDREN), cpu_s(pids) - server0
    if run.returncode != 0:
        raise RuntimeError(f"ghz exited {run.returncode}: {(run.stderr or run.stdout)[-500:]}")
    report = json.loads(run.stdout)
    ok = report.get("statusCodeDistribution", {}).get("OK", 0)
    client_s = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    out = {"requests_per_s": round(float(report["rps"]), 1), "requests": ok,
           "client_cpu_us_per_call": round(client_s / max(ok, 1) * 1e6, 1)}  # fmt: skip
    if pids:
        out["server_cpu_us_per_call"] = round(server_s / max(ok, 1) * 1e6, 1)
    return out
