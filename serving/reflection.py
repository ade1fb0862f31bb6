"""Server reflection that also resolves method symbols (``skewless.v1.Scorer.Score``).

grpcio-reflection answers ``file_containing_symbol`` with the descriptor pool's
``FindFileContainingSymbol``, which (with the upb protobuf runtime) knows services,
messages, fields and enums but not methods: ``grpcurl describe skewless.v1.Scorer.Score``
and ghz over reflection then fail with "Symbol not found". Here a miss on ``A.B.M`` is
retried as service ``A.B`` holding method ``M``, which is answered with the service's
file, as the C++ and Go servers do. Everything else is grpcio-reflection's own code.

>>> from serving._proto.skewless.v1 import scorer_pb2  # registers the file in the pool
>>> file_of_symbol("skewless.v1.Scorer.Score").name
'skewless/v1/scorer.proto'
>>> file_of_symbol("skewless.v1.Scorer.Nope")
Traceback (most recent call last):
KeyError: 'skewless.v1.Scorer.Nope'
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pool
from grpc import aio
from grpc_reflection.v1alpha import reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer as _AsyncReflectionServicer
from grpc_reflection.v1alpha._base import _file_descriptor_response, _not_found_error
from grpc_reflection.v1alpha.reflection import SERVICE_NAME

__all__ = ["SERVICE_NAME", "ReflectionServicer", "enable_reflection", "file_of_symbol"]


def file_of_symbol(symbol: str, pool: Any = None) -> Any:
    """The file descriptor defining ``symbol``, methods included; ``KeyError`` if none."""
    pool = pool or descriptor_pool.Default()
    try:
        return pool.FindFileContainingSymbol(symbol)
    except KeyError:
        pass
    service, _, method = symbol.rpartition(".")
    try:
        found = pool.FindServiceByName(service)
    except KeyError:
        found = None
    if found is None or method not in found.methods_by_name:
        raise KeyError(symbol) from None
    return found.file


class ReflectionServicer(_AsyncReflectionServicer):
    """grpcio-reflection's asyncio servicer, with method symbols resolved."""

    def _file_containing_symbol(self, request: Any, fully_qualified_name: str) -> Any:
        try:
            descriptor = file_of_symbol(fully_qualified_name, self._pool)
        except KeyError:
            return _not_found_error(request)
        return _file_descriptor_response(descriptor, request)


def enable_reflection(service_names: tuple[str, ...], server: aio.Server) -> None:
    """Add reflection for ``service_names`` (and reflection itself) to ``server``."""
    servicer = ReflectionServicer((*service_names, SERVICE_NAME))
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
