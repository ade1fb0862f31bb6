"""The ``backfill`` command turns mimalloc's huge pages off before Arrow loads (they cost
a new process ~1 s of system CPU per 2M events here), and leaves a user's choice alone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows.simulate import SimulationConfig, simulate, write_events


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("memory") / "events.parquet"
    write_events(simulate(SimulationConfig(events=300, cards=20, merchants=5, seed=3)), path)
    return path


@pytest.mark.parametrize(("user", "seen"), [(None, "0"), ("1", "1")])
def test_backfill_command_starts_arrow_without_huge_pages(
    events: Path, tmp_path: Path, user: str | None, seen: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIMALLOC_")}
    env["MIMALLOC_VERBOSE"] = "1"  # mimalloc prints its options when Arrow loads it
    if user is not None:
        env["MIMALLOC_ALLOW_THP"] = user
    done = subprocess.run(
        [sys.executable, "-m", "skewless", "--log-level", "WARNING", "backfill",
         "--events", str(events), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-400:]
    # the project's pyarrow wheels load mimalloc: without it the setting would do nothing
    assert "mimalloc" in done.stderr, "pyarrow did not load mimalloc: " + done.stderr[-400:]
    assert f"option 'allow_thp': {seen}" in done.stderr
