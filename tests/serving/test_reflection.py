"""Server reflection driven by the real grpcurl (``scripts/services.sh install`` builds
it): method symbols resolve, a call made through reflection works, and reflection is
token-protected unless ``open_reflection``, while health never needs the token."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from serving._proto.skewless.v1 import scorer_pb2 as pb
from serving.server import ServerConfig
from tests.serving.conftest import NOW, RunningServer

SERVICES_HOME = Path(os.environ.get("SKEWLESS_SERVICES_HOME", Path.home() / ".cache/skewless"))
GRPCURL = shutil.which("grpcurl") or (
    str(SERVICES_HOME / "bin/grpcurl") if (SERVICES_HOME / "bin/grpcurl").exists() else None
)


@pytest.fixture
def _grpcurl() -> None:
    # `make test` installs grpcurl (scripts/services.sh install): missing is a failure
    if GRPCURL is None:
        pytest.fail("grpcurl is not installed: run `scripts/services.sh install`")


needs_grpcurl = pytest.mark.usefixtures("_grpcurl")
TOKEN = "s3cret"
NOW_RFC3339 = datetime.fromtimestamp(NOW / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
REQUEST = {
    "transaction": {"transaction_id": "gc-1", "card_id": 1, "merchant_id": 10, "amount": 12.5,
                    "currency": "EUR", "country": "FR", "mcc": 5411, "event_time": NOW_RFC3339}
}  # fmt: skip


def grpcurl(
    *args: str, data: dict[str, object] | None = None, token: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``grpcurl -plaintext [-H auth] [-d data] *args`` (args: [flags...] address verb...)"""
    assert GRPCURL is not None
    flags = ["-H", f"authorization: Bearer {token}"] if token else []
    flags += ["-d", json.dumps(data)] if data is not None else []
    return subprocess.run(
        [GRPCURL, "-plaintext", *flags, *args], capture_output=True, text=True, timeout=60
    )


def _reflection_list(server: RunningServer, metadata: list[tuple[str, str]]) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(server.channel)
    req = reflection_pb2.ServerReflectionRequest(list_services="")
    [resp] = list(stub.ServerReflectionInfo(iter([req]), metadata=metadata, timeout=5))
    return {s.name for s in resp.list_services_response.service}


@needs_grpcurl
def test_grpcurl_lists_describes_and_calls(server: RunningServer) -> None:
    out = grpcurl(server.address, "list")
    assert out.returncode == 0, out.stderr
    assert {"skewless.v1.Scorer", "grpc.health.v1.Health"} <= set(out.stdout.split())
    # a method symbol: "Symbol not found" with grpcio-reflection's own servicer
    out = grpcurl(server.address, "describe", "skewless.v1.Scorer.Score")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("skewless.v1.Scorer.Score is a method:")
    assert "rpc Score ( .skewless.v1.ScoreRequest ) returns ( .skewless.v1.ScoreResponse );" in (
        out.stdout
    )
    out = grpcurl(server.address, "describe", "skewless.v1.Scorer.NoSuchMethod")
    assert out.returncode != 0 and "Symbol not found" in out.stderr
    # a real call whose request and response types come from reflection
    out = grpcurl(server.address, "skewless.v1.Scorer/Score", data=REQUEST)
    assert out.returncode == 0, out.stderr
    via_stub = server.stub.Score(json_format.ParseDict(REQUEST, pb.ScoreRequest()), timeout=5)
    assert json.loads(out.stdout) == json_format.MessageToDict(
        via_stub, preserving_proto_field_name=True
    )


@needs_grpcurl
def test_grpcurl_needs_the_token_for_reflection_by_default(
    start_server: Callable[..., RunningServer], base_config: ServerConfig
) -> None:
    s = start_server(replace(base_config, auth_token=TOKEN))
    out = grpcurl(s.address, "list")
    assert out.returncode != 0 and "Unauthenticated" in out.stderr, out.stderr
    out = grpcurl(s.address, "skewless.v1.Scorer/Score", data=REQUEST, token=TOKEN)
    assert out.returncode == 0 and '"gc-1"' in out.stdout, out.stderr
    # the token for reflection only (-reflect-header): the health call itself has none
    reflect_only = ("-reflect-header", f"authorization: Bearer {TOKEN}")
    out = grpcurl(*reflect_only, s.address, "grpc.health.v1.Health/Check")
    assert out.returncode == 0 and json.loads(out.stdout) == {"status": "SERVING"}, out.stderr


def test_reflection_open_by_flag_the_calls_still_need_the_token(
    start_server: Callable[..., RunningServer], base_config: ServerConfig
) -> None:
    closed = start_server(replace(base_config, auth_token=TOKEN))
    with pytest.raises(grpc.RpcError) as info:
        _reflection_list(closed, [])
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "skewless.v1.Scorer" in _reflection_list(closed, [("authorization", f"Bearer {TOKEN}")])
    assert closed.health() == "SERVING"

    opened = start_server(replace(base_config, auth_token=TOKEN, open_reflection=True))
    assert "skewless.v1.Scorer" in _reflection_list(opened, [])
    assert opened.health() == opened.health("skewless.v1.Scorer") == "SERVING"
    if GRPCURL is not None:  # the open reflection does not open the scorer
        out = grpcurl(opened.address, "describe", "skewless.v1.Scorer.Score")
        assert out.returncode == 0, out.stderr
        out = grpcurl(opened.address, "skewless.v1.Scorer/Score", data=REQUEST)
        assert out.returncode != 0 and "Unauthenticated" in out.stderr, out.stderr
