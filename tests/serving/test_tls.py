"""TLS and mutual TLS on the scoring server, with certificates made by the real openssl:
a TLS call works, a plaintext or unauthenticated client is refused cleanly, and a file
that cannot be used is one line naming the setting."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from features.settings import Settings
from serving._proto.skewless.v1 import scorer_pb2 as pb
from serving._proto.skewless.v1 import scorer_pb2_grpc as pb_grpc
from serving.convert import event_transaction
from serving.server import ServerConfig
from serving.tls import TLSConfigError, client_channel, server_credentials
from tests.serving.conftest import NOW, RunningServer, ev
from tests.serving.pki import PKI, make_pki
from tests.serving.test_cli import run_cli

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _openssl() -> None:
    # the certificates are made with the openssl CLI (Debian's openssl, always on the machine)
    if shutil.which("openssl") is None:
        pytest.fail("the openssl command is missing: apt-get install openssl")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _request() -> pb.ScoreRequest:
    return pb.ScoreRequest(transaction=event_transaction(ev("tls-1", 1, 10, 12.5, NOW)))


def _wait_serving(channel: grpc.Channel, timeout: float = 60.0) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout
    while health.Check(health_pb2.HealthCheckRequest(), timeout=5).status != 1:
        assert time.monotonic() < deadline, "server never became SERVING"
        time.sleep(0.05)


def _tls(base: ServerConfig, pki: PKI, mutual: bool = False) -> ServerConfig:
    ca = pki.ca if mutual else None
    return replace(base, tls_cert=pki.server_cert, tls_key=pki.server_key, tls_client_ca=ca)


def test_tls_call_works_and_plaintext_is_refused(
    start_server: Callable[..., RunningServer],
    base_config: ServerConfig,
    pki: PKI,
    capsys: pytest.CaptureFixture[str],
) -> None:
    s = start_server(_tls(base_config, pki), ready=False)
    with client_channel(s.address, ca=pki.ca) as ch:
        _wait_serving(ch)
        resp = pb_grpc.ScorerStub(ch).Score(_request(), timeout=5)
    assert resp.transaction_id == "tls-1" and resp.model_version == "v0001"
    # the CLI client with --tls-ca
    settings = Settings(grpc_address=s.address)
    argv = ["score", "--card-id", "1", "--amount", "12.5", "--tls-ca", str(pki.ca)]
    assert run_cli(argv, settings) == 0
    assert '"model_version": "v0001"' in capsys.readouterr().out
    # a plaintext client: refused with UNAVAILABLE, the server keeps serving
    with pytest.raises(grpc.RpcError) as info:
        s.stub.Score(_request(), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert run_cli(["score", "--card-id", "1", "--amount", "12.5"], settings) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("skewless score: the server at") and "--tls-ca" in err, err
    # a client trusting another CA: refused too
    with client_channel(s.address, ca=pki.other_ca) as ch, pytest.raises(grpc.RpcError) as info:
        pb_grpc.ScorerStub(ch).Score(_request(), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    with client_channel(s.address, ca=pki.ca) as ch:
        assert pb_grpc.ScorerStub(ch).Score(_request(), timeout=5).transaction_id == "tls-1"


def test_mutual_tls_requires_a_client_certificate(
    start_server: Callable[..., RunningServer], base_config: ServerConfig, pki: PKI
) -> None:
    s = start_server(_tls(base_config, pki, mutual=True), ready=False)
    with client_channel(s.address, pki.ca, pki.client_cert, pki.client_key) as ch:
        _wait_serving(ch)
        assert pb_grpc.ScorerStub(ch).Score(_request(), timeout=5).transaction_id == "tls-1"
    with client_channel(s.address, ca=pki.ca) as ch, pytest.raises(grpc.RpcError) as info:
        pb_grpc.ScorerStub(ch).Score(_request(), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    with client_channel(s.address, ca=pki.ca) as ch, pytest.raises(grpc.RpcError) as info:
        health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # no certificate, no health


def test_unusable_files_are_named(pki: PKI, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    cases = [
        ((missing, pki.server_key, None), f"tls_cert: cannot read {missing}: No such file or directory"),
        ((pki.server_cert, garbage, None), f"tls_key: {garbage} is not a PEM file"),
        ((pki.server_cert, None, None), "tls_key: required with tls_cert"),
        ((None, None, pki.ca), "tls_client_ca: needs tls_cert and tls_key (mutual TLS is TLS first)"),
    ]  # fmt: skip
    for args, message in cases:
        with pytest.raises(TLSConfigError) as info:
            server_credentials(*args)
        assert str(info.value) == message
    with pytest.raises(TLSConfigError, match=r"^tls_key: .*client.key does not match tls_cert"):
        server_credentials(pki.server_cert, pki.client_key, None)
    with pytest.raises(TLSConfigError, match=r"^--tls-ca: .* holds no usable CA certificate"):
        client_channel("127.0.0.1:1", ca=pki.server_key)
    with pytest.raises(TLSConfigError, match=r"^--tls-key: required with --tls-cert$"):
        client_channel("127.0.0.1:1", ca=pki.ca, cert=pki.client_cert)


def test_the_cli_says_which_file_in_one_line(registry: Path, tmp_path: Path, pki: PKI) -> None:
    """The real console entry, server and client: one line on stderr, exit code 2."""
    env = {**os.environ, "SKEWLESS_DATA_DIR": str(tmp_path), "SKEWLESS_REGISTRY_DIR": str(registry),
           "SKEWLESS_REDIS_URL": "", "SKEWLESS_KAFKA_BOOTSTRAP": "", "SKEWLESS_METRICS_PORT": "0"}  # fmt: skip
    missing = tmp_path / "nope.crt"
    runs = {
        "serve": ["serve", "--address", "127.0.0.1:0", "--no-prediction-log",
                  "--tls-cert", str(missing), "--tls-key", str(pki.server_key)],
        "score": ["score", "--card-id", "1", "--amount", "2", "--tls-ca", str(missing)],
    }  # fmt: skip
    for command, argv in runs.items():
        proc = subprocess.run(
            [sys.executable, "-m", "skewless", *argv],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        setting = "tls_cert" if command == "serve" else "--tls-ca"
        assert proc.stderr.splitlines() == [
            f"skewless {command}: {setting}: cannot read {missing}: No such file or directory"
        ], proc.stderr
        assert proc.returncode == 2


def test_tls_from_skewless_variables(
    start_server: Callable[..., RunningServer],
    base_config: ServerConfig,
    pki: PKI,
    tmp_path: Path,
    registry: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``SKEWLESS_TLS_CA`` / ``_CLIENT_CERT`` / ``_CLIENT_KEY`` reach ``score`` (mutual TLS);
    ``SKEWLESS_TLS_CERT`` reaches ``serve`` (the real console entry reads it)."""
    s = start_server(_tls(base_config, pki, mutual=True), ready=False)
    with client_channel(s.address, pki.ca, pki.client_cert, pki.client_key) as ch:
        _wait_serving(ch)
    env = {"SKEWLESS_GRPC_ADDRESS": s.address, "SKEWLESS_TLS_CA": str(pki.ca),
           "SKEWLESS_TLS_CLIENT_CERT": str(pki.client_cert),
           "SKEWLESS_TLS_CLIENT_KEY": str(pki.client_key)}  # fmt: skip
    argv = ["score", "--card-id", "1", "--amount", "12.5"]
    assert run_cli(argv, Settings.from_env(env)) == 0
    assert '"model_version": "v0001"' in capsys.readouterr().out
    no_cert = {k: v for k, v in env.items() if "CLIENT" not in k}
    assert run_cli(argv, Settings.from_env(no_cert)) == 2  # mutual TLS wants the certificate
    capsys.readouterr()
    missing = tmp_path / "nope.crt"
    env = {**os.environ, "SKEWLESS_DATA_DIR": str(tmp_path), "SKEWLESS_REGISTRY_DIR": str(registry),
           "SKEWLESS_REDIS_URL": "", "SKEWLESS_KAFKA_BOOTSTRAP": "", "SKEWLESS_METRICS_PORT": "0",
           "SKEWLESS_TLS_CERT": str(missing), "SKEWLESS_TLS_KEY": str(pki.server_key)}  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "skewless", "serve", "--address", "127.0.0.1:0",
         "--no-prediction-log"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.stderr.splitlines() == [
        f"skewless serve: tls_cert: cannot read {missing}: No such file or directory"
    ], proc.stderr
