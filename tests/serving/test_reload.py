"""Model hot reload against a real server: zero failed requests while the alias moves,
refusal of a model trained on other definitions (or corrupt), the old one kept."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from features.reference import REFERENCE
from flows.registry import set_alias
from serving._proto.skewless.v1 import scorer_pb2 as pb
from serving._proto.skewless.v1 import scorer_pb2_grpc as pb_grpc
from serving.convert import event_transaction
from serving.server import ServerConfig
from serving.testing import publish_synthetic_model
from tests.serving.conftest import NOW, RunningServer, ev


class Hammer:
    """A thread calling Score as fast as it can on its own channel; records versions
    in order and every error."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = pb_grpc.ScorerStub(self.channel)
        self.req = pb.ScoreRequest(transaction=event_transaction(ev("h", 1, 10, 42.0, NOW)))
        self.versions: list[str] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + 60  # bounded even if stop() is never called
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                self.versions.append(self.stub.Score(self.req, timeout=5).model_version)
            except grpc.RpcError as exc:
                self.errors.append(f"{exc.code()}: {exc.details()}")

    def __enter__(self) -> Hammer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.thread.join(10)
        self.channel.close()

    def wait_for(self, version: str, timeout: float = 15.0) -> None:
        start = time.monotonic()
        while version not in self.versions[-5:]:
            assert time.monotonic() - start < timeout, (
                f"{version} never served: {Counter(self.versions)}"
            )
            time.sleep(0.02)


def test_reload_under_load_has_no_errors(server: RunningServer, registry: Path) -> None:
    v2 = publish_synthetic_model(registry, seed=2, alias=None, fs=REFERENCE)
    with Hammer(server.address) as hammer:
        hammer.wait_for("v0001")
        set_alias(registry, "production", v2)
        hammer.wait_for(v2)
        n_switch = len(hammer.versions)
        time.sleep(0.3)
    assert hammer.errors == []
    assert len(hammer.versions) > n_switch > 20
    first_new = hammer.versions.index(v2)
    # an atomic swap: once the new version answered, the old one never does again
    assert set(hammer.versions[:first_new]) == {"v0001"}
    assert set(hammer.versions[first_new:]) == {v2}


@pytest.mark.parametrize("breakage", ["other definitions", "corrupt artifact"])
def test_refused_model_keeps_the_old_one(
    start_server: Callable[..., RunningServer],
    base_config: ServerConfig,
    registry: Path,
    breakage: str,
) -> None:
    server = start_server(base_config)
    if breakage == "other definitions":
        bad = publish_synthetic_model(
            registry, seed=4, fingerprint="feedfacefeedface", alias=None, fs=REFERENCE
        )
        reason = "trained on feature definitions feedfacefeedface"
    else:
        bad = publish_synthetic_model(registry, seed=4, alias=None, fs=REFERENCE)
        onnx = registry / "versions" / bad / "model.onnx"
        onnx.write_bytes(onnx.read_bytes()[:-10])
        reason = "model.onnx in"
    with Hammer(server.address) as hammer:
        set_alias(registry, "production", bad)
        start = time.monotonic()
        while server.server.watcher.last_error is None:
            assert time.monotonic() - start < 10, "the bad model was never looked at"
            time.sleep(0.02)
        time.sleep(0.5)  # several more polls: still refused, still serving the old model
        refusal = server.server.watcher.last_error
        assert hammer.versions[-1] == "v0001"
        good = publish_synthetic_model(registry, seed=5, alias="production", fs=REFERENCE)
        hammer.wait_for(good)  # a later good version is still picked up
    assert reason in refusal
    assert hammer.errors == []
    assert set(hammer.versions[: hammer.versions.index(good)]) == {"v0001"}
    assert server.health() == "SERVING"


def test_refusal_is_logged_once_with_the_reason(
    server: RunningServer, registry: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = publish_synthetic_model(
        registry, seed=6, fingerprint="0000000000000000", alias=None, fs=REFERENCE
    )
    with caplog.at_level("ERROR", logger="skewless.serving.reload"):
        set_alias(registry, "production", bad)
        start = time.monotonic()
        while server.server.watcher.last_error is None:
            assert time.monotonic() - start < 10
            time.sleep(0.02)
        time.sleep(0.6)  # three more polls of an unchanged alias
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1
    assert refusals[0].startswith(f"model {bad} refused: model {bad} (")
    assert "trained on feature definitions 0000000000000000" in refusals[0]
    assert refusals[0].endswith("; keeping v0001")
    resp = server.stub.Score(
        pb.ScoreRequest(transaction=event_transaction(ev("x", 1, 10, 5.0, NOW))), timeout=5
    )
    assert resp.model_version == "v0001"
