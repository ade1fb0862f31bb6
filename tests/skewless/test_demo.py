"""`skewless demo` end to end (smaller), so the README's first command cannot rot, and
`skewless verify` on what it left behind."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _skewless(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "skewless", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    data = tmp_path_factory.mktemp("demo")
    # a relative data dir, as `make demo` uses
    done = _skewless(
        "--data-dir", "out/demo", "demo", "--events", "40000", "--score", "200", cwd=data
    )
    return data / "out" / "demo", done


def test_demo_runs_the_whole_loop_with_zero_skew(
    demo: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    out, done = demo
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["skew_online_state"]["mismatches"] == 0
    assert report["skew_online_state"]["compared"] > 1000
    assert report["skew_scored"]["mismatches"] == 0
    assert report["skew_scored"]["compared"] == 15 * report["scoring"]["requests"]
    assert report["scoring"]["requests"] > 0
    assert report["model"]["roc_auc"] > 0.8
    assert report["model"]["pr_auc"] > report["model"]["request_only_pr_auc"]  # windows matter
    assert 0 < report["model"]["recall_at_threshold"] <= 1
    assert (out / "report.html").read_text().count("<img") >= 2
    assert "skew, features used by Score vs backfill: 0 mismatches" in done.stdout


def test_verify_catches_a_tampered_prediction(
    demo: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    """The demo's log with one served feature off by 1: verify must fail and name it
    (that it passes on the demo's own log: the printed `verify` command, below)."""
    out, _ = demo
    bad = tmp_path / "demo"
    shutil.copytree(out, bad)
    [f] = sorted((bad / "predictions").glob("predictions-*.parquet"))
    log = pq.read_table(f)
    col = log.column("f_card_txn_count_24h")
    log = log.set_column(
        log.schema.get_field_index("f_card_txn_count_24h"), "f_card_txn_count_24h", pc.add(col, 1.0)
    )
    pq.write_table(log, f)
    failed = _skewless(
        "--data-dir", str(bad), "verify", "--events", str(out / "events.parquet"),
        "--registry", str(out / "registry"),
    )  # fmt: skip
    assert failed.returncode == 1
    body = json.loads(failed.stdout)
    assert body["predictions"]["features"]["card_txn_count_24h"]["mismatches"] == log.num_rows
    assert body["predictions"]["features"]["card_amount_sum_24h"]["mismatches"] == 0
    assert body["predictions"]["max_score_delta"] > 0


def _printed(stdout: str, subcommand: str) -> list[str]:
    """The command the demo printed for ``subcommand``, as argv (comment cut)."""
    [line] = [x for x in stdout.splitlines() if f" {subcommand} " in f"{x} " and "--data-dir" in x]
    return shlex.split(line.split("#")[0])


def test_the_data_dir_moves_everything_and_the_printed_commands_work(
    demo: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    """`skewless --data-dir out/demo demo`, then `--data-dir out/demo` finds the demo's
    registry (models list, serve's alias), store and prediction log (verify): the demo's
    closing commands, run exactly as printed from the same working directory."""
    out, done = demo
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (out / "registry" / "aliases" / "production").is_file()
    assert not (out / "demo").exists()  # the data dir is the demo's folder, not its parent
    for sub in ("serve", "score", "verify", "models"):
        assert _printed(done.stdout, sub)[1:3] == ["--data-dir", "out/demo"]

    listed = subprocess.run(
        _printed(done.stdout, "models"), cwd=out.parent.parent, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert "v0001" in listed.stdout and "production" in listed.stdout, listed.stdout

    verified = subprocess.run(
        _printed(done.stdout, "verify"), cwd=out.parent.parent, capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stdout[-2000:] + verified.stderr[-2000:]
    body = json.loads(verified.stdout)
    assert body["mismatches"] == 0 and body["predictions"]["rows"] > 0
    assert body["predictions"]["max_score_delta"] == 0.0  # no skew, no score impact
    assert body["predictions"]["max_logged_score_error"] < 1e-6  # the log is what was served


def test_the_demo_refuses_a_folder_holding_other_data(tmp_path: Path) -> None:
    (tmp_path / "registry").mkdir()
    done = _skewless("--data-dir", str(tmp_path), "demo", "--events", "1000")
    assert done.returncode == 2
    assert "already holds data the demo did not write" in done.stderr
    assert (tmp_path / "registry").is_dir()
