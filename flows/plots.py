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
    top = min(max([*mean_p, *rate, threshold, 1e-3]), 1.0)
    ax.plot([0, top], [0, top], color="grey", linestyle=":", linewidth=0.8, label="perfect")
    ax.plot(mean_p, rate, marker="o", linewidth=1.2, label="model (equal-count bins)")
    ax.axvline(threshold, color="tab:red", linewidth=0.8, label=f"threshold {threshold:.3g}")
    ax.set(
        xlabel="mean predicted probability",
        ylabel="observed fraud rate",
        title="Calibration (test)",
    )
    # symlog: linear near 0 (empty bins), logarithmic over the decades a 1% base rate spans
    ax.set_xscale("symlog", linthresh=1e-4)
    ax.set_yscale("symlog", linthresh=1e-4)
    ax.set(xlim=(0, top * 1.5), ylim=(0, top * 1.5))
    ax.legend(loc="upper left")
    fig.subplots_adjust(left=0.15, bottom=0.11, right=0.96, top=0.93)
    fig.savefig(paths[3], metadata=meta)
    plt.close(fig)
    return paths
