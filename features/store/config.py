"""Which online store to open: plain data, built once from the settings and passed down."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StoreConfig:
    """Redis when ``redis_url`` is set, else Feast's SQLite store under ``workdir``.
    ``timeout_s`` bounds a Redis connect and each round trip. Hashable, so a process can
    keep one store per config.

    >>> StoreConfig(redis_url="redis://127.0.0.1:6379/0").backend, StoreConfig().backend
    ('redis', 'sqlite')
    """

    redis_url: str = ""
    workdir: Path = Path("out/feast")
    timeout_s: float = 2.0

    @property
    def backend(self) -> str:
        return "redis" if self.redis_url else "sqlite"
