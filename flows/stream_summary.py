"""What a stream run did, counted from the flow's metrics: progress while it runs and a
summary when it ends (``skewless stream --no-tail``, the demo).

Events the bootstrap already holds are *covered*, not late: replaying history into a store
that ``feast materialize`` bootstrapped is expected to meet them. An event an entity did
not apply (too late, or a duplicate id) whose time is at or before that entity's
bootstrap state (its newest event) is counted as covered and written nowhere; only the
others go to the late output. (An entity resumed from a recovery snapshot has no
bootstrap time at hand, so all its too-late events are late.)

>>> s = Summary(valid=10, dead=1, seconds=2.0, late={"card": 2}, covered={"card": 7},
...             duplicates={"card": 0}, rows=3)
>>> print(s.format(where_dead="dlq-*.jsonl", where_late="late-*.jsonl"))
stream: 11 events in 2.0 s: 10 valid, 1 dead letters (-> dlq-*.jsonl)
  card: 1 applied, 7 covered by the bootstrap (ignored), 2 late (-> late-*.jsonl), 0 duplicates
  online store: 3 entity rows written
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter

from flows.progress import Count
from flows.stream_io import METRICS

#: events an entity did not apply because its bootstrap state already holds them
COVERED = Counter(
    "skewless_stream_covered_by_bootstrap",
    "events at or before an entity's bootstrap state, not applied again (expected)",
    ["entity"],
)


def _by_label(counter: Any) -> dict[str, float]:
    """A labelled counter's totals by its (single) label value; '' for an unlabelled one."""
    out: dict[str, float] = {}
    for metric in counter.collect():
        for s in metric.samples:
            if s.name.endswith("_total"):
                key = next(iter(s.labels.values()), "")
                out[key] = out.get(key, 0.0) + s.value
    return out


@dataclass(frozen=True)
class Reading:
    """The counters at one moment (they are process-wide and only grow)."""

    valid: float
    dead: float
    late: dict[str, float]
    covered: dict[str, float]
    duplicates: dict[str, float]
    rows: float
    at: float

    @classmethod
    def now(cls) -> Reading:
        return cls(
            valid=_by_label(METRICS.events_in).get("", 0.0),
            dead=_by_label(METRICS.dead_letters).get("", 0.0),
            late=_by_label(METRICS.late),
            covered=_by_label(COVERED),
            duplicates=_by_label(METRICS.duplicates),
            rows=_by_label(METRICS.rows).get("", 0.0),
            at=time.perf_counter(),
        )


@dataclass(frozen=True)
class Summary:
    valid: int
    dead: int
    seconds: float
    late: dict[str, int] = field(default_factory=dict)
    covered: dict[str, int] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)
    rows: int = 0

    @classmethod
    def since(cls, before: Reading, entities: list[str]) -> Summary:
        after = Reading.now()

        def per(a: dict[str, float], b: dict[str, float]) -> dict[str, int]:
            return {e: int(a.get(e, 0.0) - b.get(e, 0.0)) for e in entities}

        return cls(
            valid=int(after.valid - before.valid),
            dead=int(after.dead - before.dead),
            seconds=after.at - before.at,
            late=per(after.late, before.late),
            covered=per(after.covered, before.covered),
            duplicates=per(after.duplicates, before.duplicates),
            rows=int(after.rows - before.rows),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "in": self.valid + self.dead, "valid": self.valid, "dead_letters": self.dead,
            "seconds": round(self.seconds, 1), "late": self.late, "covered": self.covered,
            "duplicates": self.duplicates, "rows_written": self.rows,
        }  # fmt: skip

    def format(self, where_dead: str, where_late: str) -> str:
        lines = [
            f"stream: {self.valid + self.dead:,} events in {self.seconds:.1f} s: "
            f"{self.valid:,} valid, {self.dead:,} dead letters (-> {where_dead})"
        ]
        for e in self.covered:
            covered, late, dups = self.covered[e], self.late.get(e, 0), self.duplicates.get(e, 0)
            applied = self.valid - covered - late - dups
            lines.append(
                f"  {e}: {applied:,} applied, {covered:,} covered by the bootstrap (ignored), "
                f"{late:,} late (-> {where_late}), {dups:,} duplicates"
            )
        lines.append(f"  online store: {self.rows:,} entity rows written")
        return "\n".join(lines)


@contextlib.contextmanager
def watch(total: int | None, tty: bool | None = None) -> Iterator[Reading]:
    """Progress of a run in this process, read from the metrics every half second: a bar
    on a terminal, a line every 30 s and one at the end in a log. Yields the reading
    taken before the run (for :meth:`Summary.since`)."""
    before = Reading.now()
    bar = Count("stream", total, "events", tty=tty)
    stop = threading.Event()

    def seen() -> int:
        r = Reading.now()
        return int(r.valid - before.valid + r.dead - before.dead)

    def poll() -> None:
        while not stop.wait(0.5):
            bar.set(seen())

    poller = threading.Thread(target=poll, name="stream-progress", daemon=True)
    poller.start()
    try:
        yield before
    finally:
        stop.set()
        poller.join()
        bar.set(seen())
        bar.close()


def replay_rows(path: Any) -> int | None:
    """Rows of a replay file (its Parquet footer), the progress total; None for Kafka."""
    if path is None:
        return None
    import pyarrow.parquet as pq

    try:
        return int(pq.ParquetFile(path).metadata.num_rows)
    except OSError:
        return None  # the flow itself reports an unreadable file


def print_summary(before: Reading, fs: Any, cfg: Any) -> Summary:
    """The run's summary on stdout; ``cfg`` (a StreamConfig) says where dead and late went."""
    if cfg.kafka:
        dead, late = f"topic {cfg.topic}.dlq", f"topic {cfg.topic}.late"
    else:
        dead, late = (str(cfg.out_dir / f"{n}-*.jsonl") for n in ("dlq", "late"))
    summary = Summary.since(before, [e.name for e in fs.entities])
    print(summary.format(dead, late), flush=True)
    return summary
