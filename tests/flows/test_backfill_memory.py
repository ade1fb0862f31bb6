"""The ``backfill`` command turns mimalloc's huge pages off before Arrow loads (they cost
a new process ~1 s of system CPU per 2M events here), and leaves a user's choice alone;
it runs the single-process job without importing pandas (~0.3 s of its start), while
``import pandas`` and pyarrow's own pandas conversions still work afterwards."""

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


def _python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=False
    )


def test_backfill_command_runs_the_job_without_pandas(events: Path, tmp_path: Path) -> None:
    code = (
        "import sys; from skewless.cli import main; rc = main(); "
        "print('pandas loaded:', 'pandas' in sys.modules); sys.exit(rc)"
    )
    args = ("--log-level", "WARNING", "backfill", "--events", str(events), "--out", str(tmp_path))
    done = _python(code, *args)
    assert done.returncode == 0, done.stderr[-400:]
    assert done.stdout.rstrip().endswith("pandas loaded: False")
    assert (tmp_path / "features.parquet").exists()


def test_pandas_still_works_after_arrow_loads_without_it() -> None:
    code = (
        "import sys; from flows.backfill_memory import arrow_without_pandas as go\n"
        "assert go() and 'pandas' not in sys.modules\n"
        "import pyarrow as pa\n"
        "assert pa.array([1, 2]).to_numpy().tolist() == [1, 2] and 'pandas' not in sys.modules\n"
        "df = pa.table({'a': [1, 2]}).to_pandas()\n"
        "import pandas as pd\n"
        "assert isinstance(df, pd.DataFrame) and df['a'].tolist() == [1, 2]\n"
        "assert pa.array(pd.Series([1.5, None])).null_count == 1\n"
        "assert not go()\n"
        "print('ok')"
    )
    done = _python(code)
    assert done.returncode == 0, done.stderr[-600:]
    assert done.stdout.strip() == "ok"


def test_not_when_pandas_is_already_loaded() -> None:
    code = (
        "import pandas; from flows.backfill_memory import arrow_without_pandas as go\n"
        "import pyarrow as pa\n"
        "assert not go() and pa.lib._pandas_api.have_pandas\n"
        "print('ok')"
    )
    done = _python(code)
    assert done.returncode == 0, done.stderr[-600:]
    assert done.stdout.strip() == "ok"
