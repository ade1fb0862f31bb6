"""Benchmark of the backfill on Dask distributed (:mod:`flows.backfill_dask`).

:func:`run` (part of ``skewless bench backfill``): on ``events`` simulated transactions,
the single-process job, then the Dask job on a ``LocalCluster`` of 1 and of 2 worker
processes, in the same run: seconds, events/s, the ratio 2 workers / 1 worker against
the 1.6x target (the median of ``rounds`` alternating rounds), each against the single
process, and whether the files are identical.
Cluster start is timed apart (a long-running cluster pays it once). The machine's load
average is recorded beside the wall times, and before each round the ratio a plain numpy
load gets from a second process (:func:`machine_ceiling`, the baseline: on a shared
machine this moves as much as the workers' ratio), and the same ratio projected from CPU seconds
(what idle cores would give) is reported apart, labelled as such.

:func:`run_scale` (``python -m bench.backfill_dask --scale 20000000``): events generated
in chunks of a million straight to Parquet, never all in memory, then the Dask job:
events/s per worker and the peak anonymous memory of the driver and of each worker
(sampled every 0.1 s) beside the partition size.
"""

from __future__ import annotations

import importlib
import os
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

TARGET_SPEEDUP = 1.6


def _anon_mb() -> float:
    """This process's resident anonymous memory (memory-mapped files not counted)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return 0.0


_PEAK: dict[str, Any] = {}


def start_peak() -> None:
    """Sample this process's anonymous memory every 0.1 s until :func:`stop_peak`."""
    stop = threading.Event()
    _PEAK.update(peak=_anon_mb(), stop=stop)

    def sample() -> None:
        while not stop.wait(0.1):
            _PEAK["peak"] = max(_PEAK["peak"], _anon_mb())

    threading.Thread(target=sample, daemon=True).start()


def stop_peak() -> float:
    _PEAK["stop"].set()
    return round(max(_PEAK["peak"], _anon_mb()), 1)


def _files(out: Path) -> list[str]:
    feast = sorted(f"feast/{p.name}" for p in (out / "feast").iterdir())
    return ["features.parquet", "rejects.parquet", "late.parquet", *feast]


