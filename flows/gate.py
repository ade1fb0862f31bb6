"""The promotion gate: champion vs challenger on the same labelled out-of-time window.

A challenger is promoted only when every rule holds; each rule yields one reason, kept in
the decision record whether it passed or not:

* the window holds at least ``min_positives`` positives (fewer: PR-AUC is noise);
* challenger PR-AUC >= champion PR-AUC + ``min_gain`` (a negative ``min_gain`` is a
  tolerance: "not worse by more than");
* challenger expected calibration error <= champion's + ``ece_margin`` (a model that ranks
  better but whose scores mean less is not an improvement for thresholded decisions).

With no champion (nothing served yet) only the first rule applies.

>>> champ = {"pr_auc": 0.60, "calibration": {"ece": 0.010}, "positives": 40}
>>> chall = {"pr_auc": 0.72, "calibration": {"ece": 0.015}, "positives": 40}
>>> judge(Gate(), champ, chall).promote
True
>>> judge(Gate(), None, chall).passed[-1]
'champion: none is served; the challenger is the first model'
>>> v = judge(Gate(min_gain=0.2), champ, chall); v.promote, v.failed[0]
(False, 'pr_auc: challenger 0.7200 < champion 0.6000 + min_gain 0.2000')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Gate:
    min_gain: float = 0.0
    ece_margin: float = 0.02
    min_positives: int = 20

    def __post_init__(self) -> None:
        if not -1.0 <= self.min_gain <= 1.0:
            raise ValueError(f"min_gain: must be in [-1, 1], got {self.min_gain}")
        if self.ece_margin < 0:
            raise ValueError(f"ece_margin: must be >= 0, got {self.ece_margin}")
        if self.min_positives < 1:
            raise ValueError(f"min_positives: must be >= 1, got {self.min_positives}")


@dataclass
class Verdict:
    promote: bool
    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"promote": self.promote, "passed": self.passed, "failed": self.failed}


def judge(gate: Gate, champion: dict[str, Any] | None, challenger: dict[str, Any]) -> Verdict:
    """Apply ``gate`` to two :func:`flows.metrics.summary` results of the same window."""
    passed: list[str] = []
    failed: list[str] = []

    def rule(ok: bool, text: str) -> None:
        (passed if ok else failed).append(text)

    pos = int(challenger["positives"])
    rule(
        pos >= gate.min_positives,
        f"positives: {pos} in the window {'>=' if pos >= gate.min_positives else '<'} "
        f"min_positives {gate.min_positives}",
    )
    if champion is not None:
        a, b = float(challenger["pr_auc"]), float(champion["pr_auc"])
        ok = a >= b + gate.min_gain
        rule(
            ok,
            f"pr_auc: challenger {a:.4f} {'>=' if ok else '<'} champion {b:.4f} + "
            f"min_gain {gate.min_gain:.4f}",
        )
        ea, eb = float(challenger["calibration"]["ece"]), float(champion["calibration"]["ece"])
        ok = ea <= eb + gate.ece_margin
        rule(
            ok,
            f"ece: challenger {ea:.4f} {'<=' if ok else '>'} champion {eb:.4f} + "
            f"ece_margin {gate.ece_margin:.4f}",
        )
    else:
        passed.append("champion: none is served; the challenger is the first model")
    return Verdict(not failed, passed, failed)
