"""The backfill on Dask distributed: the same job as :func:`flows.backfill.run_backfill`,
the same output files (byte for byte), for inputs larger than one process's memory.

Entities are independent, so each entity's events are split by hash of its key into
partitions (card and merchant each get their own split), and the single-process kernel
runs once per partition as a Dask task:

1. **split** (a task per row group of the events, read in batches): validate, keep the
   rejects and the valid rows in temporary files, and append each entity's (original row,
   key, time, event id, fields) to that row group's piece of its partition, in file
   order; a partition is its pieces in row-group order, so file order, which decides
   dedup and lateness, survives the shuffle, and the original row travels with every
   event. The intermediate files are Arrow IPC (memory-mapped; Parquet cost ~10x more
   to write here), the outputs Parquet.
2. **accept** (tasks): dedup and lateness per partition; the rows dropped come back, with
   the spread of the values (the exact window sums must use the whole file's digits:
   :mod:`flows.backfill_part`).
3. **features and states** (tasks): per partition, the features at its rows and its Feast
   table with end states, each written sorted.
4. **assemble** (tasks): each output row group merged from the partitions' outputs,
   back into file order (features, rejects, late rows) and key order (Feast tables),
   and encoded as a Parquet file of its own (:mod:`flows.backfill_assemble`);
5. **stitch** (this process, while later row groups are still encoded): each output
   file's row groups copied after each other under one footer
   (:mod:`flows.parquet_stitch`, :mod:`flows.backfill_outputs`): the bytes
   ``write_table`` makes of the single-process job's tables.

The temporary files live in ``OUT/.backfill-partitions-*`` (so on a real cluster ``OUT``
must be on a filesystem every worker sees) and are removed at the end. ``LocalCluster``
by default; ``scheduler`` names a running one (``dask scheduler`` + ``dask worker``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import pyarrow.parquet as pq

from features.definitions import FeatureSet
from features.plan import compile_plan
from flows.backfill import BackfillReport, small_pages
from flows.backfill_outputs import Pieces, assemble
from flows.backfill_part import (
    accept_stats,
    merge_stats,
    prepare,
    run_partition,
)  # fmt: skip
from flows.backfill_split import ROW_GROUP, piece_path, pieces_of, split_piece, split_spine

#: events per partition when not given: what one task holds in memory, about 1 GB
PARTITION_EVENTS = 1_000_000


class ClusterError(ConnectionError):
    """The Dask scheduler cannot be reached or has no workers; the message says how to
    start one."""


@contextlib.contextmanager
def dask_client(workers: int, scheduler: str | None) -> Iterator[Any]:
    """A client of ``scheduler``, or of a ``LocalCluster`` of ``workers`` processes."""
    with _quiet():
        yield from _client(workers, scheduler)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Dask's own logging off (but at DEBUG): a task's error reaches the caller as its
    exception, which the CLI prints as one line."""
    import distributed  # noqa: F401  (it sets its loggers' levels on import)

    log = logging.getLogger("distributed")
    before = log.level
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(before)


#: a local cluster's periodic housekeeping, slowed: it runs in this process (scheduler,
#: nannies) and in the workers (the sampling profiler, every 10 ms by default), on the
#: cores the tasks need; by default the driver alone spent ~3% of a core on it
LOCAL_CLUSTER_CONFIG = {
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.worker.memory.monitor-interval": "1s",
    "distributed.worker.profile.enabled": False,
}


def _client(workers: int, scheduler: str | None) -> Iterator[Any]:
    import dask
    from dask.distributed import Client, LocalCluster

    if scheduler is None:
        with (
            dask.config.set(LOCAL_CLUSTER_CONFIG),
            LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True,
                dashboard_address=":0", silence_logs=logging.CRITICAL,
            ) as cluster,
            Client(cluster) as client,
        ):  # fmt: skip
            client.run(_warm)
            yield client
        return
    how = (
        f"start one with `dask scheduler --host HOST --port PORT` and workers with "
        f"`dask worker {scheduler}` (PYTHONPATH set to the skewless checkout), or leave out "
        f"--scheduler for a local cluster"
    )
    try:
        client = Client(scheduler, timeout=10)
    except (OSError, TimeoutError, ValueError) as exc:
        raise ClusterError(
            f"cannot reach the Dask scheduler at {scheduler} ({type(exc).__name__}); {how}"
        ) from None
    with client:
        try:
            client.wait_for_workers(1, timeout=30)
            client.run(_warm)
        except (OSError, TimeoutError) as exc:
            raise ClusterError(
                f"the Dask scheduler at {scheduler} has no workers ({type(exc).__name__}); {how}"
            ) from None
        yield client


