"""`skewless demo` end to end (smaller), so the README's first command cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_the_whole_loop_with_zero_skew(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "skewless", "--data-dir", str(tmp_path), "demo", "--events", "40000", "--score", "200"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert report["skew_online_state"]["mismatches"] == 0
    assert report["skew_online_state"]["compared"] > 1000
    assert report["skew_scored"]["mismatches"] == 0
    assert report["skew_scored"]["compared"] == 15 * report["scoring"]["requests"]
    assert report["scoring"]["requests"] > 0
    assert report["model"]["roc_auc"] > 0.8
    assert (tmp_path / "demo" / "report.html").read_text().count("<img") >= 2
    assert "skew, features used by Score vs backfill: 0 mismatches" in done.stdout
