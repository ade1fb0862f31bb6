"""``feature_repo/``'s online store: Feast's own Redis store, with its connection string
checked when Feast loads ``feature_store.yaml``.

Feast expands ``${SKEWLESS_FEAST_REDIS}`` with ``os.path.expandvars``, which leaves an
unset variable as the literal text; ``feast apply`` then passes (it never connects) and
``feast materialize`` dies on ``KeyError: 'port'``. Every Feast command loads the config
first, so the check here turns that into one line naming the variable and how to set it.
A ``redis://`` or ``rediss://`` URL (the form of ``SKEWLESS_REDIS_URL``) is accepted too
and converted to Feast's ``host:port,db=N`` form.

>>> SkewlessRedisOnlineStoreConfig(connection_string="redis://127.0.0.1:6390/2").connection_string
'127.0.0.1:6390,db=2'
>>> SkewlessRedisOnlineStoreConfig(connection_string="${SKEWLESS_FEAST_REDIS}")
Traceback (most recent call last):
...
features.store.feast_redis.FeastRepoConfigError: feature_repo: SKEWLESS_FEAST_REDIS is not set...
"""

from __future__ import annotations

from typing import Literal

from feast.infra.online_stores.redis import RedisOnlineStore, RedisOnlineStoreConfig
from pydantic import field_validator

from features.store.feast import feast_connection_string

ENV = "SKEWLESS_FEAST_REDIS"
TYPE = "features.store.feast_redis.SkewlessRedisOnlineStore"
_HOW = (
    f"set it to your Redis in Feast's form, e.g. `export {ENV}=127.0.0.1:6379,db=0` "
    "(or a redis:// URL; `scripts/services.sh up DIR` starts one and prints its port), "
    "or use the embedded SQLite store: `-f feature_repo/embedded/feature_store.yaml`"
)


class FeastRepoConfigError(SystemExit):
    """A config error the Feast CLI prints as one line: it shows a traceback for every
    other exception (a ``ValueError`` here would surface as a pydantic error inside one)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)

    def __str__(self) -> str:
        return str(self.code)


def checked_connection_string(value: str) -> str:
    """Feast's ``host:port[,key=value...]`` from ``value``, or a one-line error naming
    ``SKEWLESS_FEAST_REDIS``.

    >>> checked_connection_string("127.0.0.1:6379,db=0")
    '127.0.0.1:6379,db=0'
    >>> checked_connection_string("localhost")
    Traceback (most recent call last):
    ...
    features.store.feast_redis.FeastRepoConfigError: ...='localhost' is not host:port[,db=N,...]...
    """
    value = value.strip()
    if not value or "${" in value:
        raise FeastRepoConfigError(f"feature_repo: {ENV} is not set; {_HOW}")
    if value.startswith(("redis://", "rediss://")):
        return feast_connection_string(value)
    nodes = [part for part in value.split(",") if "=" not in part]
    bad = not nodes or any(
        len(hp := n.rsplit(":", 1)) != 2 or not hp[0] or not hp[1].isdigit() for n in nodes
    )
    if bad:
        raise FeastRepoConfigError(
            f"feature_repo: {ENV}={value!r} is not host:port[,db=N,...]; {_HOW}"
        )
    return value


class SkewlessRedisOnlineStoreConfig(RedisOnlineStoreConfig):
    """Feast's Redis config, its connection string checked (see the module docstring)."""

    type: Literal["features.store.feast_redis.SkewlessRedisOnlineStore"] = TYPE  # type: ignore[assignment]

    @field_validator("connection_string")
    @classmethod
    def _check(cls, value: str) -> str:
        return checked_connection_string(value)


class SkewlessRedisOnlineStore(RedisOnlineStore):
    """Feast's Redis online store, unchanged (Feast finds the config class by name)."""
