"""Benchmark of the backfill: our vectorized features against Feast's point-in-time join.

On ``events`` simulated transactions (``events // 50`` cards, ``events // 1000`` merchants,
30 days), in one run:

* the whole ``skewless backfill`` job on ``job_events`` (2M by default): in this process
  (best of two, warm) with each stage in µs per event, and as the ``skewless backfill``
  command in a new process (best of two), its start included, split into its own job
  (the cold job) and the interpreter's start and exit: events/s against the 1M/s (warm)
  and 700k/s (with the start) targets;
* the feature computation with the events as the spine (every window feature of both
  entities plus the request-time ones), best of three: events/s against the 1M/s target;
* Feast's ``get_historical_features`` over the job's own Feast offline tables (a local
  repo in a temporary folder: file offline store, SQLite online store), on a random
  subsample of the same spine (Feast manages ~100-200 rows/s here, so the default is
  2,000 rows), and ours on exactly that subsample, our index over all events included:
  rows/s for both and the ratio ours / Feast, against the 10x target;
* the serialized end state per card (mean, p50, p99, max bytes) against the 4 KB budget;
* the Dask backfill (:mod:`bench.backfill_dask`): 1 -> 2 local workers on twice the
  events (2M by default) against the single-process job in the same run.

:func:`run` prints nothing and returns a JSON-able dict: every result beside its target or
baseline as a ratio.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

TARGETS = {
    "events_per_s": 1_000_000,
    "job_events_per_s": 1_000_000,
    "job_with_start_events_per_s": 700_000,
    "feast_ratio": 10.0,
    "state_bytes": 4096,
}


def _best_of(repeats: int, fn: Any) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _ratio(a: float, b: float) -> float:
    return round(a / b, 2) if b else float("inf")


def run(
    events: int = 1_000_000,
    seed: int = 7,
    feast_rows: int = 2_000,
    dask_events: int | None = None,
    job_events: int | None = None,
) -> dict[str, Any]:
    """Simulate, backfill, time ours and Feast on the same spine; see the module docstring.
    The job on ``job_events``, then the Dask backfill, 1 -> 2 local workers, on
    ``dask_events`` (both default to 2 x events)."""
    from bench import backfill_dask

    result = _run(events, seed, feast_rows)
    result["job"] = job(job_events or 2 * events, seed)
    result["distributed"] = backfill_dask.run(dask_events or 2 * events, seed)
    return result


def job(events: int, seed: int = 7, repeats: int = 2) -> dict[str, Any]:
    """The whole job on ``events`` simulated events: in this process (best of ``repeats``,
    warm: each stage in µs per event) and as ``skewless backfill`` in a new process (best
    of ``repeats``), both on the same file after it is in the page cache, each run into a
    fresh output folder.

    The command's time is split with what it reports itself (its stages' seconds): its
    own job (``command_job_seconds``) and the rest, the interpreter and imports before it
    and the teardown after (``command_start_exit_seconds``). ``cold_job_seconds`` is the
    command's job minus the warm job in process: a new process faults in its whole working
    set (``command_minor_faults`` against ``minor_faults`` here), which the warm run reuses.
    ``process_start_seconds`` (command minus warm job) is the sum of both."""
    from features.reference import REFERENCE as FS
    from flows.backfill import run_backfill
    from flows.simulate import SimulationConfig, simulate, write_events

    cfg = SimulationConfig(
        events=events, cards=max(events // 50, 1), merchants=max(events // 1000, 1), days=30.0,
        seed=seed,
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="skewless-bench-job-") as tmp:
        work = Path(tmp)
        write_events(simulate(cfg), work / "events.parquet")
        best: Any = None
        for i in range(repeats):
            before = _usage(resource.RUSAGE_SELF)
            start = time.perf_counter()
            report = run_backfill(FS, work / "events.parquet", work / f"out{i}")
            wall = time.perf_counter() - start
            used = _usage(resource.RUSAGE_SELF, before)
            if best is None or wall < best[1]:
                best = (report, wall, used)
            shutil.rmtree(work / f"out{i}")
        report, wall, used = best
        cli: Any = None
        for i in range(repeats):
            before = _usage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-m", "skewless", "--log-level", "WARNING", "backfill",
                 "--events", str(work / "events.parquet"), "--out", str(work / f"cli{i}")],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            cli_wall = time.perf_counter() - start
            cli_used = _usage(resource.RUSAGE_CHILDREN, before)
            if done.returncode:
                raise RuntimeError(f"skewless backfill failed: {done.stderr.strip()[-400:]}")
            cli_job = sum(json.loads(done.stdout)["seconds"].values())
            if cli is None or cli_wall < cli[0]:
                cli = (cli_wall, cli_job, cli_used)
            shutil.rmtree(work / f"cli{i}")
    cli_wall, cli_job, cli_used = cli
    rate, cli_rate = report.events / wall, report.events / cli_wall
    per_event = {k: round(v / report.events * 1e6, 3) for k, v in report.seconds.items()}
    return {
        "events": report.events,
        "accepted": report.accepted,
        "rejected": report.rejected,
        "duplicates": report.duplicates,
        "late": report.late,
        "stage_seconds": report.seconds,
        "stage_us_per_event": per_event,
        "total_seconds": round(wall, 3),
        "cpu_seconds": round(used[0] + used[1], 3),
        "user_seconds": round(used[0], 3),
        "sys_seconds": round(used[1], 3),
        "minor_faults": used[2],
        "cores_busy": round((used[0] + used[1]) / wall, 2),
        "events_per_s": round(rate),
        "target_events_per_s": TARGETS["job_events_per_s"],
        "ratio_to_target": _ratio(rate, TARGETS["job_events_per_s"]),
        "command_seconds": round(cli_wall, 3),
        "command_job_seconds": round(cli_job, 3),
        "command_start_exit_seconds": round(cli_wall - cli_job, 3),
        "cold_job_seconds": round(cli_job - wall, 3),
        "process_start_seconds": round(cli_wall - wall, 3),
        "command_user_seconds": round(cli_used[0], 3),
        "command_sys_seconds": round(cli_used[1], 3),
        "command_minor_faults": cli_used[2],
        "command_events_per_s": round(cli_rate),
        "command_target_events_per_s": TARGETS["job_with_start_events_per_s"],
        "command_ratio_to_target": _ratio(cli_rate, TARGETS["job_with_start_events_per_s"]),
    }


def _usage(who: int, since: tuple[float, float, int] = (0.0, 0.0, 0)) -> tuple[float, float, int]:
    """User and system CPU seconds and minor page faults of ``who`` (``getrusage``), less
    ``since``."""
    r = resource.getrusage(who)
    return (r.ru_utime - since[0], r.ru_stime - since[1], r.ru_minflt - since[2])


def _run(events: int, seed: int, feast_rows: int) -> dict[str, Any]:
    from features.feast_objects import offline_table_name, state_field, view_name
    from features.reference import REFERENCE as FS
    from features.store import StoreConfig, open_feature_store
    from flows.backfill import (
        BackfillReport,
        compute_features,
        each,
        load_events,
        run_backfill,
        small_pages,
    )
    from flows.simulate import SimulationConfig, simulate, write_events

    cfg = SimulationConfig(
        events=events, cards=max(events // 50, 1), merchants=max(events // 1000, 1), days=30.0,
        seed=seed,
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="skewless-bench-backfill-") as tmp:
        work = Path(tmp)
        table = simulate(cfg)
        write_events(table, work / "events.parquet")
        run_backfill(FS, work / "events.parquet", work / "out")

        valid, accepted, _, _ = load_events(FS, table, BackfillReport())
        names = [e.name for e in FS.entities]

        def features(spine: pa.Table) -> pa.Table:
            indexes = dict(zip(names, each(accepted.index, names), strict=True))
            return compute_features(FS, spine, accepted, indexes)

        with small_pages():  # as the job runs
            ours_s = _best_of(3, lambda: features(valid))
        ours_rate = valid.num_rows / ours_s

        # Feast on a random subsample of the same spine, and ours on exactly those rows
        rng = np.random.default_rng(seed)
        k = min(feast_rows, valid.num_rows)
        rows = np.sort(rng.choice(valid.num_rows, size=k, replace=False))
        sub = valid.take(pa.array(rows))
        entity_df = pa.table(
            {
                "card_id": sub.column("card_id"),
                "merchant_id": sub.column("merchant_id"),
                "event_timestamp": sub.column("event_time"),
            }
        ).to_pandas()
        store = open_feature_store(
            StoreConfig(workdir=work / "feast_repo"), FS, work / "out" / "feast"
        )
        refs = [f"{view_name(e)}:{a.name}" for e in FS.entities for a in FS.for_entity(e)]

        def feast() -> None:
            store.get_historical_features(entity_df=entity_df, features=refs).to_arrow()

        feast_s = _best_of(1, feast)
        with small_pages():
            ours_sub_s = _best_of(3, lambda: features(sub))

        card_states = pq.read_table(
            work / "out" / "feast" / offline_table_name(FS.primary),
            columns=[state_field(FS.primary)],
        ).column(0)
        sizes = pc.binary_length(card_states.drop_null()).to_numpy().astype(np.float64)

    p50, p99 = (float(np.percentile(sizes, q)) for q in (50, 99)) if len(sizes) else (0.0, 0.0)
    biggest = float(sizes.max()) if len(sizes) else 0.0
    return {
        "events": events,
        "cards": cfg.cards,
        "merchants": cfg.merchants,
        "features": {
            "spine_rows": valid.num_rows,
            "seconds_best_of_3": round(ours_s, 4),
            "events_per_s": round(ours_rate),
            "target_events_per_s": TARGETS["events_per_s"],
            "ratio_to_target": _ratio(ours_rate, TARGETS["events_per_s"]),
        },
        "feast_get_historical_features": {
            "rows": k,
            "feast_seconds": round(feast_s, 4),
            "feast_rows_per_s": round(k / feast_s),
            "ours_seconds_same_rows": round(ours_sub_s, 4),
            "ours_rows_per_s_same_rows": round(k / ours_sub_s),
            "ours_rows_per_s_full_spine": round(ours_rate),
            "ratio_ours_over_feast": _ratio(feast_s, ours_sub_s),
            "target_ratio": TARGETS["feast_ratio"],
        },
        "state_bytes_per_card": {
            "cards": len(sizes),
            "mean": round(float(sizes.mean()), 1) if len(sizes) else 0.0,
            "p50": p50,
            "p99": p99,
            "max": biggest,
            "budget": TARGETS["state_bytes"],
            "p99_over_budget": _ratio(p99, TARGETS["state_bytes"]),
            "max_over_budget": _ratio(biggest, TARGETS["state_bytes"]),
        },
    }


#: Parquet settings measured against the job's (``parquet_options``): each a change to
#: it for one kind of column (docs/perf-plan.md, "Session 10")
WRITE_VARIANTS: dict[str, Any] = {
    "job": {},
    "strings lz4": {"compression": ("string", "lz4")},
    "strings zstd": {"compression": ("string", "zstd")},
    "strings uncompressed": {"compression": ("string", "none")},
    "strings no statistics": {"write_statistics": ("string", False)},
    "no dictionary": {"use_dictionary": False},
    "floats byte_stream_split": {"column_encoding": ("double", "BYTE_STREAM_SPLIT")},
    "floats byte_stream_split zstd": {
        "column_encoding": ("double", "BYTE_STREAM_SPLIT"),
        "compression": ("double", "zstd"),
    },
    "floats zstd": {"compression": ("double", "zstd")},
    "binary lz4": {"compression": ("binary", "lz4")},
    "binary zstd": {"compression": ("binary", "zstd")},
    "integers zstd": {"compression": ("int64", "zstd")},
    "no statistics": {"write_statistics": False},
    "data pages 8 MB": {"data_page_size": 8 << 20},
    "data page v2": {"data_page_version": "2.0"},
    "row groups 256k": {"row_group_size": 1 << 18},
}


def _variant(schema: pa.Schema, change: dict[str, Any]) -> dict[str, Any]:
    """``parquet_options(schema)`` with ``change``: a ``(type, value)`` pair sets the
    option for the columns of that type (``int64`` includes timestamps)."""
    from flows.backfill_write import ROW_GROUP, parquet_options

    opts: dict[str, Any] = {"row_group_size": ROW_GROUP, **parquet_options(schema)}

    def of(kind: str) -> list[str]:
        same = {"int64": ("int64", "timestamp")}.get(kind, (kind,))
        return [f.name for f in schema if str(f.type).startswith(same)]

    for key, value in change.items():
        if not isinstance(value, tuple):
            opts[key] = value
            continue
        kind, v = value
        names = of(kind)
        if key == "write_statistics":
            opts[key] = [n for n in opts[key] if n not in names or v]
        else:  # compression, column_encoding: per column
            opts[key] = {**opts[key], **dict.fromkeys(names, v)}
    if opts.get("use_dictionary") is False:
        opts["column_encoding"] = opts["column_encoding"] or None
    return opts


def write_options(events: int = 2_000_000, seed: int = 7, rounds: int = 3) -> dict[str, Any]:
    """Each of :data:`WRITE_VARIANTS` on the job's three large outputs (the features and
    both Feast tables of ``events`` simulated events), rounds alternated: per output the
    process CPU of ``write_table`` (median), the file's MB, and the CPU to read it back;
    every file read back equal to the job's (values, NaN bits, schema)."""
    from features.reference import REFERENCE as FS
    from flows.backfill import run_backfill
    from flows.simulate import SimulationConfig, simulate, write_events

    cfg = SimulationConfig(
        events=events, cards=max(events // 50, 1), merchants=max(events // 1000, 1), days=30.0,
        seed=seed,
    )  # fmt: skip
    found: dict[tuple[str, str], list[tuple[float, int, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="skewless-bench-writes-") as tmp:
        work = Path(tmp)
        write_events(simulate(cfg), work / "events.parquet")
        run_backfill(FS, work / "events.parquet", work / "out")
        paths = [work / "out" / "features.parquet", *sorted((work / "out" / "feast").iterdir())]
        tables = {p.name: pq.read_table(p) for p in paths}
        for r in range(rounds):
            for name, change in WRITE_VARIANTS.items():
                for out, table in tables.items():
                    opts = _variant(table.schema, change)
                    before = _usage(resource.RUSAGE_SELF)
                    pq.write_table(table, work / "w.parquet", **opts)
                    wrote = sum(_usage(resource.RUSAGE_SELF, before)[:2])
                    size = (work / "w.parquet").stat().st_size
                    before = _usage(resource.RUSAGE_SELF)
                    back = pq.read_table(work / "w.parquet")
                    read = sum(_usage(resource.RUSAGE_SELF, before)[:2])
                    if r == 0 and not _same(back, table):
                        raise AssertionError(f"{name}: {out} read back differs")
                    found.setdefault((name, out), []).append((wrote, size, read))
    return {
        name: {
            out: {
                "write_cpu_s": round(float(np.median([w for w, _, _ in v])), 3),
                "mb": round(v[0][1] / 1e6, 1),
                "read_cpu_s": round(float(np.median([x for _, _, x in v])), 3),
            }
            for (n, out), v in found.items()
            if n == name
        }
        for name in WRITE_VARIANTS
    }


def _same(a: pa.Table, b: pa.Table) -> bool:
    """Equal schemas and values, NaN bits included (Arrow IPC bytes of one chunk each)."""

    def ipc(t: pa.Table) -> bytes:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, t.schema) as w:
            w.write_table(t.combine_chunks())
        return bytes(sink.getvalue())

    return a.schema.equals(b.schema) and ipc(a) == ipc(b)


if __name__ == "__main__":  # pragma: no cover - manual runs
    import json
    import sys

    if sys.argv[1:2] == ["writes"]:  # python -m bench.backfill writes [EVENTS [ROUNDS]]
        args = [int(a) for a in sys.argv[2:4]]
        print(json.dumps(write_options(*args), indent=2))
    else:
        print(json.dumps(run(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000), indent=2))
