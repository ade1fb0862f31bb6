"""The online store: one protocol, one module per backend, one factory.

* :mod:`features.store.protocol` - :class:`OnlineStore`, :class:`OnlineRow`,
  :class:`StoreUnavailableError`: what callers use and catch;
* :mod:`features.store.redis` - Feast's Redis layout written directly (production);
* :mod:`features.store.feast` - through the Feast provider (the embedded SQLite store),
  and the Feast SDK ``FeatureStore`` for ``feast materialize``;
* :func:`open_store` - the only place a backend is chosen, from a :class:`StoreConfig`.

>>> from features.reference import REFERENCE
>>> store = open_store(StoreConfig(redis_url="redis://127.0.0.1:6379/0"), REFERENCE)
>>> type(store).__name__
'RedisStore'
"""

from features.store.config import StoreConfig
from features.store.factory import open_store
from features.store.feast import open_feature_store
from features.store.protocol import OnlineRow, OnlineStore, StoreUnavailableError

__all__ = [
    "OnlineRow",
    "OnlineStore",
    "StoreConfig",
    "StoreUnavailableError",
    "open_feature_store",
    "open_store",
]
