"""The backfill on Dask distributed writes the single-process job's files, byte for byte:
adversarial histories (out of order, duplicates split across file batches and
partitions, late events, ties, extreme values, invalid rows) on a real ``LocalCluster``
of 2 worker processes, a spine file, and a real ``dask scheduler`` + ``dask worker``
reached with ``--scheduler``; an unreachable scheduler gets one line saying how to start one.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.backfill import EventIndex
from features.definitions import FeatureSet
from features.feast_objects import view_name
from features.reference import REFERENCE
from flows import backfill_part
from flows.backfill import BackfillReport, parquet_options, run_backfill
from flows.backfill_dask import backfill_on, dask_client
from flows.backfill_split import partition_of
from tests.features.test_backfill_job import SCHEMA, T0, WIDE, _events

ROOT = Path(__file__).resolve().parents[2]
REFERENCE_MODULE = "features.reference"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    with dask_client(2, None) as c:
        assert len(c.nthreads()) == 2
        yield c


def _history(seed: int) -> pa.Table:
    """``_events`` plus invalid rows (each rejected for a different field)."""
    rnd = random.Random(seed)
    rows = _events(seed, rnd.randint(1, 250), extreme=seed % 5 == 4)
    for k, patch in enumerate([{"amount": -1.0}, {"currency": "eur"}, {"card_id": -3}]):
        if rnd.random() < 0.5:
            rows.insert(
                rnd.randrange(len(rows) + 1), {**rows[0], "transaction_id": f"b{k}", **patch}
            )
    return pa.Table.from_pylist(rows, SCHEMA)


def _outputs(out: Path) -> list[str]:
    names = ["features.parquet", "rejects.parquet", "late.parquet"]
    return names + sorted(f"feast/{p.name}" for p in (out / "feast").iterdir())


def _same(a: Path, b: Path, ra: BackfillReport, rb: BackfillReport) -> None:
    assert _outputs(a) == _outputs(b)
    for name in _outputs(a):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert {**ra.__dict__, "seconds": {}} == {**rb.__dict__, "seconds": {}}
    assert not [p.name for p in b.iterdir() if p.name.startswith(".backfill-partitions")]


def _both(
    client: Any, fs: FeatureSet, d: Path, spine: Path | None = None, partitions: int = 3
) -> tuple[Path, Path, BackfillReport, BackfillReport]:
    # batches of 7 rows: duplicates and late events land in other batches than their first copy
    ra = run_backfill(fs, d / "events.parquet", d / "single", spine)
    rb = backfill_on(client, fs, d / "events.parquet", d / "dask", spine, partitions, 7)
    return d / "single", d / "dask", ra, rb


@pytest.mark.parametrize("fs", [REFERENCE, WIDE], ids=["reference", "wide"])
def test_dask_backfill_files_equal_the_single_process_job(
    client: Any, fs: FeatureSet, tmp_path: Path
) -> None:
    seen = {"duplicates": 0, "late": 0, "rejected": 0}
    for seed in range(10):
        d = tmp_path / str(seed)
        d.mkdir()
        pq.write_table(_history(seed), d / "events.parquet")
        a, b, ra, rb = _both(client, fs, d, partitions=1 + seed % 4)
        _same(a, b, ra, rb)
        for k in seen:
            seen[k] += getattr(ra, k)
    assert all(seen.values()), seen  # the histories did exercise each path


def test_dask_backfill_with_a_spine_file(client: Any, tmp_path: Path) -> None:
    events = _history(2)
    pq.write_table(events, tmp_path / "events.parquet")
    rng = np.random.default_rng(0)
    spine = events.select(["merchant_id", "event_time", "card_id", "amount"])
    spine = spine.take(pa.array(rng.permutation(spine.num_rows)[: spine.num_rows // 2]))
    spine = spine.append_column("label", pa.array(rng.integers(0, 2, spine.num_rows)))
    pq.write_table(spine, tmp_path / "spine.parquet")
    a, b, ra, rb = _both(client, REFERENCE, tmp_path, tmp_path / "spine.parquet")
    _same(a, b, ra, rb)
    assert pq.read_table(b / "features.parquet").column_names[:5] == spine.column_names


def test_a_job_on_a_started_cluster_imports_nothing_in_its_workers(tmp_path: Path) -> None:
    """The workers import the task code, and what pyarrow imports lazily (pandas), at
    cluster start: in a worker's first task it was serial time (~2 CPU-s from source,
    ~0.4 from bytecode) at the head of every job, which a second worker cannot share.
    Under the bench's ``worker_cpu``, every stage reports its workers' CPU (all threads:
    at least their tasks' own)."""
    pq.write_table(_history(3), tmp_path / "events.parquet")
    with dask_client(1, None) as c:
        before = c.run(lambda: sorted(sys.modules))
        report = backfill_on(
            c, REFERENCE, tmp_path / "events.parquet", tmp_path / "out", worker_cpu=True
        )
        after = c.run(lambda: sorted(sys.modules))
    (w,) = before
    # only the definitions' own module, which comes with them
    assert sorted(set(after[w]) - set(before[w])) == [REFERENCE_MODULE]
    s = report.seconds
    tasks = {"split": "split", "accept": "accept", "features_states": "partition",
             "assemble": "assemble"}  # fmt: skip
    for stage, name in tasks.items():
        assert s[f"cpu_busiest_worker_{stage}"] == s[f"cpu_workers_{stage}"]  # one worker
        assert s[f"cpu_workers_{stage}"] >= s[f"cpu_{name}_tasks"] - 0.002, stage


class _Runs:
    """The real client, counting its ``run`` calls (each a round trip through the
    scheduler to every worker)."""

    def __init__(self, client: Any) -> None:
        self.client, self.runs = client, 0

    def run(self, *args: Any, **kwargs: Any) -> Any:
        self.runs += 1
        return self.client.run(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


def test_a_job_not_measured_reads_no_worker_clocks(client: Any, tmp_path: Path) -> None:
    """The workers' CPU clocks are the bench's (``worker_cpu=True``): read per stage, they
    were 5 ``client.run`` round trips on every job's path."""
    pq.write_table(_history(4), tmp_path / "events.parquet")
    counted = _Runs(client)
    report = backfill_on(counted, REFERENCE, tmp_path / "events.parquet", tmp_path / "out")
    assert counted.runs == 0
    assert not [k for k in report.seconds if k.startswith(("cpu_workers", "cpu_busiest"))]
    stages = ("split", "accept", "features_states", "assemble")
    assert all(report.seconds[s] >= 0 and f"cpu_driver_{s}" in report.seconds for s in stages)
    measured = _Runs(client)
    again = backfill_on(
        measured, REFERENCE, tmp_path / "events.parquet", tmp_path / "again", worker_cpu=True
    )
    assert measured.runs == 1 + len(stages)
    assert {f"cpu_workers_{s}" for s in stages} <= set(again.seconds)
    for name in _outputs(tmp_path / "out"):  # the same files either way
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "again" / name).read_bytes()


def _regrouped(single: Path, into: Path, rows: int) -> None:
    """The single process's outputs as ``write_table`` writes them in ``rows``-row groups
    (rewriting in its default groups gives back its very bytes: checked)."""
    for name in _outputs(single):
        t = pq.read_table(single / name)
        (into / name).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(t, into / "same.parquet", **parquet_options(t.schema))
        assert (into / "same.parquet").read_bytes() == (single / name).read_bytes(), name
        pq.write_table(t, into / name, row_group_size=rows, **parquet_options(t.schema))
    (into / "same.parquet").unlink()


@pytest.mark.parametrize("spine", [False, True], ids=["valid-rows", "spine-file"])
def test_row_groups_made_as_tasks_stitch_into_the_single_process_file(
    client: Any, tmp_path: Path, spine: bool
) -> None:
    """Output row groups of 16 rows (the job's default is pyarrow's 1Mi rows): each row
    group is merged and encoded by its own task, boundaries fall inside split pieces,
    next to duplicates and in one key's Feast rows; stitched, every file is the one
    ``write_table`` makes in 16-row groups from the single process's table."""
    for seed in range(4):
        d = tmp_path / str(seed)
        d.mkdir()
        events = _history(seed + 10)
        pq.write_table(events, d / "events.parquet", row_group_size=40)  # several pieces
        spine_path = None
        if spine:
            spine_path = d / "spine.parquet"
            pq.write_table(events.select(["card_id", "merchant_id", "event_time"]), spine_path,
                           row_group_size=24)  # fmt: skip
        ra = run_backfill(REFERENCE, d / "events.parquet", d / "single", spine_path)
        rb = backfill_on(client, REFERENCE, d / "events.parquet", d / "dask", spine_path, 3, 7,
                         row_group=16)  # fmt: skip
        _regrouped(d / "single", d / "want", 16)
        _same(d / "want", d / "dask", ra, rb)
        groups = pq.ParquetFile(d / "dask" / "features.parquet").metadata.num_row_groups
        assert groups == -(-pq.read_metadata(d / "want" / "features.parquet").num_rows // 16)
        assert groups > 1


def _own_digits(self: Any, field: str, squares: bool) -> Any:
    """The plain kernel's choice: digits from this partition's values alone."""
    return EventIndex.moments(self, field, squares)


_PLANNED = backfill_part.PlannedIndex.moments


def _plain_kernel(plain: bool) -> None:
    """On a worker: switch the partitions' digit choice to their own values, or back."""
    backfill_part.PlannedIndex.moments = _own_digits if plain else _PLANNED  # type: ignore[method-assign]


def test_window_sums_use_the_whole_files_digits(client: Any, tmp_path: Path) -> None:
    """One card's 1e-300 makes exact digits impossible for the whole file (so window sums
    are lifted), while another card's partition alone could use digits: with each
    partition choosing for itself, as the plain kernel would, the sums round differently.
    The whole file's plan is what keeps the bytes."""
    rnd = random.Random(1)
    rows = [
        {"transaction_id": f"x{i}", "card_id": 0, "merchant_id": 0, "currency": "EUR",
         "amount": rnd.randint(1, 10**6) / 100, "country": "FR", "mcc": 5411,
         "event_time": T0 + i * 60_000}
        for i in range(300)
    ]  # fmt: skip
    tiny = {**rows[0], "transaction_id": "tiny", "card_id": 2, "merchant_id": 2, "amount": 1e-300}
    assert len(set(partition_of(np.array([0, 2]), 2).tolist())) == 2  # apart
    pq.write_table(pa.Table.from_pylist([*rows, tiny], SCHEMA), tmp_path / "events.parquet")
    a, b, ra, rb = _both(client, REFERENCE, tmp_path, partitions=2)
    _same(a, b, ra, rb)
    plain = tmp_path / "plain"
    client.run(_plain_kernel, True)
    try:
        backfill_on(client, REFERENCE, tmp_path / "events.parquet", plain, None, 2, 7)
    finally:
        client.run(_plain_kernel, False)
    card_table = f"feast/{view_name(REFERENCE.primary)}.parquet"
    for name in ("features.parquet", card_table):
        assert (plain / name).read_bytes() != (a / name).read_bytes(), name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [str(BIN / "skewless"), *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def test_scheduler_address_runs_on_a_real_scheduler_and_worker(tmp_path: Path) -> None:
    address = f"tcp://127.0.0.1:{_free_port()}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    common = ["--no-dashboard"]
    host, port = address.removeprefix("tcp://").split(":")
    procs = [
        subprocess.Popen(
            [str(BIN / "dask"), "scheduler", "--host", host, "--port", port, *common],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            [str(BIN / "dask"), "worker", address, "--nworkers", "1", "--nthreads", "1",
             "--memory-limit", "2GB", *common],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ),
    ]  # fmt: skip
    try:
        pq.write_table(_history(5), tmp_path / "events.parquet")
        events = str(tmp_path / "events.parquet")
        got = _cli("backfill", "--events", events, "--out", str(tmp_path / "dask"),
                   "--engine", "dask", "--scheduler", address, "--partitions", "2")  # fmt: skip
        assert got.returncode == 0, got.stderr
        single = run_backfill(REFERENCE, tmp_path / "events.parquet", tmp_path / "single")
        report = BackfillReport(**json.loads(got.stdout))
        _same(tmp_path / "single", tmp_path / "dask", single, report)
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def test_unreachable_scheduler_is_one_line_naming_it(tmp_path: Path) -> None:
    address = f"tcp://127.0.0.1:{_free_port()}"
    pq.write_table(_history(1), tmp_path / "events.parquet")
    got = _cli("backfill", "--events", str(tmp_path / "events.parquet"),
               "--out", str(tmp_path / "out"), "--scheduler", address, timeout=120)  # fmt: skip
    assert got.returncode == 2
    lines = got.stderr.strip().splitlines()
    assert len(lines) == 1, got.stderr
    assert address in lines[0] and "dask scheduler" in lines[0] and "dask worker" in lines[0]
    assert "Traceback" not in got.stderr and not (tmp_path / "out").exists()


def test_bad_events_file_is_one_line_and_leaves_no_output(tmp_path: Path) -> None:
    """The split task's schema error reaches the CLI as its one-line message; Dask's own
    logs (the worker's "Compute Failed") stay quiet, and no half-written folder is left."""
    pq.write_table(_history(1).drop_columns(["amount"]), tmp_path / "events.parquet")
    got = _cli("backfill", "--events", str(tmp_path / "events.parquet"),
               "--out", str(tmp_path / "out"), "--engine", "dask", timeout=120)  # fmt: skip
    assert got.returncode == 2
    assert got.stderr.strip().splitlines() == [
        "skewless backfill: column 'amount': missing (found transaction_id, card_id, "
        "merchant_id, currency, country, mcc, event_time)"
    ]
    assert not (tmp_path / "out").exists()


def test_spine_without_a_key_is_one_line_and_leaves_no_output(tmp_path: Path) -> None:
    """The spine is split by tasks too: their schema error reaches the CLI as one line."""
    events = _history(1)
    pq.write_table(events, tmp_path / "events.parquet")
    pq.write_table(events.select(["card_id", "event_time"]), tmp_path / "spine.parquet")
    got = _cli("backfill", "--events", str(tmp_path / "events.parquet"),
               "--spine", str(tmp_path / "spine.parquet"), "--out", str(tmp_path / "out"),
               "--engine", "dask", timeout=120)  # fmt: skip
    assert got.returncode == 2
    lines = got.stderr.strip().splitlines()
    assert lines == ["skewless backfill: column 'merchant_id': missing from the spine"]
    assert not (tmp_path / "out").exists()