def _warm() -> None:
    """Import the task code on a worker (once, at cluster start, not in the first task),
    and what pyarrow imports lazily on its first array made from numpy: pandas, when it is
    installed (~0.4 CPU-s from compiled bytecode, ~2 CPU-s from source). Left to the first
    task, every worker paid it at the head of the job, time a second worker cannot share
    (docs/perf-plan.md, "Session 9: 2 workers vs 1")."""
    import distributed.protocol.numpy  # noqa: F401  (the tasks' numpy results)
    import numpy as np
    import pyarrow as pa

    import features.validate_table  # noqa: F401  (the validator's, on its first table)
    import flows.backfill_assemble
    import flows.backfill_part
    import flows.backfill_split  # noqa: F401

    pa.array(np.zeros(1))


def run_backfill_dask(
    fs: FeatureSet,
    events_path: Path,
    out_dir: Path,
    spine_path: Path | None = None,
    *,
    workers: int = 2,
    scheduler: str | None = None,
    partitions: int | None = None,
    batch_rows: int = ROW_GROUP,
) -> BackfillReport:
    """The backfill job on Dask; the output is the single-process job's, file for file."""
    with dask_client(workers, scheduler) as client:
        return backfill_on(client, fs, events_path, out_dir, spine_path, partitions, batch_rows)


def backfill_on(
    client: Any,
    fs: FeatureSet,
    events_path: Path,
    out_dir: Path,
    spine_path: Path | None = None,
    partitions: int | None = None,
    batch_rows: int = ROW_GROUP,
    row_group: int = ROW_GROUP,
    *,
    worker_cpu: bool = False,
) -> BackfillReport:
    """The job on an open Dask ``client`` (``partitions`` per entity; ``batch_rows`` read
    and written at a time; output row groups of ``row_group`` rows, pyarrow's default as
    in the single-process job). ``worker_cpu`` (the benchmark's): each stage also reports
    its workers' CPU seconds (``cpu_workers_*``, ``cpu_busiest_worker_*``), read with a
    ``client.run`` per stage: a round trip through the scheduler to every worker, between
    stages on the job's path, that a job not measured does not make."""
    with small_pages():
        return _run(
            fs, events_path, out_dir, spine_path, client, partitions, batch_rows, row_group,
            worker_cpu,
        )  # fmt: skip


