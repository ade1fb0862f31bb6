"""What the server runs beside the production model: shadow, canary and drift gauges.

:class:`Rollout` wires, from the :class:`~serving.server.ServerConfig`:

* ``shadow_alias``: a :class:`~serving.shadow.Shadow` in front of the prediction log;
* ``canary_alias`` + ``canary_fraction``: a :class:`~serving.canary.Canary` on the scorer,
  keyed by the definitions' primary entity;
* with Prometheus on: :class:`~serving.drift_gauges.DriftGauges`;
* one :class:`~serving.reload.ModelWatcher` per extra alias, so each follows its alias
  exactly as production does (checked off the request path, swapped atomically, a
  refused version logged and the previous one kept).

The scorer's sink becomes ``gauges`` then ``shadow`` (which forwards to the log), or the
log alone when neither is on.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from serving.canary import Canary
from serving.drift_gauges import DriftGauges, tee
from serving.reload import Loader, ModelWatcher
from serving.scorer import Model, PredictionSink, Scorer
from serving.shadow import Shadow

if TYPE_CHECKING:
    from serving.interceptors import Metrics

log = logging.getLogger("skewless.serving.rollout")


class RolloutConfig(Protocol):
    """The settings of :class:`serving.server.ServerConfig` used here."""

    @property
    def registry_dir(self) -> Path: ...
    @property
    def reload_interval_s(self) -> float: ...
    @property
    def shadow_alias(self) -> str: ...
    @property
    def canary_alias(self) -> str: ...
    @property
    def canary_fraction(self) -> float: ...
    @property
    def drift_interval_s(self) -> float: ...


class Rollout:
    def __init__(
        self,
        config: RolloutConfig,
        scorer: Scorer,
        predictions: PredictionSink | None,
        metrics: Metrics | None,
        loader: Loader | None = None,
    ) -> None:
        self.metrics = metrics
        on_error = None
        if config.shadow_alias and metrics is not None:
            from prometheus_client import Counter

            errors = Counter(
                "skewless_shadow_errors", "Shadow scoring failures (rows logged without it)",
                registry=metrics.registry,
            )  # fmt: skip
            on_error = errors.inc
        self.shadow = Shadow(predictions, on_error=on_error) if config.shadow_alias else None
        self.canary: Canary | None = None
        if config.canary_alias:
            self.canary = scorer.canary = Canary(config.canary_fraction, scorer.plan.primary.key)
        self.drift = None
        if metrics is not None:
            self.drift = DriftGauges(
                lambda: scorer.model, scorer.plan.event_time, metrics.registry,
                interval_s=config.drift_interval_s,
            )  # fmt: skip
        scorer.sink = tee(self.drift, self.shadow or predictions)
        fingerprint = scorer.fs.fingerprint()
        self.watchers: list[ModelWatcher] = []
        for alias, target in (
            (config.shadow_alias, self.shadow),
            (config.canary_alias, self.canary),
        ):
            if target is None:
                continue

            def install(model: Model, target: Any = target) -> None:
                target.install(scorer.plan_for(model))

            self.watchers.append(
                ModelWatcher(
                    config.registry_dir, alias, fingerprint, install,
                    interval_s=config.reload_interval_s, on_outcome=self._on_model,
                    **({"loader": loader} if loader is not None else {}),
                )
            )  # fmt: skip

    def _on_model(self, outcome: str, version: str) -> None:
        if self.metrics is not None:
            self.metrics.model_reloads.labels(outcome).inc()

    def start(self) -> None:
        """Start the background threads (before the first request)."""
        if self.shadow is not None:
            self.shadow.start()
        if self.drift is not None:
            self.drift.start()

    def ready(self) -> None:
        """Load each extra alias once and follow it (the production model is served: an
        extra alias that is missing or refused only logs, and is retried when it moves)."""
        for w in self.watchers:
            try:
                w.poll_once()
            except Exception:  # poll_once refuses bad versions itself; a bug path
                log.exception("model alias %r: loading failed", w.alias)
            w.start()

    def stop_watchers(self) -> None:
        for w in self.watchers:
            w.stop()

    def close(self) -> None:
        """Forward what the shadow holds (before the prediction log closes)."""
        if self.drift is not None:
            self.drift.close()
        if self.shadow is not None:
            self.shadow.close()
