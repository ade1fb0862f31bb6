"""The demo report from small synthetic inputs (no demo run): tables instead of a JSON
dump, the tolerances in DESIGN.md's words, step timings, freshness quantiles, a
reliability diagram on bins that spread rare fraud. tests/skewless/test_report_browser.py
renders the same page in Chromium."""

from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from features.reference import REFERENCE, REQUEST_FEATURES
from flows.metrics import summary, threshold_at_fpr
from flows.plots import write_plots
from flows.train_report import ablation
from skewless.demo_report import TOLERANCE, write_html
from skewless.demo_report_tables import bucket_quantile

ROOT = Path(__file__).resolve().parents[2]

#: the long step names the demo prints (they must wrap, not overflow)
STEPS = {
    "simulate 200,000 events": 3.4,
    "backfill the history": 1.2,
    "train (time-based split, ablation, ONNX parity)": 20.7,
    "feast materialize the backfill's end state (bootstrap)": 4.1,
    "stream the latest day (7,319 events) from a Parquet replay through Bytewax": 6.8,
    "skew check: online state vs backfill over all events": 9.9,
    "serve over gRPC and score the last hour's events": 6.0,
    "skew check: features the server used vs the backfill at the same event time": 0.4,
}


def make_inputs(tmp: Path) -> tuple[dict[str, Any], list[float], Path]:
    """A report dict shaped like the demo's, scoring latencies and a model folder with
    real training pictures and metrics (flows.plots, flows.metrics) on calibrated,
    rare-fraud scores."""
    rng = np.random.default_rng(0)
    n = 20_000
    p = rng.beta(0.15, 10, n).astype(np.float32).astype(np.float64)
    y = (rng.random(n) < p).astype(np.float64)
    p_req = np.clip(p * rng.lognormal(0, 1.5, n), 0, 1)
    threshold = threshold_at_fpr(y, p, 0.01)
    names = list(REFERENCE.feature_names)
    importance = {name: (i + 1) / 120 for i, name in enumerate(names)}
    test = summary(y, p, threshold)
    model_dir = tmp / "registry" / "versions" / "v0001"
    model_dir.mkdir(parents=True)
    write_plots(model_dir, y, p, importance, test["calibration"]["bins"], threshold,
                (p_req, "request-time only"))  # fmt: skip
    split = {"rows": n, "positives": int(y.sum()), "start": "2026-01-25T12:31:27.446+00:00",
             "end": "2026-01-29T23:59:45.792+00:00"}  # fmt: skip
    meta = {
        "version": "v0001", "threshold": threshold, "feature_names": names,
        "metrics": {"test": test, "validation": summary(y[::-1], p[::-1], threshold)},
        "ablation": ablation(y, p_req, p, list(REQUEST_FEATURES)),
        "splits": {"train": split, "valid": split, "test": split},
    }  # fmt: skip
    (model_dir / "metadata.json").write_text(json.dumps(meta))
    report: dict[str, Any] = {
        "out": str(tmp),
        "events": {"history": 192_681, "latest_day": 7_319},
        "backfill": {"rejected": 0, "duplicates": 0, "late": 0},
        "model": {"version": "v0001", "roc_auc": test["roc_auc"], "pr_auc": test["pr_auc"],
                  "threshold": threshold},
        "stream": {"events": 7_319, "seconds": 6.8, "events_per_s": 1_081, "source": "replay",
                   "freshness": {"rows": 4_000, "p50_ms_at_most": 50.0, "p99_ms_at_most": 250.0,
                                 "buckets": [[0.005, 0], [0.01, 100], [0.025, 1000],
                                             [0.05, 2000], [0.1, 3900], [0.25, 3980],
                                             [0.5, 4000]]}},
        "skew_online_state": {"compared": 41_976, "mismatches": 0},
        "scoring": {"requests": 166, "p50_ms": 0.785, "p99_ms": 1.168},
        "skew_scored": {"compared": 2_490, "mismatches": 0,
                        "per_feature": dict.fromkeys(names, 0)},
        "steps": STEPS,
        "total_seconds": round(sum(STEPS.values()), 1),
    }  # fmt: skip
    latencies = list(rng.gamma(9.0, 0.09, 166))
    return report, latencies, model_dir


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> str:
    tmp = tmp_path_factory.mktemp("report")
    report, latencies, model_dir = make_inputs(tmp)
    return write_html(tmp, report, latencies, model_dir).read_text()


def _design_md() -> str | None:
    """The shared design contract beside the checkout (or beside the worktrees)."""
    for base in (ROOT.parent, ROOT.parent.parent):
        path = base / "shared" / "DESIGN.md"
        if path.exists():
            return path.read_text()
    return None


def test_tolerance_is_design_md_word_for_word(page: str) -> None:
    """The page quotes ``TOLERANCE``; where the design contract sits beside the checkout
    (not in every CI clone), ``TOLERANCE`` is checked against it word for word too."""
    design = _design_md()
    if design is not None:
        assert TOLERANCE in " ".join(design.split())
    assert f"<blockquote>{TOLERANCE}</blockquote>" in page
    assert "last bit" in page and "to the last bit" not in page
    assert "1 ulp" in page


def test_numbers_are_tables_not_a_json_dump(page: str) -> None:
    assert "<pre" not in page and '"skew_scored"' not in page
    captions = re.findall(r"<caption>(.*?)</caption>", page)
    assert captions == [
        "Skew checks",
        "Model v0001 (flag when p &ge; 0.1676)",
        "What the window features are worth (test)",
        "Time-based splits",
        "Stream (Bytewax)",
        "Scoring over gRPC (one in flight)",
        "Events",
        "Step timings (wall clock)",
        "Skew per feature (scored requests)",
        "Reliability bins (test)",
    ]
    assert '<td class="n">41,976</td><td class="n">0</td>' in page  # online-state skew row


def test_step_timings_and_freshness_quantiles(page: str) -> None:
    for name, seconds in STEPS.items():
        assert f'<td>{html.escape(name)}</td><td class="n">{seconds:,.4g}</td>' in page
    assert f'<td><b>all</b></td><td class="n">{sum(STEPS.values()):,.4g}</td>' in page
    # p50: rank 2000 = the top of the 25-50 ms bucket; p99: rank 3960 in 100-250 ms
    assert "<td>freshness p50</td><td>&asymp; 50 ms (in the bucket 25 ms to 50 ms)</td>" in page
    assert "<td>freshness p99</td><td>&asymp; 212 ms (in the bucket 100 ms to 250 ms)</td>" in page


def test_reliability_bins_spread_the_fraud(page: str) -> None:
    table = page[page.index("<caption>Reliability bins (test)") :]
    rows = re.findall(r'<tr><td class="n">(\d+)</td><td class="n">([\d,]+)</td>'
                      r'<td class="n">([\d,]+)</td>', table)  # fmt: skip
    assert [int(b) for b, _, _ in rows] == list(range(1, 11))
    frauds = [int(f.replace(",", "")) for _, _, f in rows]
    assert min(frauds) > 0  # equal-count deciles would leave most bins without fraud
    assert "the same expected number of frauds" in page


def test_bucket_quantile_edges() -> None:
    assert all(math.isnan(v) for v in bucket_quantile([[0.1, 0]], 0, 0.5))
    # beyond the last finite bound: the bound, and an open top
    assert bucket_quantile([[0.1, 5], [0.5, 5]], 10, 0.99) == (0.5, 0.5, math.inf)
