"""The demo's HTML report: one self-contained page (pictures inlined)."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{alt}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _latency_png(latencies: list[float]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    ax.hist(latencies, bins=50, color="#3b6ea5")
    ax.set_xlabel("Score round trip (ms), client in another process")
    ax.set_ylabel("requests")
    ax.set_title("gRPC scoring latency")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def write_html(out: Path, report: dict[str, Any], latencies: list[float], model_dir: Path) -> Path:
    pictures = [_img(_latency_png(latencies), "latency")]
    for name in ("roc.png", "pr.png", "calibration.png", "feature_importance.png"):
        p = model_dir / name
        if p.exists():
            pictures.append(_img(p.read_bytes(), name))
    skew = report["skew_scored"]["per_feature"]
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>" for k, v in skew.items())
    css = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
        "img{margin:4px;border:1px solid #ddd}td,th{padding:2px 10px;text-align:left}"
        "pre{background:#f6f6f6;padding:1em}"
    )
    online, scored = report["skew_online_state"], report["skew_scored"]
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>skewless demo</title>
<style>{css}</style></head><body>
<h1>skewless demo</h1>
<p>Online state vs backfill: <b>{online["mismatches"]}</b> mismatches in
{online["compared"]:,} values. Features used by <code>Score</code> vs backfill:
<b>{scored["mismatches"]}</b> mismatches in {scored["compared"]:,} values.</p>
<h2>Pictures</h2>{"".join(pictures)}
<h2>Skew per feature (scored requests)</h2>
<table><tr><th>feature</th><th>mismatches</th></tr>{rows}</table>
<h2>Everything</h2><pre>{html.escape(json.dumps(report, indent=2))}</pre></body></html>"""
    path = out / "report.html"
    path.write_text(page)
    return path
