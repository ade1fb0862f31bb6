"""Request-time values for plain Feast readers (R3): an on-demand feature view per entity
finalizes the stored engine state at the request's time, with the native core the scoring
service uses, so ``FeatureStore.get_online_features`` returns what ``GetFeatures`` returns.

A reader passes ``request_time_ms`` (epoch milliseconds) in each entity row; 0 means now.
A time older than the state can answer exactly (its newest event minus the exact horizon)
gives missing values rather than failing the whole request; an entity with no state gets
the empty-window values (counts 0, the rest NaN), as from ``GetFeatures``.

>>> from features.reference import REFERENCE
>>> f = RequestTimeFinalizer("features.reference", "card")
>>> out = f({"card_state": [None], REQUEST_TIME: [1_767_225_600_000]})
>>> out["card_txn_count_1h"], out["card_amount_mean_7d"]
([0], [nan])
"""

from __future__ import annotations

import time
from typing import Any

from features.feast_objects import state_field
from features.layout import QueryTooOldError, compile_layouts
from features.loader import load_definitions

#: the request field a Feast reader sets per entity row (epoch ms; 0: now)
REQUEST_TIME = "request_time_ms"

_CORES: dict[tuple[str, str], Any] = {}


def _core(spec: str, entity: str) -> Any:
    """The native core of ``entity`` in the definitions ``spec`` (compiled once)."""
    core = _CORES.get((spec, entity))
    if core is None:
        from features.native import compile_core

        fs = load_definitions(spec)
        core = _CORES[(spec, entity)] = compile_core(compile_layouts(fs)[entity])
    return core


class RequestTimeFinalizer:
    """The on-demand view's function (Feast ``python`` mode): the entity's state bytes and
    the request time in, the window features at that time out. Feast stores it by
    reference (this class and its two strings), so a reader needs only skewless installed
    and the definitions module reachable."""

    def __init__(self, spec: str, entity: str) -> None:
        self.spec, self.entity = spec, entity
        fs = load_definitions(spec)
        self.names = tuple(a.name for a in fs.for_entity(entity))
        self.state = state_field(fs.entity(entity))
        self.__name__ = f"{entity}_features_at_request"

    def __call__(self, inputs: dict[str, list[Any]]) -> dict[str, list[Any]]:
        core = _core(self.spec, self.entity)
        states = inputs.get(self.state) or []
        times = inputs.get(REQUEST_TIME) or [0] * len(states)
        now = int(time.time() * 1000)
        out: dict[str, list[Any]] = {n: [] for n in self.names}
        for raw, at in zip(states, times, strict=True):
            t = int(at) if at else now
            data = raw if isinstance(raw, bytes) and raw else None
            try:
                values: list[Any] = core.features(data, t)
            except QueryTooOldError:  # cannot be answered exactly: missing
                values = [None] * len(self.names)
            except ValueError:  # not a state of this layout: as for an entity never seen
                values = core.features(None, t)
            for name, v in zip(self.names, values, strict=True):
                out[name].append(v)
        return out


def request_time_views(spec: str, views: Any) -> list[Any]:
    """One on-demand feature view per entity of the definitions ``spec``:
    ``<entity>_features_at_request``, over the entity's feature view (``views``: the
    :class:`~features.feast_objects.FeastObjects`) and the ``request_time_ms`` request field.
    Its features have the window features' names; the feature view keeps the values as of
    the entity's last event under ``<entity>_features_as_of_last_event``."""
    from feast import Field, OnDemandFeatureView, RequestSource
    from feast.transformation.python_transformation import PythonTransformation
    from feast.types import Float64, Int64

    from features.definitions import Op
    from features.feast_objects import view_name

    fs = load_definitions(spec)
    request = RequestSource(name="request_time", schema=[Field(name=REQUEST_TIME, dtype=Int64)])
    out = []
    for e in fs.entities:
        udf = RequestTimeFinalizer(spec, e.name)
        out.append(
            OnDemandFeatureView(
                name=udf.__name__,
                sources=[views.view(view_name(e)), request],
                schema=[
                    Field(name=a.name, dtype=Int64 if a.op is Op.COUNT else Float64)
                    for a in fs.for_entity(e)
                ],
                feature_transformation=PythonTransformation(
                    udf=udf,  # type: ignore[arg-type]
                    udf_string=f"RequestTimeFinalizer({spec!r}, {e.name!r})",
                ),
                mode="python",
                description=(
                    f"{e.name} window features at the request's request_time_ms (0: now), "
                    "finalized from the stored state as the scoring service does"
                ),
            )
        )
    return out
