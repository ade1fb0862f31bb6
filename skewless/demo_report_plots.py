"""The demo report's own pictures: scoring latency and the reliability diagram.

Both are drawn square (5 x 5 in at 100 dpi, like the training plots they sit beside) so
that one row of the report's grid lines up. PNG metadata carries no date: same inputs,
same bytes.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

#: the size of every picture in the report's grid (inches at 100 dpi)
SIZE = (5.0, 5.0)


def wilson(positives: int, rows: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson interval of a rate: honest for the 0-fraud and few-fraud bins where the
    normal approximation gives negative or zero-width intervals.

    >>> [round(x, 4) for x in wilson(0, 100)]
    [0.0, 0.037]
    """
    if rows == 0:
        return 0.0, 1.0
    rate = positives / rows
    den = 1 + z * z / rows
    mid = (rate + z * z / (2 * rows)) / den
    half = z * math.sqrt(rate * (1 - rate) / rows + z * z / (4 * rows * rows)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def latency_png(latencies: Sequence[float]) -> bytes:
    """Histogram of the ``Score`` round trips (ms), p50 and p99 marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=SIZE, dpi=100)
    ax.hist(latencies, bins=50, color="#3b6ea5")
    if len(latencies):
        ordered = sorted(latencies)
        for q, style in ((0.5, "-"), (0.99, "--")):
            v = ordered[min(len(ordered) - 1, int(q * len(ordered)))]
            ax.axvline(v, color="tab:red", linestyle=style, linewidth=0.9,
                       label=f"p{int(q * 100)} {v:.2f} ms")  # fmt: skip
        ax.legend(loc="upper right")
    ax.set(xlabel="Score round trip (ms), client in another process", ylabel="requests",
           title="gRPC scoring latency")  # fmt: skip
    fig.subplots_adjust(left=0.15, bottom=0.11, right=0.96, top=0.93)
    return _png(fig)


def reliability_png(bins: Sequence[Mapping[str, Any]], threshold: float | None) -> bytes:
    """Reliability diagram on linear axes: mean predicted probability vs observed rate per
    bin, a 95% Wilson interval, the row count written beside each point, the diagonal."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=SIZE, dpi=100)
    xs = [float(b["mean_p"]) for b in bins]
    ys = [float(b["rate"]) for b in bins]
    ci = [wilson(int(b["positives"]), int(b["count"])) for b in bins]
    top = min(1.0, 1.08 * max([*xs, *(hi for _, hi in ci), 0.01]))
    ax.plot([0, top], [0, top], color="grey", linestyle=":", linewidth=0.9,
            label="perfectly calibrated")  # fmt: skip
    below = [max(0.0, y - lo) for y, (lo, _) in zip(ys, ci, strict=True)]
    above = [max(0.0, hi - y) for y, (_, hi) in zip(ys, ci, strict=True)]
    ax.errorbar(xs, ys, yerr=[below, above],
                marker="o", markersize=4, linewidth=1.2, capsize=2, color="tab:blue",
                label="model: observed rate, 95% interval")  # fmt: skip
    labelled = -1.0
    for x, y, b in zip(xs, ys, bins, strict=True):
        if x - labelled < 0.06 * top:  # crowded: the report's table lists every bin
            continue
        labelled = x
        right = x < 0.8 * top
        ax.annotate(f"n={int(b['count']):,}", (x, y), textcoords="offset points",
                    xytext=(6 if right else -8, -12), ha="left" if right else "right",
                    fontsize=8, color="#333")  # fmt: skip
    if threshold is not None and threshold <= top:
        ax.axvline(threshold, color="tab:red", linewidth=0.8, label=f"threshold {threshold:.3g}")
    pad = 0.02 * top
    ax.set(xlim=(-pad, top + pad), ylim=(-pad, top + pad),
           xlabel="mean predicted probability (per bin)", ylabel="observed fraud rate (per bin)",
           title="Reliability (test); n = rows per bin")  # fmt: skip
    ax.set_aspect("equal")
    ax.legend(loc="upper left", fontsize=8)
    fig.subplots_adjust(left=0.15, bottom=0.11, right=0.96, top=0.93)
    return _png(fig)
