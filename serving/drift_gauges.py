"""Rolling drift gauges for Prometheus, computed off the hot path.

:class:`DriftGauges` is a prediction sink: per scored call it appends one reference (the
events and their results, which carry the model input vectors) to a bounded deque, O(1)
and lock-free. A background thread, every ``interval_s``, moves what arrived into a
rolling window of the last ``window_rows`` predictions decided by the served model and
sets, against that model's training profile (``profile.json``, :mod:`flows.profiles`):

* ``skewless_drift_psi{feature}``: PSI per feature, :func:`flows.drift.binned_drift`'s
  own computation (decile bins + missing, expected fractions mixed by hour of day);
* ``skewless_drift_score_psi``: PSI of the score;
* ``skewless_drift_window_rows``: rows in the window (PSI is NaN below ``min_rows``).

A model without a profile (trained before profiles existed) leaves the gauges at NaN and
logs it once per version.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from flows.drift import Windows, binned_drift
from flows.profiles import read_profile
from serving.score_types import ScoreResults

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from serving.scorer import Model, ScoreResult

log = logging.getLogger("skewless.serving.drift")

#: one window over any epoch-ms time (drift.Windows aligns windows to the epoch)
_ONE_WINDOW_MS = 1 << 62

_Row = tuple[int, float, Sequence[float]]  # event time, score, features (model order)


class DriftGauges:
    """Sink + background thread; ``served()`` returns the production model (or None)."""

    def __init__(
        self,
        served: Callable[[], Model | None],
        event_time: Callable[[Any], int],
        registry: CollectorRegistry | None = None,
        *,
        window_rows: int = 10_000,
        min_rows: int = 300,
        interval_s: float = 10.0,
    ) -> None:
        from prometheus_client import Gauge

        self.served, self.event_time = served, event_time
        self.window_rows, self.min_rows, self.interval_s = window_rows, min_rows, interval_s
        self._inbox: deque[tuple[Sequence[Any], Sequence[ScoreResult], Any]] = deque(
            maxlen=window_rows
        )
        self._window: deque[_Row] = deque(maxlen=window_rows)
        self._version: str | None = None
        self._profiles: dict[str, dict[str, Any] | None] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        kw: dict[str, Any] = {} if registry is None else {"registry": registry}
        self.psi = Gauge(
            "skewless_drift_psi",
            "PSI of each feature over the rolling window vs the served model's profile",
            ["feature"], **kw,
        )  # fmt: skip
        self.score_psi = Gauge(
            "skewless_drift_score_psi", "PSI of the score over the rolling window", **kw
        )
        self.rows = Gauge(
            "skewless_drift_window_rows", "Predictions in the rolling drift window", **kw
        )
        self.values: dict[str, float] = {}

    def __call__(
        self, events: Sequence[Any], results: Sequence[ScoreResult], X: Any = None
    ) -> None:
        """The scorer's sink: one deque append (bounded: the oldest calls drop)."""
        self._inbox.append((events, results, X))

    def start(self) -> DriftGauges:
        self._thread = threading.Thread(target=self._run, name="drift-gauges", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.update()
            except Exception:  # a gauge must never take the server down
                log.exception("drift gauges: update failed; retrying")

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def update(self) -> dict[str, float]:
        """Take in what arrived and recompute every gauge; returns ``{feature: psi}``
        plus ``"score"`` (NaN when the window is too small or there is no profile)."""
        model = self.served()
        if model is None:
            return {}
        version, names = model.version, tuple(model.feature_names)
        if version != self._version:  # a new model: its own window, its own profile
            self._window.clear()
            self._version = version
        entries = []
        while self._inbox:
            entries.append(self._inbox.popleft())
        # newest first, until the window is full: older rows would only be pushed out
        taken: list[list[_Row]] = []
        kept = 0
        for events, results, X in reversed(entries):
            rows = self._rows(version, events, results, X)
            taken.append(rows)
            kept += len(rows)
            if kept >= self.window_rows:
                break
        for rows in reversed(taken):
            self._window.extend(rows)
        window = self._window
        out = self._compute(version, names, list(window))
        self.values = out
        self.rows.set(len(window))
        for name in names:
            self.psi.labels(name).set(out[name])
        self.score_psi.set(out["score"])
        return out

    def _rows(
        self, version: str, events: Sequence[Any], results: Sequence[ScoreResult], X: Any
    ) -> list[_Row]:
        """The window rows of one call: its results of ``version`` (canary rows belong to
        another model); from a batch's columns and model input when it has them, so that
        its result objects are not built (500 per call, for rows the window mostly drops)."""
        columns = results.columns if type(results) is ScoreResults else None
        if columns is not None and X is not None:
            rows = zip(map(self.event_time, events), columns["score"], X.tolist(), strict=True)
            versions = columns["model_version"]
            return [row for row, v in zip(rows, versions, strict=True) if v == version]
        return [
            (self.event_time(e), r.score, r.features)
            for e, r in zip(events, results, strict=True)
            if r.model_version == version
        ]

    def _profile(self, version: str, model: Model | None) -> dict[str, Any] | None:
        if version not in self._profiles:
            path = getattr(model, "path", None)
            try:
                if path is None:
                    raise FileNotFoundError(f"profile: model {version} has no version directory")
                self._profiles[version] = read_profile(path)
            except (OSError, ValueError) as exc:
                log.warning("drift gauges: %s; the gauges stay NaN for %s", exc, version)
                self._profiles[version] = None
        return self._profiles[version]

    def _compute(self, version: str, names: tuple[str, ...], rows: list[_Row]) -> dict[str, float]:
        nan = {n: math.nan for n in (*names, "score")}
        profile = self._profile(version, self.served())
        if profile is None or len(rows) < self.min_rows:
            return nan
        t, scores, features = zip(*rows, strict=True)
        w = Windows.of(np.asarray(t, dtype=np.int64), _ONE_WINDOW_MS)
        X = np.asarray(features, dtype=np.float64).reshape(len(rows), len(names))
        out = {}
        for j, name in enumerate(names):
            p = profile["features"].get(name)
            out[name] = math.nan if p is None else float(binned_drift(X[:, j], p, w)["psi"][0])
        s = np.asarray(scores, dtype=np.float64)
        out["score"] = float(binned_drift(s, profile["score"], w)["psi"][0])
        return out


def tee(*sinks: Callable[..., None] | None) -> Any:
    """One sink calling each given one in order (None when there is none)."""
    live = [s for s in sinks if s is not None]
    if len(live) <= 1:
        return live[0] if live else None
    first, *rest = live

    def both(events: Sequence[Any], results: Sequence[Any], X: Any = None) -> None:
        first(events, results, X)
        for sink in rest:
            sink(events, results, X)

    return both
