"""The Feast backend: writes and reads through the Feast provider (the embedded SQLite
store of the demo), and the Feast SDK ``FeatureStore`` over the same online store (for
``feast materialize`` and plain Feast reads).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from features.definitions import FeatureSet
from features.feast_objects import (
    bootstrap_field,
    build_feast_objects,
    state_field,
    view_name,
)
from features.store.config import StoreConfig
from features.store.encoding import encode_value
from features.store.protocol import OnlineRow


def repo_config(cfg: StoreConfig, project: str) -> Any:
    """A Feast ``RepoConfig`` over the online store ``cfg`` names (Redis, or SQLite in
    ``cfg.workdir``); the registry lives in ``cfg.workdir`` either way."""
    from urllib.parse import urlparse

    from feast.repo_config import RepoConfig

    workdir = cfg.workdir.resolve()
    if cfg.backend == "redis":
        u = urlparse(cfg.redis_url)
        db = (u.path or "/0").lstrip("/") or "0"
        online: dict[str, Any] = {
            "type": "redis",
            "connection_string": f"{u.hostname}:{u.port or 6379},db={db}",
        }
    else:
        online = {"type": "sqlite", "path": str(workdir / "online.db")}
    return RepoConfig(
        project=project,
        provider="local",
        registry=str(workdir / "registry.db"),
        online_store=online,
        offline_store={"type": "file"},
        entity_key_serialization_version=3,
    )


def open_feature_store(cfg: StoreConfig, fs: FeatureSet, data_dir: Path | None = None) -> Any:
    """A Feast ``FeatureStore`` over the online store ``cfg`` names, with the objects
    generated from ``fs`` applied (idempotent); offline sources under ``data_dir``
    (default ``cfg.workdir / "offline"``)."""
    from feast import FeatureStore

    workdir = cfg.workdir.resolve()  # Feast resolves relative paths against repo_path again
    workdir.mkdir(parents=True, exist_ok=True)
    store = FeatureStore(config=repo_config(cfg, fs.project), repo_path=str(workdir))
    store.apply(build_feast_objects(fs, data_dir or workdir / "offline").all())
    return store


class FeastStore:
    """Writes and reads through the Feast provider (used for the embedded SQLite store)."""

    def __init__(self, fs: FeatureSet, workdir: Path) -> None:
        self.fs, self.workdir = fs, workdir
        self._store: Any = None
        self._views: dict[str, Any] = {}

    def build(self) -> FeastStore:
        self._store = open_feature_store(StoreConfig(workdir=self.workdir), self.fs)
        objs = build_feast_objects(self.fs, self.workdir / "offline")
        self._views = {e.name: objs.view(view_name(e)) for e in self.fs.entities}
        return self

    @property
    def feature_store(self) -> Any:
        return self._store

    def _key(self, entity: str, entity_id: int) -> Any:
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        return EntityKey(
            join_keys=[self.fs.entity(entity).join_key], entity_values=[Value(int64_val=entity_id)]
        )

    def write(self, entity: str, rows: Sequence[OnlineRow]) -> None:
        from feast.protos.feast.types.Value_pb2 import Value

        names = [a.name for a in self.fs.for_entity(entity)]
        sf = state_field(self.fs.entity(entity))
        data = []
        for r in rows:
            values = {
                n: Value.FromString(encode_value(v)) for n, v in zip(names, r.values, strict=True)
            }
            values[sf] = Value(bytes_val=r.state)
            ts = datetime.fromtimestamp(r.event_ts_ms / 1000, tz=UTC)
            data.append((self._key(entity, r.entity_id), values, ts, None))
        provider = self._store._get_provider()
        provider.online_write_batch(self._store.config, self._views[entity], data, None)

    def read_states(
        self, keys: Sequence[tuple[str, int]], bootstrap: bool = False
    ) -> list[bytes | None]:
        provider = self._store._get_provider()
        out: list[bytes | None] = []
        field = bootstrap_field if bootstrap else state_field
        for entity, entity_id in keys:
            sf = field(self.fs.entity(entity))
            [(_, values)] = provider.online_read(
                self._store.config, self._views[entity], [self._key(entity, entity_id)], [sf]
            )
            v = (values or {}).get(sf)
            out.append(v.bytes_val if v is not None and v.HasField("bytes_val") else None)
        return out

    def close(self) -> None:
        pass
