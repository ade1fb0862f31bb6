"""The demo report's tables: HTML tables of the model, the run and the step timings, and
the two small computations behind them (step durations, histogram quantiles).

Numbers are right-aligned and formatted here; text cells arrive as HTML, escaped by the
caller where they are data.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

#: top-level keys of the demo's report that have their own place in the page
KNOWN = {
    "out", "events", "backfill", "backfill_seconds", "model", "train_seconds", "stream",
    "skew_online_state", "scoring", "skew_scored", "steps", "total_seconds",
}  # fmt: skip


def bucket_quantile(buckets: Sequence[Sequence[float]], rows: int, q: float) -> tuple[float, ...]:
    """``(estimate, low, high)`` of quantile ``q`` from cumulative histogram buckets
    ``[[upper_bound, count_at_most], ...]`` (finite bounds; ``rows`` in all): linear within
    the bucket that holds it, as Prometheus' ``histogram_quantile``. ``high`` is inf past
    the last bound; NaNs when nothing was observed.

    >>> bucket_quantile([[0.1, 0], [0.5, 50], [1.0, 100]], 100, 0.5)
    (0.5, 0.1, 0.5)
    >>> bucket_quantile([[0.1, 0], [0.5, 50], [1.0, 100]], 100, 0.99)
    (0.99, 0.5, 1.0)
    """
    if rows <= 0:
        return (math.nan, math.nan, math.nan)
    rank, lower, below = q * rows, 0.0, 0.0
    for le, cum in buckets:
        if cum >= rank:
            inside = cum - below
            frac = (rank - below) / inside if inside else 1.0
            return (lower + (le - lower) * frac, lower, le)
        lower, below = le, cum
    return (lower, lower, math.inf)


def cell(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return f"<td>{'-' if v is None else v}</td>"
    if isinstance(v, int):
        return f'<td class="n">{v:,}</td>'
    if isinstance(v, float):
        text = "-" if math.isnan(v) else f"{v:,.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
        return f'<td class="n">{text}</td>'
    return f"<td>{v}</td>"  # already HTML (escaped by the caller where it is data)


def table(caption: str, head: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    ths = "".join(f'<th class="{"n" if i else ""}">{h}</th>' for i, h in enumerate(head))
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><caption>{caption}</caption><tr>{ths}</tr>{body}</table>"


def ms(seconds: float) -> str:
    return (
        "-"
        if math.isnan(seconds)
        else "&gt; 30 s"
        if math.isinf(seconds)
        else (f"{seconds * 1000:,.0f} ms")
    )


def model_tables(report: Mapping[str, Any], meta: Mapping[str, Any]) -> list[str]:
    model = report.get("model", {})
    test = meta.get("metrics", {}).get("test", {})
    valid = meta.get("metrics", {}).get("validation", {})
    keys = [
        ("rows", "rows"),
        ("frauds", "positives"),
        ("ROC-AUC", "roc_auc"),
        ("PR-AUC (average precision)", "pr_auc"),
        ("log loss", "log_loss"),
        ("Brier", "brier"),
        ("precision at the threshold", "precision_at_threshold"),
        ("recall at the threshold", "recall_at_threshold"),
        ("false-positive rate at the threshold", "fpr_at_threshold"),
    ]
    if test:
        rows: list[Sequence[Any]] = [(lbl, test.get(k), valid.get(k)) for lbl, k in keys]
        ece = (
            "calibration error (ECE, deciles)",
            test.get("calibration", {}).get("ece"),
            valid.get("calibration", {}).get("ece"),
        )
        rows.append(ece)
        head = ["metric", "test", "validation"]
    else:
        rows = [(k.replace("_", " "), v) for k, v in model.items() if k != "version"]
        head = ["metric", "test"]
    threshold = meta.get("threshold", model.get("threshold"))
    caption = f"Model {html.escape(str(model.get('version', meta.get('version', ''))))}"
    if threshold is not None:
        caption += f" (flag when p &ge; {threshold:.4g})"
    out = [table(caption, head, rows)]
    ab = meta.get("ablation")
    if ab:
        n_req, n_all = len(ab["request_features"]), len(meta.get("feature_names", []))
        out.append(
            table(
                "What the window features are worth (test)",
                ["features", "ROC-AUC", "PR-AUC"],
                [
                    (
                        f"request-time only ({n_req})",
                        ab["request_only"]["roc_auc"],
                        ab["request_only"]["pr_auc"],
                    ),
                    (f"all ({n_all})", ab["all_features"]["roc_auc"], ab["all_features"]["pr_auc"]),
                ],
            )
        )
    splits = meta.get("splits")
    if splits:
        out.append(
            table(
                "Time-based splits",
                ["split", "rows", "frauds", "from", "to"],
                [
                    (
                        name,
                        s["rows"],
                        s["positives"],
                        html.escape(s["start"][:16].replace("T", " ")),
                        html.escape(s["end"][:16].replace("T", " ")),
                    )
                    for name, s in splits.items()
                ],
            )
        )
    return out


def run_tables(report: Mapping[str, Any]) -> list[str]:
    st, sc = report.get("stream", {}), report.get("scoring", {})
    fresh = st.get("freshness", {})
    rows_seen = int(fresh.get("rows") or 0)
    stream_rows: list[Sequence[Any]] = [
        ("events", st.get("events")),
        ("seconds", st.get("seconds")),
        ("events per second", st.get("events_per_s")),
    ]
    if "buckets" in fresh:
        for q in (0.5, 0.99):
            est, lo, hi = bucket_quantile(fresh["buckets"], rows_seen, q)
            where = "" if math.isnan(est) else f" (in the bucket {ms(lo)} to {ms(hi)})"
            stream_rows.append((f"freshness p{int(q * 100)}", f"&asymp; {ms(est)}{where}"))
    else:
        for name in ("p50", "p99"):
            at_most = float(fresh.get(f"{name}_ms_at_most", math.nan))
            stream_rows.append((f"freshness {name}", f"&le; {ms(at_most / 1000)}"))
    stream_rows.append(("online rows written (freshness samples)", rows_seen))
    tables = [table("Stream (Bytewax)", ["", "value"], stream_rows)]
    tables.append(
        table(
            "Scoring over gRPC (one in flight)",
            ["", "value"],
            [
                ("requests", sc.get("requests")),
                ("p50 (ms)", sc.get("p50_ms")),
                ("p99 (ms)", sc.get("p99_ms")),
            ],
        )
    )
    ev, bf = report.get("events", {}), report.get("backfill", {})
    tables.append(
        table(
            "Events",
            ["", "value"],
            [
                ("history (backfill, training)", ev.get("history")),
                ("latest day (streamed)", ev.get("latest_day")),
                ("rejected by the backfill", bf.get("rejected")),
                ("duplicates", bf.get("duplicates")),
                ("late", bf.get("late")),
            ],
        )
    )
    steps = report.get("steps", {})
    if steps:
        total = report.get("total_seconds") or sum(steps.values())
        rows = [
            (html.escape(name), float(s), round(100.0 * s / total, 1) if total else math.nan)
            for name, s in steps.items()
        ]
        rows.append(("<b>all</b>", float(total), 100.0))
        tables.append(table("Step timings (wall clock)", ["step", "seconds", "%"], rows))
    return tables


def extra_tables(report: Mapping[str, Any]) -> list[str]:
    """A table for each section the page does not know yet (a later step of the demo,
    e.g. the maintain loop), nested keys flattened: nothing reported goes unseen.

    >>> page = extra_tables({"model": {}, "maintain": {"retrain": {"promoted": "v0002"}}})
    >>> len(page), "<caption>maintain</caption>" in page[0]
    (1, True)
    >>> page[0][page[0].index("</tr>") + 5 :]
    '<tr><td>retrain.promoted</td><td>v0002</td></tr></table>'
    """
    out = []
    for key, value in report.items():
        if key in KNOWN or not isinstance(value, Mapping):
            continue
        flat: dict[str, Any] = {}
        stack: list[tuple[str, Any]] = list(value.items())
        while stack:
            k, v = stack.pop(0)
            if isinstance(v, Mapping):
                stack.extend((f"{k}.{kk}", vv) for kk, vv in v.items())
            else:
                flat[k] = v if isinstance(v, int | float) else html.escape(str(v))
        out.append(table(html.escape(key), ["", "value"], list(flat.items())))
    return out