def _ipc(table: pa.Table) -> bytes:
    """The table's values, schema and metadata as bytes (``Table.equals`` calls NaN unequal)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table.combine_chunks())
    return bytes(sink.getvalue())


def _compare(a: Path, b: Path) -> dict[str, str]:
    """Per output file: 'bytes' (identical files), 'arrow' (equal tables and schemas with
    their metadata, different Parquet bytes) or 'DIFFERENT'."""
    out = {}
    for name in _files(a):
        if (a / name).read_bytes() == (b / name).read_bytes():
            out[name] = "bytes"
            continue
        same = _ipc(pq.read_table(a / name)) == _ipc(pq.read_table(b / name))
        out[name] = "arrow" if same else "DIFFERENT"
    return out


def _timed_dask(workers: int, events: Path, out: Path, partitions: int | None) -> dict[str, Any]:
    from features.reference import REFERENCE as FS
    from flows.backfill_dask import backfill_on, dask_client

    start = time.perf_counter()
    with dask_client(workers, None) as client:
        up = time.perf_counter() - start
        # by module name: under ``python -m`` these functions belong to ``__main__``
        probe = importlib.import_module("bench.backfill_dask")
        client.run(probe.start_peak)
        start_peak()
        start = time.perf_counter()
        report = backfill_on(client, FS, events, out, partitions=partitions, worker_cpu=True)
        seconds = time.perf_counter() - start
        driver = stop_peak()
        peaks = client.run(probe.stop_peak)
    return {
        "workers": workers,
        "cluster_start_seconds": round(up, 2),
        "seconds": round(seconds, 3),
        "events_per_s": round(report.events / seconds),
        "events_per_s_per_worker": round(report.events / seconds / workers),
        "stage_seconds": {k: v for k, v in report.seconds.items() if not k.startswith("cpu")},
        "cpu_seconds": {k: v for k, v in report.seconds.items() if k.startswith("cpu")},
        # peak resident anonymous memory during the job (memory-mapped files not counted)
        "driver_peak_anon_mb": driver,
        "worker_peak_anon_mb": sorted(peaks.values()),
    }


def _burn(_: int) -> float:
    """A fixed numpy load (sorts of 2M floats); its thread CPU seconds."""
    start = time.thread_time()
    a = np.random.default_rng(0).random(2_000_000)
    for _ in range(6):
        np.sort(a)
    return time.thread_time() - start


def machine_ceiling() -> float:
    """What a second process gives on this machine now: 4 equal numpy loads on 1 process,
    then on 2 (wall ratio). The baseline for the workers' ratio, measured beside it: other
    load on the cores or a shared host lowers both alike."""
    import multiprocessing as mp

    burn = importlib.import_module("bench.backfill_dask")._burn  # not __main__'s
    walls = []
    for n in (1, 2):
        with mp.get_context("spawn").Pool(n) as pool:
            pool.map(burn, range(n))  # started and warm
            start = time.perf_counter()
            pool.map(burn, range(4), chunksize=1)
            walls.append(time.perf_counter() - start)
    return round(walls[0] / walls[1], 2)


def _cpu(run: dict[str, Any], busiest: bool) -> tuple[float, float]:
    """(this process's CPU seconds, the workers' CPU seconds) of a run: every worker's, or
    per stage the busiest worker's (a stage lasts at least as long as that one works).
    Worker processes' clocks, not the tasks' own: those missed Arrow's threads and a
    worker's first-task imports (docs/perf-plan.md, "Session 9: 2 workers vs 1")."""
    cpu = run["cpu_seconds"]
    prefix = "cpu_busiest_worker_" if busiest else "cpu_workers_"
    return cpu["cpu_this_process"], sum(v for k, v in cpu.items() if k.startswith(prefix))


