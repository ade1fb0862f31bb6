"""Feature definitions as data: small frozen, validated types.

Everything else in skewless (the streaming flow, the backfill, the Feast objects, the
training columns, the serving vector) is compiled from these objects, so a feature is
added by one edit in the definitions module (:mod:`features.reference` is the default;
a user's own module is selected by ``--definitions`` / ``SKEWLESS_DEFINITIONS``).

>>> from datetime import timedelta
>>> card = Entity("card", "card_id")
>>> agg = Aggregation(card, Op.SUM, Window(timedelta(hours=1), timedelta(minutes=5)), "amount")
>>> agg.name
'card_amount_sum_1h'
>>> Window(timedelta(hours=1), timedelta(minutes=7))
Traceback (most recent call last):
...
ValueError: hop: 7m does not divide length 1h
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum

from features.request import RequestFeature
from features.schema import NUMERIC, EventSchema, FieldType

MS_PER_SECOND = 1_000
MS_PER_MINUTE = 60 * MS_PER_SECOND
MS_PER_HOUR = 60 * MS_PER_MINUTE
MS_PER_DAY = 24 * MS_PER_HOUR

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class Op(StrEnum):
    """Aggregation operators. Every op is finalized from the moments monoid."""

    COUNT = "count"
    SUM = "sum"
    MEAN = "mean"
    MIN = "min"
    MAX = "max"
    STD = "std"
    SINCE_LAST = "seconds_since_last"


#: ops that read a numeric event field (the rest count events or look at their times)
FIELD_OPS = frozenset({Op.SUM, Op.MEAN, Op.MIN, Op.MAX, Op.STD})
#: ops whose empty-window value is 0 (the rest are missing: NaN)
ZERO_WHEN_EMPTY = frozenset({Op.COUNT, Op.SUM})


def _to_ms(value: timedelta, what: str) -> int:
    ms = value / timedelta(milliseconds=1)
    if not math.isfinite(ms) or ms <= 0 or ms != int(ms):
        raise ValueError(f"{what}: must be a positive whole number of milliseconds, got {value}")
    return int(ms)


def duration_label(ms: int) -> str:
    """Short, stable label for a window length: 10m, 1h, 24h, 7d.

    Days are used from two days up, so a day-long window reads as ``24h``.

    >>> [duration_label(x) for x in (600_000, 3_600_000, 86_400_000, 604_800_000, 1500)]
    ['10m', '1h', '24h', '7d', '1500ms']
    """
    for unit, size, minimum in (
        ("d", MS_PER_DAY, 2 * MS_PER_DAY),
        ("h", MS_PER_HOUR, MS_PER_HOUR),
        ("m", MS_PER_MINUTE, MS_PER_MINUTE),
        ("s", MS_PER_SECOND, MS_PER_SECOND),
    ):
        if ms >= minimum and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


@dataclass(frozen=True)
class Window:
    """A hopping window: length ``W`` and hop ``H`` (H divides W).

    At query time ``t`` it covers ``floor(t/H)*H - W <= event_time < t``.
    """

    length: timedelta
    hop: timedelta

    def __post_init__(self) -> None:
        length_ms = _to_ms(self.length, "length")
        hop_ms = _to_ms(self.hop, "hop")
        if length_ms % hop_ms:
            raise ValueError(
                f"hop: {duration_label(hop_ms)} does not divide length {duration_label(length_ms)}"
            )

    @property
    def length_ms(self) -> int:
        return _to_ms(self.length, "length")

    @property
    def hop_ms(self) -> int:
        return _to_ms(self.hop, "hop")

    @property
    def label(self) -> str:
        return duration_label(self.length_ms)


@dataclass(frozen=True)
class Entity:
    """What features are keyed by: a name and the event column that holds its id."""

    name: str
    join_key: str

    def __post_init__(self) -> None:
        for attr in ("name", "join_key"):
            if not _NAME.match(getattr(self, attr)):
                raise ValueError(f"{attr}: {getattr(self, attr)!r} is not a lower_snake identifier")


@dataclass(frozen=True)
class Aggregation:
    """One windowed feature: ``op`` over ``field`` of an entity's events in ``window``.

    ``SINCE_LAST`` has no window (lifetime) and no field; ``COUNT`` has no field. ``alias``
    replaces the derived name (:func:`feature_name`).
    """

    entity: Entity
    op: Op
    window: Window | None = None
    field: str | None = None
    alias: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.op, Op):
            raise ValueError(f"op: {self.op!r} is not an Op")
        if self.op is Op.SINCE_LAST:
            if self.window is not None:
                raise ValueError("window: seconds_since_last is a lifetime feature, pass None")
        elif self.window is None:
            raise ValueError(f"window: {self.op} needs a Window")
        if self.op in FIELD_OPS:
            if self.field is None or not _NAME.match(self.field):
                raise ValueError(
                    f"field: {self.op} needs a numeric event field, got {self.field!r}"
                )
        elif self.field is not None:
            raise ValueError(f"field: {self.op} takes no field, got {self.field!r}")
        if self.alias is not None and not _NAME.match(self.alias):
            raise ValueError(f"alias: {self.alias!r} is not a lower_snake identifier")

    @property
    def name(self) -> str:
        return feature_name(self)


def feature_name(agg: Aggregation) -> str:
    """The one function that names features: ``<entity>_<field|txn>_<op>_<window>``
    (or the aggregation's ``alias``)."""
    if agg.alias is not None:
        return agg.alias
    if agg.op is Op.SINCE_LAST:
        return f"{agg.entity.name}_seconds_since_last"
    assert agg.window is not None  # guaranteed by Aggregation.__post_init__
    noun = agg.field if agg.field is not None else "txn"
    return f"{agg.entity.name}_{noun}_{agg.op.value}_{agg.window.label}"


@dataclass(frozen=True)
class FeatureSet:
    """The whole definition: the event schema, the entities and their aggregations, the
    request-time features, the Feast project and the model's label.

    ``primary`` is the entity whose id keys the event stream (the Kafka message key).
    Duplicates and too-late events are decided by every entity on its own events.
    ``exact_horizon`` bounds how far before an entity's newest ingested event a query time
    may be and still be answered exactly from the online state. Anything the schema lacks
    (a join key, an aggregated field, a request feature's input, the label) is refused
    here, naming it.
    """

    schema: EventSchema
    entities: tuple[Entity, ...]
    aggregations: tuple[Aggregation, ...]
    primary: Entity
    request: tuple[RequestFeature, ...] = ()
    project: str = "skewless"
    label: str | None = None
    exact_horizon: timedelta = timedelta(hours=1)
    _by_entity: dict[str, tuple[Aggregation, ...]] = field(
        init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        for attr in ("entities", "aggregations", "request"):
            object.__setattr__(self, attr, tuple(getattr(self, attr)))
        if not isinstance(self.schema, EventSchema):
            raise ValueError(f"schema: expected an EventSchema, got {type(self.schema).__name__}")
        if not _NAME.match(self.project):
            raise ValueError(f"project: {self.project!r} is not a lower_snake identifier")
        names = [e.name for e in self.entities]
        if len(set(names)) != len(names):
            raise ValueError(f"entities: duplicate entity names in {names}")
        if self.primary not in self.entities:
            raise ValueError(f"primary: {self.primary.name} is not one of the entities")
        for e in self.entities:
            self._schema_field(f"entities: {e.name}.join_key", e.join_key, (FieldType.INT64,))
        _to_ms(self.exact_horizon, "exact_horizon")
        seen: set[str] = set()
        for agg in self.aggregations:
            if agg.entity not in self.entities:
                raise ValueError(f"aggregations: {agg.name} uses unknown entity {agg.entity.name}")
            if agg.name in seen:
                raise ValueError(f"aggregations: duplicate feature name {agg.name}")
            if agg.field is not None:
                self._schema_field(f"aggregations: {agg.name}.field", agg.field, tuple(NUMERIC))
            seen.add(agg.name)
        fields = set(self.schema.names)
        for rf in self.request:
            if rf.name in seen:
                raise ValueError(f"request: {rf.name} collides with another feature")
            for name in rf.inputs:
                if name not in fields and name not in seen:
                    raise ValueError(
                        f"request: {rf.name} reads {name!r}, which is neither a field of the "
                        "schema nor a window feature"
                    )
            seen.add(rf.name)
        if self.label is not None:
            self._schema_field("label", self.label, (FieldType.BOOL, FieldType.INT64), True)
        by_entity = {
            e.name: tuple(a for a in self.aggregations if a.entity == e) for e in self.entities
        }
        for entity_name, aggs in by_entity.items():
            if sum(a.op is Op.SINCE_LAST for a in aggs) > 1:
                raise ValueError(
                    f"aggregations: {entity_name} has more than one seconds_since_last"
                )
            if aggs and all(a.window is None for a in aggs):
                raise ValueError(
                    f"aggregations: {entity_name} has no windowed aggregation; without a "
                    "window no event is ever too late, so its dedup ids would grow forever"
                )
            hops = sorted({a.window.hop_ms for a in aggs if a.window is not None})
            for finer, coarser in itertools.pairwise(hops):
                if coarser % finer:
                    raise ValueError(
                        f"aggregations: hops of {entity_name} must form a divisibility chain, "
                        f"{duration_label(finer)} does not divide {duration_label(coarser)}"
                    )
        object.__setattr__(self, "_by_entity", by_entity)

    def _schema_field(
        self, what: str, name: str, types: tuple[FieldType, ...], optional_ok: bool = False
    ) -> None:
        f = self.schema.get(name)
        if f is None:
            raise ValueError(
                f"{what}: {name!r} is not a field of the event schema "
                f"(fields: {', '.join(self.schema.names)})"
            )
        if f.type not in types:
            kinds = " or ".join(str(t) for t in types)
            raise ValueError(f"{what}: {name!r} is {f.type}, expected {kinds}")
        if not f.required and not optional_ok:
            raise ValueError(f"{what}: {name!r} is optional; it must be required")

    def for_entity(self, entity: Entity | str) -> tuple[Aggregation, ...]:
        key = entity if isinstance(entity, str) else entity.name
        return self._by_entity[key]

    def entity(self, name: str) -> Entity:
        for e in self.entities:
            if e.name == name:
                return e
        raise KeyError(name)

    @property
    def window_feature_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.aggregations)

    @property
    def request_features(self) -> tuple[str, ...]:
        """The request-time features' names, in definition order."""
        return tuple(rf.name for rf in self.request)

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Model input order: window features (definition order), then request features."""
        return self.window_feature_names + self.request_features

    @property
    def fields(self) -> tuple[str, ...]:
        """The event fields the aggregations read (sorted)."""
        return tuple(sorted({a.field for a in self.aggregations if a.field}))

    def lateness_ms(self, entity: Entity | str) -> int | None:
        """Largest ``W + H`` of the entity's windows: older events can affect no query."""
        spans = [a.window.length_ms + a.window.hop_ms for a in self.for_entity(entity) if a.window]
        return max(spans) if spans else None

    def spec(self) -> dict[str, object]:
        """Canonical, JSON-able description; the fingerprint hashes exactly this."""
        return {
            "schema": self.schema.spec(),
            "project": self.project,
            "label": self.label,
            "entities": [{"name": e.name, "join_key": e.join_key} for e in self.entities],
            "primary": self.primary.name,
            "exact_horizon_ms": _to_ms(self.exact_horizon, "exact_horizon"),
            "aggregations": [
                {
                    "name": a.name,
                    "entity": a.entity.name,
                    "op": a.op.value,
                    "field": a.field,
                    "length_ms": a.window.length_ms if a.window else None,
                    "hop_ms": a.window.hop_ms if a.window else None,
                }
                for a in self.aggregations
            ],
            "request_features": [rf.spec() for rf in self.request],
        }

    def fingerprint(self) -> str:
        """Stable hash of the definitions; binds a model to the features it was trained on."""
        from features import ENGINE_VERSION

        payload = json.dumps({"engine": ENGINE_VERSION, **self.spec()}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]
