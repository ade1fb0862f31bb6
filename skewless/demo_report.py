"""The demo's HTML report: one self-contained page (pictures inlined), read in a browser.

Tables for the numbers, a grid of equal, square pictures, the tolerances in DESIGN.md's
words, step timings and stream freshness. ``report.json`` beside it has every number.
tests/skewless/test_report_browser.py renders it in headless Chromium.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from skewless.demo_report_plots import latency_png, reliability_png
from skewless.demo_report_tables import extra_tables, model_tables, run_tables, table

#: DESIGN.md, "Window semantics", word for word
TOLERANCE = (
    "float64 throughout. Count/min/max agree exactly between paths; sums/means/std agree "
    "to a relative 1e-9."
)

CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,sans-serif;max-width:1100px;margin:0 auto;padding:1em;
 line-height:1.4;color:#222}
h2{margin-top:1.6em;border-bottom:1px solid #ddd}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(300px,100%),1fr));gap:12px}
figure{margin:0;padding:6px;border:1px solid #ddd;min-width:0}
figure img{display:block;width:100%;max-width:100%;height:auto;aspect-ratio:1/1;
 object-fit:contain}
figcaption{font-size:.85em;color:#444;margin-top:4px}
.tables{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(340px,100%),1fr));
 gap:12px 28px;align-items:start}
table{border-collapse:collapse;width:100%}
caption{text-align:left;font-weight:bold;padding:4px 0}
td,th{padding:2px 8px;text-align:left;border-bottom:1px solid #eee;overflow-wrap:break-word}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.ok{color:#1a7f37}.bad{color:#c62828}
blockquote{margin:.5em 0;padding:.3em 1em;border-left:3px solid #bbb;background:#f7f7f7}
code{overflow-wrap:anywhere}
@media (max-width:480px){td,th{padding:2px 4px;font-size:.9em}}
"""


def _img(data: bytes, alt: str) -> str:
    src = f"data:image/png;base64,{base64.b64encode(data).decode()}"
    return f'<img alt="{html.escape(alt)}" src="{src}">'


def _figure(data: bytes, alt: str, caption: str) -> str:
    return f"<figure>{_img(data, alt)}<figcaption>{caption}</figcaption></figure>"


def _metadata(model_dir: Path) -> dict[str, Any]:
    p = model_dir / "metadata.json"
    return dict(json.loads(p.read_text())) if p.exists() else {}


