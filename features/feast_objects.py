"""Feast objects compiled from the feature definitions, never written by hand.

Per entity: an :class:`~feast.Entity`, a Parquet :class:`~feast.FileSource` (written by the
backfill), a :class:`~feast.PushSource` over it, and a :class:`~feast.FeatureView` holding
every window feature *as of the entity's last ingested event* plus ``<entity>_state``: the
engine state bytes from which the exact value at any request time is finalized (and
``<entity>_state_bootstrap``, the backfill's end state the stream starts from).

>>> from pathlib import Path
>>> from features.reference import REFERENCE
>>> objs = build_feast_objects(REFERENCE, Path("/data"))
>>> [v.name for v in objs.views]
['card_features_as_of_last_event', 'merchant_features_as_of_last_event']
>>> sorted(f.name for f in objs.views[1].schema)  # doctest: +NORMALIZE_WHITESPACE
['merchant_amount_mean_7d', 'merchant_state', 'merchant_state_bootstrap',
 'merchant_txn_count_1h', 'merchant_txn_count_24h']
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from features.definitions import Entity as Def
from features.definitions import FeatureSet, Op

TIMESTAMP_FIELD = "event_timestamp"


def view_name(entity: Def) -> str:
    """The feature view of the values as of the entity's last ingested event (its name says
    so: the request-time values are the on-demand ``<entity>_features_at_request``). Every
    name that carries it follows from here: the Redis field hashes ``<view>:<feature>``, the
    offline table, the sources and the Feast repo."""
    return f"{entity.name}_features_as_of_last_event"


def push_name(entity: Def) -> str:
    """The push source feeding :func:`view_name` (``FeatureStore.push`` takes this name)."""
    return f"{view_name(entity)}_push"


def state_field(entity: Def) -> str:
    return f"{entity.name}_state"


def bootstrap_field(entity: Def) -> str:
    """State as of the backfill's end, written only by ``feast materialize``: where the
    stream starts an entity it has no state for. The stream never overwrites it, so a
    restart (from a snapshot or from the topic's start) rebuilds exactly."""
    return f"{entity.name}_state_bootstrap"


def offline_table_name(entity: Def) -> str:
    return f"{view_name(entity)}.parquet"


@dataclass(frozen=True)
class FeastObjects:
    entities: tuple[Any, ...]  # feast.Entity
    sources: tuple[Any, ...]  # feast.FileSource
    push_sources: tuple[Any, ...]  # feast.PushSource
    views: tuple[Any, ...]  # feast.FeatureView

    def all(self) -> list[Any]:
        return [*self.entities, *self.sources, *self.push_sources, *self.views]

    def view(self, name: str) -> Any:
        for v in self.views:
            if v.name == name:
                return v
        raise KeyError(name)


def build_feast_objects(fs: FeatureSet, data_dir: Path) -> FeastObjects:
    """Entities, sources and feature views for ``fs``; offline tables live in ``data_dir``."""
    # imported here: Feast takes seconds to import, and the name helpers above must not
    from feast import Entity, FeatureView, Field, FileSource, PushSource, ValueType
    from feast.types import Bytes, Float64, Int64

    entities, sources, pushes, views = [], [], [], []
    for d in fs.entities:
        entity = Entity(
            name=d.name,
            join_keys=[d.join_key],
            value_type=ValueType.INT64,
            description=f"{d.name} id ({d.join_key})",
        )
        source = FileSource(
            name=f"{view_name(d)}_source",
            path=str(data_dir / offline_table_name(d)),
            timestamp_field=TIMESTAMP_FIELD,
        )
        push = PushSource(name=push_name(d), batch_source=source)
        schema = [
            Field(name=a.name, dtype=Int64 if a.op is Op.COUNT else Float64)
            for a in fs.for_entity(d)
        ]
        schema.append(Field(name=state_field(d), dtype=Bytes))
        schema.append(Field(name=bootstrap_field(d), dtype=Bytes))
        view = FeatureView(
            name=view_name(d),
            entities=[entity],
            ttl=timedelta(0),
            schema=schema,
            source=push,
            online=True,
            description=(
                f"{d.name} window features as of the last ingested event, and the state "
                "bytes that give exact values at any request time"
            ),
            tags={"fingerprint": fs.fingerprint()},
        )
        entities.append(entity)
        sources.append(source)
        pushes.append(push)
        views.append(view)
    return FeastObjects(tuple(entities), tuple(sources), tuple(pushes), tuple(views))
