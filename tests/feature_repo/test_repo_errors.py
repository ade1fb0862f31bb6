"""The real ``feast`` CLI on a copy of feature_repo/: an unset or malformed
``SKEWLESS_FEAST_REDIS`` is one line naming it (no ``KeyError: 'port'`` traceback, no silent
``apply``), and a ``redis://`` URL works. (A relative ``SKEWLESS_FEAST_DATA`` is taken from
the folder feast runs in: test_repo.py.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from feast import FeatureStore

from features.reference import REFERENCE
from flows.backfill import run_backfill
from flows.simulate import SimulationConfig, simulate, write_events
from tests.feature_repo.online import MATERIALIZE, assert_every_card_online

ROOT = Path(__file__).resolve().parents[2]
FEAST = str(Path(sys.executable).parent / "feast")


def _env(cwd: Path, **extra: str) -> dict[str, str]:
    """A clean environment: no SKEWLESS_* from the caller; this checkout's code first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKEWLESS_")}
    env.update(PYTHONPATH=str(ROOT), PWD=str(cwd), **extra)
    return env


def _feast(cwd: Path, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FEAST, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    ("command", "value", "said"),
    [
        (["apply"], None, "SKEWLESS_FEAST_REDIS is not set"),
        (MATERIALIZE, None, "SKEWLESS_FEAST_REDIS is not set"),
        (MATERIALIZE, "localhost", "SKEWLESS_FEAST_REDIS='localhost' is not host:port"),
    ],
)
def test_redis_variable_unset_or_malformed_is_one_line(
    command: list[str], value: str | None, said: str, tmp_path: Path
) -> None:
    shutil.copytree(ROOT / "feature_repo", tmp_path / "repo")
    env = _env(tmp_path) if value is None else _env(tmp_path, SKEWLESS_FEAST_REDIS=value)
    done = _feast(tmp_path, ["-c", "repo", *command], env)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"feature_repo: {said}"), done.stderr
    assert "export SKEWLESS_FEAST_REDIS=127.0.0.1:6379,db=0" in lines[0]
    assert not (tmp_path / "repo" / "data" / "registry.db").exists()  # nothing applied


@pytest.mark.integration
def test_apply_and_materialize_into_redis_from_a_url(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checked store is Feast's Redis store: a ``redis://`` URL works as well as
    Feast's own form, and the Feast SDK reads back what ``materialize`` wrote."""
    import redis

    url = redis_url.rsplit("/", 1)[0] + "/10"
    redis.Redis.from_url(url).flushdb()
    cfg = SimulationConfig(events=1_000, cards=15, merchants=4, days=1.0, seed=5)
    write_events(simulate(cfg), tmp_path / "ev.parquet")
    run_backfill(REFERENCE, tmp_path / "ev.parquet", tmp_path / "bf")
    shutil.copytree(ROOT / "feature_repo", tmp_path / "repo")
    env = _env(tmp_path, SKEWLESS_FEAST_REDIS=url, SKEWLESS_FEAST_DATA=str(tmp_path / "bf/feast"))
    for command in (["apply"], MATERIALIZE):
        done = _feast(tmp_path, ["-c", "repo", *command], env)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "note:" not in done.stderr  # the tables are there
    monkeypatch.setenv("SKEWLESS_FEAST_REDIS", url)
    store = FeatureStore(repo_path=str(tmp_path / "repo"))
    host_port = url.split("//", 1)[1].split("/", 1)[0]
    assert store.config.online_store.connection_string == f"{host_port},db=10"
    assert_every_card_online(store, cfg)