def _run(
    fs: FeatureSet,
    events_path: Path,
    out_dir: Path,
    spine_path: Path | None,
    client: Any,
    partitions: int | None,
    batch_rows: int,
    row_group: int,
    worker_cpu: bool,
) -> BackfillReport:
    report = BackfillReport()
    clock, cpu = time.perf_counter(), time.process_time()
    cpu_at = cpu
    # every worker process's CPU seconds, every thread, user and system
    workers_at = client.run(time.process_time) if worker_cpu else {}

    def lap(name: str) -> None:
        """The stage's wall seconds and this process's CPU seconds; under ``worker_cpu``
        the workers' too (every thread: the tasks' own clocks miss Arrow's threads and
        anything between tasks), in all and on the busiest worker: a stage lasts at
        least that one's."""
        nonlocal clock, cpu_at, workers_at
        now, cpu_now = time.perf_counter(), time.process_time()
        report.seconds[name] = round(now - clock, 3)
        report.seconds[f"cpu_driver_{name}"] = round(cpu_now - cpu_at, 3)
        if worker_cpu:
            workers_now = client.run(time.process_time)
            used = [c - workers_at.get(w, 0.0) for w, c in workers_now.items()]
            report.seconds[f"cpu_workers_{name}"] = round(sum(used), 3)
            report.seconds[f"cpu_busiest_worker_{name}"] = round(max(used, default=0.0), 3)
            workers_at = workers_now
        clock, cpu_at = now, cpu_now

    split_tasks = pieces_of(events_path)  # one per row group; fails here on a bad file
    if partitions is None:
        rows = pq.ParquetFile(events_path).metadata.num_rows
        workers = max(len(client.nthreads()), 1)
        partitions = max(2 * workers, math.ceil(rows / PARTITION_EVENTS))
    names = [e.name for e in compile_plan(fs).entities]
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".backfill-partitions-", dir=out_dir))
    blob = cloudpickle.dumps(fs)
    warm = [  # each worker compiles the definitions first
        client.submit(prepare, blob, workers=[w], pure=False)
        for w in client.scheduler_info()["workers"]
    ]
    try:
        splits = [
            client.submit(
                split_piece, blob, str(events_path), group, offset, str(tmp), partitions,
                batch_rows, k, pure=False,
            )
            for k, (group, offset) in enumerate(split_tasks)
        ]  # fmt: skip
        spine_tasks = pieces_of(spine_path, "spine") if spine_path else []
        spine_splits = [
            client.submit(
                split_spine, blob, str(spine_path), group, offset, str(tmp), partitions,
                batch_rows, k, pure=False,
            )
            for k, (group, offset) in enumerate(spine_tasks)
        ]  # fmt: skip
        counts = client.gather(splits)
        spine_cpu = client.gather(spine_splits)
        client.gather(warm)
        report.events = sum(c["events"] for c in counts)
        report.rejected = report.events - sum(c["valid"] for c in counts)
        lap("split")
        parts = {
            n: [[str(piece_path(tmp / "events", n, p, k)) for k in range(len(split_tasks))]
                for p in range(partitions)]
            for n in names
        }  # fmt: skip

        jobs = [(n, p) for n in names for p in range(partitions)]
        stats = client.gather(
            [client.submit(accept_stats, blob, n, parts[n][p], pure=False)
             for n, p in jobs]
        )  # fmt: skip
        lap("accept")
        by_name: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
        for (n, _), s in zip(jobs, stats, strict=True):
            by_name[n].append(s)
        plans = {n: merge_stats(by_name[n]) for n in names}
        (tmp / "out").mkdir()

        def queries(n: str, p: int) -> list[str]:
            return [str(piece_path(tmp / "spine", n, p, k)) for k in range(len(spine_tasks))]

        futures = [
            client.submit(
                run_partition, blob, n, parts[n][p], queries(n, p) if spine_path else None,
                str(tmp / "out" / f"{n}-{p}"), plans[n], batch_rows, pure=False,
            )
            for n, p in jobs
        ]  # fmt: skip
        done = client.gather(futures)
        lap("features_states")
        report.seconds["cpu_split_tasks"] = round(sum(c["cpu"] for c in counts) + sum(spine_cpu), 3)
        report.seconds["cpu_accept_tasks"] = round(sum(s["cpu"] for s in stats), 3)
        report.seconds["cpu_partition_tasks"] = round(sum(d["cpu"] for d in done), 3)

        dropped = {
            n: {k: np.sort(np.concatenate([s[k] for s in by_name[n]]))
                for k in ("duplicate_rows", "late_rows")}
            for n in names
        }  # fmt: skip
        for n in names:
            late, dups = len(dropped[n]["late_rows"]), len(dropped[n]["duplicate_rows"])
            accepted = sum(s["n"] for s in by_name[n])
            report.by_entity[n] = {"accepted": accepted, "duplicates": dups, "late": late}
            report.entities[n] = sum(
                d["entities"] for (m, _), d in zip(jobs, done, strict=True) if m == n
            )
        report.duplicates = report.by_entity[fs.primary.name]["duplicates"]
        report.accepted = report.by_entity[fs.primary.name]["accepted"]
        feast_rows = {
            n: sum(d["feast_rows"] for (m, _), d in zip(jobs, done, strict=True) if m == n)
            for n in names
        }
        pieces = Pieces(tmp, [offset for _, offset in split_tasks], counts)
        outs = {n: [str(tmp / "out" / f"{n}-{p}") for p in range(partitions)] for n in names}
        (out_dir / "feast").mkdir(exist_ok=True)
        asm = assemble(
            client, fs, blob, pieces, outs, feast_rows, dropped, spine_path, row_group, out_dir
        )
        report.spine_rows, report.late = asm.spine_rows, asm.late
        report.seconds["cpu_assemble_tasks"] = round(asm.cpu, 3)
        report.seconds["stitch_after_last_task"] = round(asm.tail_seconds, 3)
        lap("assemble")
        report.seconds["cpu_this_process"] = round(time.process_time() - cpu, 3)
    except BaseException:
        if created:  # a failed job leaves no half-written output folder behind
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    (out_dir / "summary.json").write_text(report.to_json())
    return report