def run(events: int = 2_000_000, seed: int = 7, rounds: int = 1) -> dict[str, Any]:
    """Single process vs Dask with 1 and 2 local workers on the same file, ``rounds``
    times with the order alternating (1, 2, then 2, 1, ...); see above."""
    from features.reference import REFERENCE as FS
    from flows.backfill import run_backfill
    from flows.simulate import SimulationConfig, simulate, write_events

    cfg = SimulationConfig(
        events=events, cards=max(events // 50, 1), merchants=max(events // 1000, 1), days=30.0,
        seed=seed,
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="skewless-bench-dask-") as tmp:
        work = Path(tmp)
        write_events(simulate(cfg), work / "events.parquet")
        load = [round(os.getloadavg()[0], 1)]
        start = time.perf_counter()
        run_backfill(FS, work / "events.parquet", work / "single")
        single_s = time.perf_counter() - start
        pairs, ceilings = [], []
        for r in range(rounds):
            ceilings.append(machine_ceiling())
            order = (1, 2) if r % 2 == 0 else (2, 1)
            # 2 partitions per entity and worker: the same split for both cluster sizes
            got = {w: _timed_dask(w, work / "events.parquet", work / f"dask{w}", 4) for w in order}
            pairs.append((got[1], got[2]))
            load.append(round(os.getloadavg()[0], 1))
        same = [_compare(work / "single", work / f"dask{w}") for w in (1, 2)]
    ratios = [one["seconds"] / two["seconds"] for one, two in pairs]
    projections = []
    for one, two in pairs:
        (s1, t1), (s2, t2) = _cpu(one, busiest=False), _cpu(two, busiest=True)
        projections.append((s1 + t1) / (s2 + t2))
    one, two = pairs[int(np.argsort(ratios)[len(ratios) // 2])]  # the median round
    return {
        "events": events,
        "load_average_1m": load,
        "single_process": {"seconds": round(single_s, 3), "events_per_s": round(events / single_s)},
        "dask": [one, two],
        "speedup_2_over_1_workers": round(one["seconds"] / two["seconds"], 2),
        "speedup_each_round": [round(x, 2) for x in ratios],
        # the same ratio for a plain numpy load on 1 and 2 processes, before each round
        "machine_ceiling_each_round": ceilings,
        "target_speedup": TARGET_SPEEDUP,
        "ratio_to_target": round(one["seconds"] / two["seconds"] / TARGET_SPEEDUP, 2),
        "dask_2_workers_over_single_process": round(single_s / two["seconds"], 2),
        # CPU seconds, not wall time: what 2 idle cores would give, every CPU second of
        # this process (the scheduler's, the stitch) counted serial, each stage as long
        # as its busiest worker's CPU (the 1-worker run: all its CPU)
        "cpu_projection_2_over_1_workers": round(float(np.median(projections)), 2),
        "outputs_equal_single_process": same[1],
        "outputs_equal_1_worker": same[0],
    }


def write_chunked(path: Path, events: int, seed: int = 7, chunk: int = 1_000_000) -> None:
    """``events`` transactions over ``events // 50`` cards, written chunk by chunk (each
    chunk its own simulation over the next stretch of time; ids stay unique)."""
    from flows.simulate import SimulationConfig, simulate

    cards, merchants = max(events // 50, 1), max(events // 1000, 1)
    days = 30.0 * chunk / max(events, chunk)
    writer: pq.ParquetWriter | None = None
    done, i = 0, 0
    while done < events:
        n = min(chunk, events - done)
        cfg = SimulationConfig(
            events=n, cards=cards, merchants=merchants, days=days, seed=seed + i,
            start=SimulationConfig().start + timedelta(days=days * i),
        )  # fmt: skip
        t = simulate(cfg).replace_schema_metadata(None)
        counter = pa.array(np.arange(done, done + n, dtype=np.int64)).cast(pa.string())
        ids = pc.binary_join_element_wise("t", pc.utf8_lpad(counter, 12, "0"), "")
        t = t.set_column(0, "transaction_id", ids)
        if writer is None:
            writer = pq.ParquetWriter(path, t.schema, compression="zstd")
        writer.write_table(t)
        done, i = done + n, i + 1
    assert writer is not None
    writer.close()


def run_scale(events: int = 20_000_000, workers: int = 2, seed: int = 7) -> dict[str, Any]:
    """The Dask job on ``events`` generated in chunks; see the module docstring."""
    from flows.backfill_dask import PARTITION_EVENTS

    with tempfile.TemporaryDirectory(prefix="skewless-bench-dask-scale-") as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        write_chunked(work / "events.parquet", events, seed)
        generate_s = time.perf_counter() - start
        size_mb = (work / "events.parquet").stat().st_size / 2**20
        load = [round(os.getloadavg()[0], 1)]
        result = _timed_dask(workers, work / "events.parquet", work / "out", None)
        load.append(round(os.getloadavg()[0], 1))
    return {
        "events": events,
        "generate_seconds": round(generate_s, 1),
        "events_file_mb": round(size_mb, 1),
        "partition_events_about": PARTITION_EVENTS,
        "load_average_1m": load,
        **result,
    }


if __name__ == "__main__":  # pragma: no cover - manual runs
    import argparse
    import json

    p = argparse.ArgumentParser(prog="python -m bench.backfill_dask")
    p.add_argument("--events", type=int, default=2_000_000, help="1 -> 2 workers run")
    p.add_argument("--scale", type=int, help="also the chunked run on this many events")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1, help="1 -> 2 workers runs, alternating")
    args = p.parse_args()
    out: dict[str, Any] = {}
    if args.scale:  # first: the driver's peak memory is this run's
        out["scale"] = run_scale(args.scale, args.workers)
    if args.events:
        out["workers_1_to_2"] = run(args.events, rounds=args.rounds)
    print(json.dumps(out, indent=2))
