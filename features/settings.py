"""One settings object, built once in ``main()`` from flags and ``SKEWLESS_*`` variables.

Nothing below ``main()`` reads the environment; it receives a :class:`Settings`. It lives
in the bottom layer because it is plain data every layer may be handed; only the command
line (``skewless.cli``) builds it.

>>> s = Settings.from_env({"SKEWLESS_REDIS_URL": "redis://127.0.0.1:6390/0",
...                        "SKEWLESS_AUTH_TOKEN": "hunter2"})
>>> s.redis_url, s.online_store
('redis://127.0.0.1:6390/0', 'redis')
>>> "hunter2" in repr(s)
False
>>> "pw" in repr(Settings.from_env({"SKEWLESS_REDIS_URL": "rediss://u:pw@127.0.0.1:6380/0"}))
False

One data root moves everything: the registry follows ``data_dir`` unless set on its own.

>>> Settings.from_env({}, data_dir=Path("out/demo")).registry_dir.as_posix()
'out/demo/registry'
>>> Settings.from_env({"SKEWLESS_REGISTRY_DIR": "models"}, data_dir=Path("x")).registry_dir
PosixPath('models')
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

_PREFIX = "SKEWLESS_"


@dataclass(frozen=True)
class Settings:
    """Runtime configuration; every field can be set as ``SKEWLESS_<FIELD>``."""

    #: the data root: the embedded online store (``feast/``), the stream's dead-letter and
    #: late files (``stream/``), the prediction log (``predictions/``) and, unless
    #: ``registry_dir`` is set, the model registry (``registry/``)
    data_dir: Path = Path("out")
    #: Kafka bootstrap servers; empty means the embedded file-replay mode
    kafka_bootstrap: str = ""
    topic: str = "transactions"
    #: Redis URL of the Feast online store; empty means the embedded SQLite store
    redis_url: str = ""
    #: model registry directory (default ``<data_dir>/registry``) and the alias served
    registry_dir: Path = Path("out/registry")
    model_alias: str = "production"
    grpc_address: str = "127.0.0.1:50051"
    metrics_port: int = 0
    #: bearer token the gRPC service requires (empty: no auth)
    auth_token: str = field(default="", repr=False)
    log_level: str = "INFO"
    #: the definitions module or file every command runs (empty: the reference fraud set)
    definitions: str = ""
    #: `serve` TLS (PEM paths; empty: plaintext): certificate chain, key, and the CA that
    #: client certificates must chain to (mutual TLS); flags override them
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    #: `score` TLS: the CA that signed the server's certificate, and for mutual TLS the
    #: client's certificate and key
    tls_ca: str = ""
    tls_client_cert: str = ""
    tls_client_key: str = ""

    @property
    def online_store(self) -> str:
        return "redis" if self.redis_url else "sqlite"

    def __repr__(self) -> str:
        return masked_repr(self)

    @classmethod
    def from_env(cls, env: Mapping[str, str], **overrides: object) -> Settings:
        """Defaults < environment < explicit overrides (flags that were given)."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = _convert(f, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "registry_dir" not in values:  # follows the data root
            values["registry_dir"] = Path(values.get("data_dir", cls.data_dir)) / "registry"
        return dataclasses.replace(cls(), **values)


def _convert(f: dataclasses.Field[object], raw: str) -> object:
    default = f.default
    try:
        if isinstance(default, Path):
            return Path(raw)
        if isinstance(default, int):
            return int(raw)
    except ValueError:
        raise ValueError(
            f"{_PREFIX}{f.name.upper()}: {raw!r} is not a valid {type(default).__name__}"
        ) from None
    return raw


def masked_repr(config: Any) -> str:
    """A config dataclass's repr with its secrets hidden: ``auth_token`` as ``***`` and the
    password of ``redis_url`` masked (configs are logged and printed)."""
    shown = []
    for f in fields(config):
        value = getattr(config, f.name)
        if f.name == "auth_token":
            value = "***" if value else ""
        elif f.name == "redis_url":
            value = masked_url(value)
        shown.append(f"{f.name}={value!r}")
    return f"{type(config).__name__}({', '.join(shown)})"


def masked_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for messages and logs).

    >>> masked_url("rediss://skewless:s3cret@127.0.0.1:6380/0?ssl_ca_certs=/ca.crt")
    'rediss://skewless:***@127.0.0.1:6380/0?ssl_ca_certs=/ca.crt'
    >>> masked_url("redis://127.0.0.1:6379/0")
    'redis://127.0.0.1:6379/0'
    """
    u = urlparse(url)
    if not u.password:
        return url
    user = f"{u.username}:" if u.username else ":"
    hosts = u.netloc.rpartition("@")[2]  # host:port, or a cluster's host:port,host:port
    return u._replace(netloc=f"{user}***@{hosts}").geturl()


#: grpcio experiments switched off unless ``GRPC_EXPERIMENTS`` is set (see serving/__init__)
GRPC_EXPERIMENTS = "-event_engine_client,-event_engine_listener"


def tune_grpc() -> None:
    """Choose grpcio's lower-latency I/O path, before grpc is first imported."""
    os.environ.setdefault("GRPC_EXPERIMENTS", GRPC_EXPERIMENTS)