def _reliability_bins(meta: Mapping[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """The diagram's bins and how they were cut (older models: equal-count bins only)."""
    test = meta.get("metrics", {}).get("test", {})
    if "reliability_diagram" in test:
        return list(test["reliability_diagram"]["bins"]), "expected"
    bins = [dict(b) for b in test.get("calibration", {}).get("bins", [])]
    for b in bins:
        b.setdefault("positives", round(b["rate"] * b["count"]))
    return bins, "count"


def _agreement(report: Mapping[str, Any]) -> str:
    online, scored = report["skew_online_state"], report["skew_scored"]
    bad = online["mismatches"] + scored["mismatches"]
    verdict = (
        '<p class="ok"><b>0 mismatches</b>: every value agrees with the backfill.</p>'
        if bad == 0
        else f'<p class="bad"><b>{bad:,} mismatches</b> with the backfill (see below).</p>'
    )
    rows = [
        (
            "online state vs backfill, at exact query times",
            online["compared"],
            online["mismatches"],
        ),
        (
            "features <code>Score</code> used vs backfill at the same event time",
            scored["compared"],
            scored["mismatches"],
        ),
    ]
    return (
        verdict
        + table("Skew checks", ["check", "values", "mismatches"], rows)
        + f"<p>Tolerances, as DESIGN.md words them:</p><blockquote>{TOLERANCE}</blockquote>"
        "<p>So counts, min and max are compared with <code>==</code>; every other value "
        "(sums, means, std, seconds since last, request-time features) within a relative "
        "1e-9, a std near 0 also within an absolute 1e-9 &times; the largest value (the "
        "scored check takes 1e7 as that scale). Not bit for bit: the backfill and the "
        "online path add the same events in another order, and sums and means differ in "
        "the last bit (1 ulp) now and then, within the tolerance.</p>"
    )


def _freshness_note(report: Mapping[str, Any]) -> str:
    mode = "Kafka" if report.get("stream", {}).get("source") == "kafka" else "replay"
    return (
        "<p>Freshness: the time from an event's arrival to its entity's row being readable "
        "in the online store (histogram <code>skewless_stream_freshness_seconds</code>, "
        "interpolated within its buckets). "
        + (
            "Here the events come from a Parquet replay read as fast as possible, so "
            "arrival is when the replay read the event's batch (5,000 events), and the "
            "figure is the time a whole batch spends in the flow, first-batch start-up "
            "included: a drain, not a steady rate. DESIGN.md's budget (p99 &le; 100 ms at "
            "5,000 events/s from Kafka) is measured by <code>skewless bench</code>.</p>"
            if mode == "replay"
            else "Here arrival is the Kafka message timestamp.</p>"
        )
    )


def write_html(
    out: Path, report: dict[str, Any], latencies: Sequence[float], model_dir: Path
) -> Path:
    """``out/report.html`` from the demo's ``report`` (as in ``report.json``: ``steps``
    holds seconds per step, ``stream.freshness`` its histogram), the scoring round trips
    and the trained model's folder (its ``metadata.json`` and pictures)."""
    meta = _metadata(model_dir)
    bins, strategy = _reliability_bins(meta)
    lat = sorted(latencies)
    figures = [
        _figure(
            latency_png(lat),
            "scoring latency histogram",
            f"{len(lat):,} <code>Score</code> calls, one at a time.",
        )
    ]
    captions = {
        "roc.png": "ROC on the test split, with the request-time-only model for contrast.",
        "pr.png": "Precision-recall on the test split; the dotted line is the fraud rate.",
    }
    for name, caption in captions.items():
        if (model_dir / name).exists():
            figures.append(_figure((model_dir / name).read_bytes(), name, caption))
    if bins:
        why = (
            "Fraud is rare, so the bins are quantiles of the score weighted by the score: "
            "each holds the same expected number of frauds (sum of predicted "
            "probabilities). Equal-count deciles would leave most bins with no fraud at "
            "all, piled at (0, 0); equal-width bins would put nearly every row in the first."
            if strategy == "expected"
            else "Bins of equal row counts (deciles of the score): with rare fraud most "
            "hold none and sit at (0, 0)."
        )
        figures.append(
            _figure(
                reliability_png(bins, meta.get("threshold")),
                "reliability diagram",
                "Reliability: per bin of test rows, mean predicted probability against the "
                "observed fraud rate (95% Wilson interval; n: the bin's rows where there is room, "
                f"the table lists them all); the dotted diagonal is perfect calibration. {why}",
            )
        )
    if (model_dir / "feature_importance.png").exists():
        figures.append(
            _figure(
                (model_dir / "feature_importance.png").read_bytes(),
                "feature importance",
                "Share of total gain per feature.",
            )
        )
    per_feature = report["skew_scored"]["per_feature"]
    skew_rows = [(html.escape(k), v) for k, v in per_feature.items()]
    tables = [*model_tables(report, meta), *run_tables(report), *extra_tables(report)]
    tables.append(table("Skew per feature (scored requests)", ["feature", "mismatches"], skew_rows))
    if bins:
        tables.append(
            table(
                "Reliability bins (test)",
                ["bin", "rows", "frauds", "mean p", "observed"],
                [
                    (i + 1, int(b["count"]), int(b["positives"]), b["mean_p"], b["rate"])
                    for i, b in enumerate(bins)
                ],
            )
        )
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>skewless demo</title><style>{CSS}</style></head><body>
<h1>skewless demo</h1>
<h2>Do the paths agree?</h2>{_agreement(report)}
<h2>Pictures</h2><div class="grid">{"".join(figures)}</div>
<h2>Numbers</h2>{_freshness_note(report)}<div class="tables">{"".join(tables)}</div>
<p>Every number: <a href="report.json">report.json</a> in this folder.</p>
</body></html>"""
    path = out / "report.html"
    path.write_text(page)
    return path
