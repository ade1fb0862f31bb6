"""The one place a store backend is chosen (Feast keeps its own such table,
``ONLINE_STORE_CLASS_FOR_TYPE``; ours has three rows)."""

from __future__ import annotations

from features.definitions import FeatureSet
from features.store.config import StoreConfig
from features.store.feast import FeastStore
from features.store.layout import check_layout
from features.store.protocol import OnlineStore
from features.store.redis import RedisStore
from features.store.redis_cluster import RedisClusterStore, is_cluster_url


def open_store(cfg: StoreConfig, fs: FeatureSet) -> OnlineStore:
    """The online store ``cfg`` names, built for the feature set ``fs``: Redis (connects on
    first use, one socket per thread; Redis Cluster for ``redis+cluster://`` URLs) or the
    Feast provider over SQLite (applies the generated Feast objects under ``cfg.workdir``
    now)."""
    if cfg.backend == "redis":
        check_layout(cfg.redis_url, fs, cfg.timeout_s)  # rows under names read as empty
    if cfg.backend == "redis" and is_cluster_url(cfg.redis_url):
        return RedisClusterStore(cfg.redis_url, fs).build(cfg.timeout_s)
    if cfg.backend == "redis":
        return RedisStore(cfg.redis_url, fs).build(cfg.timeout_s)
    return FeastStore(fs, cfg.workdir).build()
