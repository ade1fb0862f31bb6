"""Progress of the long jobs: a bar on a terminal, one log line per stage otherwise.

On a terminal (stderr is a TTY) a job shows a tqdm bar. In a log (stderr redirected: CI,
``nohup``, a service manager) bars are noise, so each stage writes one line when it ends,
with its time (``backfill: features in 2.1 s``), and a counted stage (events, boosting
rounds) also a line at most every ``every`` seconds while it runs; the log then says where
the time went.

>>> import logging, sys
>>> shown = logging.StreamHandler(sys.stdout); log.addHandler(shown); log.setLevel("INFO")
>>> stages = Stages("backfill", ["read", "features"], tty=False)
>>> stages.done("read", 0.25)
backfill: read in 0.2 s
>>> with Count("train", 3, "rounds", tty=False) as rounds:
...     rounds.update(3)  # doctest: +ELLIPSIS
train: 3 rounds in ... s (... rounds/s)
>>> log.removeHandler(shown)
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from tqdm import tqdm

log = logging.getLogger("skewless.progress")


def on_terminal() -> bool:
    """Bars only when a person watches: stderr is a terminal."""
    return sys.stderr.isatty()


class Stages:
    """A job made of named stages run one after the other: a bar over the stages on a
    terminal, a line per finished stage in a log."""

    def __init__(self, job: str, names: Sequence[str], tty: bool | None = None) -> None:
        self.job = job
        self.tty = on_terminal() if tty is None else tty
        self.bar = tqdm(total=len(names), desc=job, unit="stage", disable=not self.tty)
        self.clock = time.perf_counter()

    def lap(self, name: str, detail: str = "") -> float:
        """Stage ``name`` ended now; it began when the previous one ended. Its seconds."""
        now = time.perf_counter()
        seconds, self.clock = now - self.clock, now
        self.done(name, seconds, detail)
        return seconds

    def done(self, name: str, seconds: float, detail: str = "") -> None:
        extra = f" ({detail})" if detail else ""
        if self.tty:
            self.bar.set_postfix_str(f"{name} {seconds:.1f} s{extra}", refresh=False)
            self.bar.update(1)
        else:
            log.info("%s: %s in %.1f s%s", self.job, name, seconds, extra)

    def close(self) -> None:
        self.bar.close()


class Count:
    """A counted stage (events, rows, boosting rounds), as a context manager: a bar on a
    terminal; in a log a line at most every ``every`` seconds and one at the end with the
    count, the time and the rate. ``total`` may be None (unknown, e.g. a topic's end)."""

    def __init__(
        self,
        job: str,
        total: int | None,
        unit: str,
        tty: bool | None = None,
        every: float = 30.0,
    ) -> None:
        self.job, self.total, self.unit, self.every = job, total, unit, every
        self.tty = on_terminal() if tty is None else tty
        self.bar = tqdm(total=total, desc=job, unit=f" {unit}", disable=not self.tty)
        self.n = 0
        self.began = self.last = time.perf_counter()
        self.closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.tty:
            self.bar.update(n)
            return
        now = time.perf_counter()
        if now - self.last >= self.every:
            self.last = now
            of = f"/{self.total:,}" if self.total else ""
            log.info("%s: %s%s %s so far (%.0f s)", self.job, f"{self.n:,}", of, self.unit,
                     now - self.began)  # fmt: skip

    def set(self, n: int) -> None:
        """Move to an absolute count (for a poller reading a counter)."""
        if n > self.n:
            self.update(n - self.n)

    def close(self, detail: str = "") -> None:
        if self.closed:
            return
        self.closed = True
        self.bar.close()
        if not self.tty:
            seconds = time.perf_counter() - self.began
            rate = self.n / seconds if seconds > 0 else 0.0
            extra = f", {detail}" if detail else ""
            log.info("%s: %s %s in %.1f s (%s %s/s%s)", self.job, f"{self.n:,}", self.unit,
                     seconds, f"{rate:,.0f}", self.unit, extra)  # fmt: skip

    def __enter__(self) -> Count:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def xgboost_rounds(rounds: Count) -> Any:
    """An XGBoost training callback counting boosting rounds into ``rounds``."""
    import xgboost as xgb

    class Rounds(xgb.callback.TrainingCallback):
        def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
            rounds.update(1)
            return False  # never stops training

    return Rounds()
