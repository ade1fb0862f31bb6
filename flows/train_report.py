"""What a training run prints: the splits, the test metrics and the ablation, compactly.

>>> y = np.array([0, 0, 1, 1])
>>> ab = ablation(y, np.array([0.9, 0.1, 0.2, 0.5]), np.array([0.1, 0.2, 0.7, 0.9]), ["amount"])
>>> ab["request_only"], ab["all_features"]
({'roc_auc': 0.5, 'pr_auc': 0.5833333333333333}, {'roc_auc': 1.0, 'pr_auc': 1.0})
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from flows.metrics import average_precision, roc_auc
from flows.registry import describe


def ablation(
    y: np.ndarray, p_request: np.ndarray, p_all: np.ndarray, request_names: Sequence[str]
) -> dict[str, Any]:
    """Test ranking quality with request-time features only versus all features: what
    the streaming window features are worth."""
    req = {"roc_auc": roc_auc(y, p_request), "pr_auc": average_precision(y, p_request)}
    full = {"roc_auc": roc_auc(y, p_all), "pr_auc": average_precision(y, p_all)}
    return {
        "request_features": list(request_names),
        "request_only": req,
        "all_features": full,
        "pr_auc_lift": full["pr_auc"] - req["pr_auc"],
        "roc_auc_lift": full["roc_auc"] - req["roc_auc"],
    }


def report(meta: dict[str, Any], alias: str | None) -> str:
    """A compact plain-text summary of one registered training run."""
    t = meta["metrics"]["test"]
    v = meta["metrics"]["validation"]
    ab = meta["ablation"]
    where = f"{meta['version']}" + (f" -> alias {alias!r}" if alias else " (not promoted)")
    lines = [
        f"trained {where}: best iteration {meta['best_iteration']}, {meta['train_seconds']:.1f} s",
        f"  features {meta['fingerprint']}  data sha256 {meta['data_fingerprint'][:16]}"
        f"  seed {meta['seed']}",
        "",
        f"  {'split':<6} {'rows':>10} {'fraud':>7}  {'from':<29} {'to':<29}",
    ]
    for name, s in meta["splits"].items():
        lines.append(
            f"  {name:<6} {s['rows']:>10,} {s['positives']:>7,}  {s['start']:<29} {s['end']:<29}"
        )
    budget = meta["threshold_rule"]["fpr_budget"]
    lines += [
        "",
        f"  threshold {meta['threshold']:.6f}  (p >= t; validation FPR budget {budget:.2%})",
        f"  {'metric':<16} {'test':>9} {'valid':>9}",
    ]
    rows = [
        ("roc_auc", "roc_auc"), ("pr_auc", "pr_auc"), ("log_loss", "log_loss"), ("brier", "brier"),
        ("precision@t", "precision_at_threshold"), ("recall@t", "recall_at_threshold"),
        ("fpr@t", "fpr_at_threshold"),
    ]  # fmt: skip
    for label, key in rows:
        lines.append(f"  {label:<16} {t[key]:>9.4f} {v[key]:>9.4f}")
    lines.append(
        f"  {'calibration ece':<16} {t['calibration']['ece']:>9.5f} {v['calibration']['ece']:>9.5f}"
    )
    req, full = ab["request_only"], ab["all_features"]
    req_label = f"request-time only ({len(ab['request_features'])})"
    full_label = f"all features ({len(meta['feature_names'])})"
    lines += [
        "",
        f"  ablation (test)                    {'roc_auc':>8} {'pr_auc':>8}",
        f"  {req_label:<34} {req['roc_auc']:>8.4f} {req['pr_auc']:>8.4f}",
        f"  {full_label:<34} {full['roc_auc']:>8.4f} {full['pr_auc']:>8.4f}",
        f"  {'lift':<34} {ab['roc_auc_lift']:>+8.4f} {ab['pr_auc_lift']:>+8.4f}",
        "",
        f"  onnx parity: max |p_onnx - p_xgb| = {meta['parity_max_abs_diff']:.2e} on test"
        f" (tolerance {meta['parity_tolerance']:.0e})",
    ]
    return "\n".join(lines)


def models_table(root: Path, running_fingerprint: str) -> str:
    """``skewless models list``: one line per version, newest last."""
    rows = describe(root)
    if not rows:
        return f"no model versions in {root} (train one with `skewless train`)"
    lines = [
        f"{'version':<8} {'aliases':<14} {'created':<26} {'test pr_auc':>11} {'roc_auc':>8}"
        f" {'threshold':>10}  status"
    ]
    for r in rows:
        meta = r["metadata"]
        test = meta.get("metrics", {}).get("test", {})
        status = r["error"] or "ok"
        if not r["error"] and meta.get("fingerprint") != running_fingerprint:
            status = f"features {meta.get('fingerprint')} != running {running_fingerprint}"
        lines.append(
            f"{r['version']:<8} {','.join(r['aliases']) or '-':<14}"
            f" {meta.get('created_at', '-'):<26} "
            f"{test.get('pr_auc', float('nan')):>11.4f} {test.get('roc_auc', float('nan')):>8.4f} "
            f"{meta.get('threshold', float('nan')):>10.6f}  {status}"
        )
    return "\n".join(lines)
