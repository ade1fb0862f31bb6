"""Which online store to open: plain data, built once from the settings and passed down."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StoreConfig:
    """Redis when ``redis_url`` is set (a cluster for ``redis+cluster://``), else Feast's
    SQLite store under ``workdir``. ``timeout_s`` bounds a Redis connect and each round
    trip. Hashable, so a process can keep one store per config.

    >>> StoreConfig(redis_url="redis://127.0.0.1:6379/0").backend, StoreConfig().backend
    ('redis', 'sqlite')
    """

    redis_url: str = ""
    workdir: Path = Path("out/feast")
    timeout_s: float = 2.0

    @property
    def backend(self) -> str:
        return "redis" if self.redis_url else "sqlite"

    @property
    def redis_type(self) -> str:
        """Feast's ``redis_type`` for ``redis_url``.

        >>> StoreConfig(redis_url="redis+cluster://127.0.0.1:7000,127.0.0.1:7001").redis_type
        'redis_cluster'
        """
        from features.store.redis_cluster import is_cluster_url

        return "redis_cluster" if is_cluster_url(self.redis_url) else "redis"
