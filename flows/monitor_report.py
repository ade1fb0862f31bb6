"""The monitor's HTML report: PNG plots over time beside the alerts table.

Plots (matplotlib, Agg, no display needed): PSI per feature with the warn and alert
lines, the score distribution per window (median, p90, p99 and its PSI), the unseen
share of categorical values, and quality per window (precision, recall, PR-AUC against
the test PR-AUC floor).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np

PLOTS = ("psi.png", "score.png", "unseen.png", "quality.png")


def _times(rows: list[dict[str, Any]], key: str = "start") -> np.ndarray:
    # UTC: the ISO strings end in +00:00, numpy wants them naive
    return np.array([r[key][:19] for r in rows], dtype="datetime64[s]")


def _series(rows: list[dict[str, Any]], *path: str) -> np.ndarray:
    out = []
    for r in rows:
        v: Any = r
        for key in path:
            v = v.get(key) if isinstance(v, dict) else None
        out.append(np.nan if v is None else float(v))
    return np.array(out, dtype=np.float64)


def write_plots(out: Path, result: dict[str, Any]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    th = result["config"]["thresholds"]
    # windows too small to judge are left out: their PSI is sampling noise
    windows = [w for w in result["windows"] if w["judged"]]
    t = _times(windows)
    paths = []

    def save(fig: Any, name: str) -> None:
        fig.autofmt_xdate()
        fig.tight_layout()
        fig.savefig(out / name, dpi=90, metadata={"Software": None})
        plt.close(fig)
        paths.append(out / name)

    fig, ax = plt.subplots(figsize=(11, 5))
    names = list(windows[0]["psi"]) if windows else []
    worst = sorted(names, key=lambda n: -np.nan_to_num(np.nanmax(_series(windows, "psi", n))))
    for n in names:
        ax.plot(t, _series(windows, "psi", n), ".-", lw=1.2 if n in worst[:5] else 0.6, ms=2,
                label=n if n in worst[:8] else None)  # fmt: skip
    ax.plot(t, _series(windows, "score", "psi"), "k--", lw=1.2, label="score")
    ax.axhline(th["psi_warn"], color="orange", ls=":", label="warn")
    ax.axhline(th["psi_alert"], color="red", ls=":", label="alert")
    ax.set(title="PSI per feature, windows with enough rows (the 8 highest named)", ylabel="PSI")
    ax.legend(fontsize=7, ncol=2)
    save(fig, "psi.png")

    fig, (a1, a2) = plt.subplots(2, 1, figsize=(11, 6), sharex=True)
    for q in ("p50", "p90", "p99"):
        a1.plot(t, _series(windows, "score", q), lw=1, label=q)
    a1.plot(t, _series(windows, "score", "mean"), "k--", lw=1, label="mean")
    a1.set(title="score distribution per window", ylabel="score", yscale="log")
    a1.legend(fontsize=7)
    a2.plot(t, _series(windows, "score", "psi"), lw=1, label="score PSI")
    a2.plot(t, _series(windows, "score", "ks"), lw=1, label="score KS")
    a2.axhline(th["psi_alert"], color="red", ls=":")
    a2.legend(fontsize=7)
    save(fig, "score.png")

    fig, ax = plt.subplots(figsize=(11, 3.5))
    for c in windows[0]["unseen"] if windows else []:
        ax.plot(t, _series(windows, "unseen", c), lw=1, label=c)
    ax.axhline(th["unseen_alert"], color="red", ls=":", label="alert")
    ax.set(title="share of categorical values never seen in training", ylabel="share")
    ax.legend(fontsize=7)
    save(fig, "unseen.png")

    fig, ax = plt.subplots(figsize=(11, 3.5))
    q = result.get("quality", [])
    if q:
        tq = _times(q, "end")  # a rolling window is drawn where it ends
        for k in ("precision", "recall", "pr_auc"):
            ax.plot(tq, _series(q, k), marker=".", lw=1, label=k)
        ax.axhline(result["quality_total"]["alert_below"], color="red", ls=":", label="alert")
        ax.set_ylim(0, 1.05)
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no labelled predictions past the label horizon", ha="center")
    ax.set(title="quality of due predictions, rolling windows by their end (labels known at as_of)")
    save(fig, "quality.png")
    return paths


def write_report(out: Path, result: dict[str, Any]) -> Path:
    """``report.html`` (and the PNGs) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    write_plots(out, result)
    s = result["summary"]
    alerts = result["alerts"]
    rows = "".join(
        f"<tr><td>{a['start'][:16]} to {a['end'][:16]}</td><td>{a['level']}</td>"
        f"<td>{a['kind']}</td><td>{html.escape(a['subject'])}</td><td>{a['value']:.4g}</td>"
        f"<td>{a['threshold']:.4g}</td></tr>"
        for a in alerts[:500]
    )
    more = f"<p>... and {len(alerts) - 500} more in monitor.json</p>" if len(alerts) > 500 else ""
    qt = result.get("quality_total")
    quality = (
        f"<p>Due predictions: {qt['rows']:,} ({qt['positives']:,} positive), PR-AUC "
        f"{_fmt(qt['pr_auc'])} (test {qt['test_pr_auc']:.4f}, alert below "
        f"{qt['alert_below']:.4f}), precision {_fmt(qt['precision'])}, recall "
        f"{_fmt(qt['recall'])}, calibration error {_fmt(qt['calibration_error'])}.</p>"
        if qt
        else "<p>No labels given.</p>"
    )
    imgs = "".join(f'<p><img src="{name}" alt="{name}"></p>' for name in PLOTS)
    page = f"""<!doctype html><html><head><meta charset="utf-8">
<title>skewless monitor: {html.escape(result["version"])}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:auto}}
td,th{{padding:2px 8px;text-align:left}}</style></head><body>
<h1>skewless monitor: model {html.escape(result["version"])}</h1>
<p>{result["rows"]:,} predictions in {s["windows"]} windows ({s["judged"]} with enough rows
to judge); as of {result["as_of"]}. <b>{s["alerts"]} alerts, {s["warnings"]} warnings.</b></p>
{quality}{imgs}
<h2>Alerts and warnings</h2><table><tr><th>window</th><th>level</th><th>kind</th>
<th>subject</th><th>value</th><th>threshold</th></tr>{rows}</table>{more}
</body></html>
"""
    path = out / "report.html"
    path.write_text(page)
    return path


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"
