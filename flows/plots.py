"""Training pictures, written as PNG next to the model: ROC, precision-recall,
feature importance and calibration.

matplotlib is imported here only (Agg backend, no display), so the rest of training and
the CLI do not pay for it. PNG metadata carries no timestamp, so the same inputs give
the same bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from flows.metrics import pr_curve, roc_curve

#: file names, in the order :func:`write_plots` writes them
PLOTS = ("roc.png", "pr.png", "feature_importance.png", "calibration.png")


def write_plots(
    out: Path,
    y: np.ndarray,
    p: np.ndarray,
    importance: Mapping[str, float],
    calibration: Sequence[Mapping[str, Any]],
    threshold: float,
    baseline: tuple[np.ndarray, str] | None = None,
) -> list[Path]:
    """Write :data:`PLOTS` into ``out``; ``baseline`` (scores, label) adds a second curve
    (the request-time-only ablation) to ROC and PR."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    meta = {"Software": None}  # no version string, no date: reproducible bytes
    paths = [out / name for name in PLOTS]
    curves = [(p, "all features")] + ([baseline] if baseline is not None else [])

    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    for scores, label in curves:
        fpr, tpr, _ = roc_curve(y, scores)
        ax.plot(fpr, tpr, label=label, linewidth=1.2)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=0.8)
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate", title="ROC (test)")
    ax.legend(loc="lower right")
    fig.subplots_adjust(left=0.15, bottom=0.11, right=0.96, top=0.93)
    fig.savefig(paths[0], metadata=meta)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    for scores, label in curves:
        precision, recall, _ = pr_curve(y, scores)
        ax.step(recall, precision, where="post", label=label, linewidth=1.2)
    ax.axhline(float(np.mean(y)), color="grey", linestyle=":", linewidth=0.8, label="base rate")
    ax.set(
        xlabel="recall",
        ylabel="precision",
        title="Precision-recall (test)",
        xlim=(0, 1),
        ylim=(0, 1.02),
    )
    ax.legend(loc="upper right")
    fig.subplots_adjust(left=0.15, bottom=0.11, right=0.96, top=0.93)
    fig.savefig(paths[1], metadata=meta)
    plt.close(fig)

    ranked = sorted(importance.items(), key=lambda kv: (kv[1], kv[0]))
    fig, ax = plt.subplots(figsize=(6, 0.3 * max(len(ranked), 1) + 1.2), dpi=100)
    ax.barh([k for k, _ in ranked], [v for _, v in ranked], color="tab:blue")
    ax.set(xlabel="total gain (share)", title="Feature importance")
    fig.subplots_adjust(left=0.38, right=0.96)
    fig.savefig(paths[2], metadata=meta)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    mean_p = [b["mean_p"] for b in calibration]
    rate = [b["rate"] for b in calibration]
    top = min(1.08 * max([*mean_p, *rate, 0.01]), 1.0)
    ax.plot([0, top], [0, top], color="grey", linestyle=":", linewidth=0.8, label="perfect")
    ax.plot(mean_p, rate, marker="o", linewidth=1.2, label="model (bins of equal expected fraud)")
    labelled = -1.0
    for x, y, b in zip(mean_p, rate, calibration, strict=True):
        if x - labelled < 0.08 * top:  # crowded: metadata.json lists every bin
            continue
        labelled = x
        ax.annotate(f"n={int(b['count']):,}", (x, y), textcoords="offset points",
                    xytext=(5, -11), fontsize=7, color="#333")  # fmt: skip
    if threshold <= top:
        ax.axvline(threshold, color="tab:red", linewidth=0.8, label=f"threshold {threshold:.3g}")
    ax.set(
        xlabel="mean predicted probability (per bin)",
        ylabel="observed fraud rate (per bin)",
        title="Reliability (test); n = rows per bin",
        xlim=(0, top),
        ylim=(0, top),
    )
    ax.legend(loc="upper left", fontsize=8)
    fig.subplots_adjust(left=0.15, bottom=0.11, right=0.96, top=0.93)
    fig.savefig(paths[3], metadata=meta)
    plt.close(fig)
    return paths
