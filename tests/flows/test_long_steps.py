"""The long steps say what they do: in a log (stderr not a terminal) one line per stage
with its time (backfill stages, train's boosting rounds, the stream's events); and
`stream --replay ... --no-tail` on a bootstrapped store ends with a summary in which the
events the bootstrap holds are *covered*, not late, and are not written to the late file.

Each command runs as a subprocess, as a user or a service manager runs it."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _skewless(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "skewless", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess[str]]:
    d = tmp_path_factory.mktemp("long")
    out: dict[str, subprocess.CompletedProcess[str]] = {}
    _skewless("simulate", "--out", "ev.parquet", "--events", "20000", "--cards", "400",
              "--fraud-rate", "0.05", cwd=d)  # fmt: skip
    out["backfill"] = _skewless("backfill", "--events", "ev.parquet", "--out", "bf", cwd=d)
    out["train"] = _skewless(
        "--data-dir", "data", "train", "--features", "bf/features.parquet", "--max-rounds", "40",
        cwd=d,
    )  # fmt: skip

    # bootstrap the embedded store from the backfill, as `feast materialize` does
    from features.reference import REFERENCE
    from features.store import StoreConfig, open_feature_store

    store = open_feature_store(
        StoreConfig(workdir=d / "data" / "feast"), REFERENCE, data_dir=d / "bf" / "feast"
    )
    store.materialize(datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))
    out["stream"] = _skewless(
        "--data-dir", "data", "stream", "--replay", "ev.parquet", "--no-tail", cwd=d
    )
    out["dir"] = d  # type: ignore[assignment]
    return out


def test_backfill_logs_one_line_per_stage(runs: dict) -> None:
    err = runs["backfill"].stderr
    for stage in ("read", "validate_dedup_late", "features", "end_states", "feast_tables"):
        assert re.search(rf"backfill: {stage} in \d+\.\d s", err), err
    assert "backfill: read in" in err and "(20,000 events)" in err
    assert "\r" not in err  # no bar in a log


def test_train_logs_boosting_rounds_and_stages(runs: dict) -> None:
    err = runs["train"].stderr
    assert re.search(r"train: \d+ boosting rounds in \d+\.\d s \(.*best round \d+", err), err
    assert re.search(r"train, request-time only: \d+ boosting rounds in", err), err
    for stage in ("load", "model", "ablation", "onnx_parity", "publish"):
        assert re.search(rf"train: {stage} in \d+\.\d s", err), err
    assert "\r" not in err


def test_stream_logs_its_events_and_time(runs: dict) -> None:
    d: Path = runs["dir"]  # type: ignore[assignment]
    events = pq.read_table(d / "ev.parquet").num_rows
    err = runs["stream"].stderr
    assert re.search(rf"stream: {events:,} events in \d+\.\d s \([\d,]+ events/s", err), err


def test_stream_replay_on_a_bootstrapped_store_counts_covered_apart_from_late(
    runs: dict,
) -> None:
    d: Path = runs["dir"]  # type: ignore[assignment]
    done = runs["stream"]
    events = pq.read_table(d / "ev.parquet").num_rows
    # the bootstrap holds every event: none is late, the late file stays empty
    lates = list((d / "data" / "stream").glob("late-*.jsonl"))
    assert sum(p.stat().st_size for p in lates) == 0

    first = done.stdout.splitlines()
    [head] = [x for x in first if x.startswith("stream: ")]
    m = re.match(r"stream: ([\d,]+) events in .* s: ([\d,]+) valid, ([\d,]+) dead letters", head)
    assert m, done.stdout
    total, valid, dead = (int(g.replace(",", "")) for g in m.groups())
    assert total == events and valid + dead == events
    for entity in ("card", "merchant"):
        [line] = [x for x in first if x.strip().startswith(f"{entity}:")]
        nums = [int(n.replace(",", "")) for n in re.findall(r"([\d,]+) [a-z]", line)]
        applied, covered, late, dups = nums
        # every event is in the bootstrap: nothing new, nothing late, all covered
        assert (applied, covered, late, dups) == (0, valid, 0, 0), line
