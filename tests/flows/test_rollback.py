"""``skewless models rollback``: the alias moves back along its history, and a running
server's hot reload serves the previous version without a failed request."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from features.reference import REFERENCE
from features.store import StoreConfig, open_store
from flows.alias_history import history, stack
from flows.registry import aliases, set_alias
from serving.testing import fold_states, publish_synthetic_model, write_states
from skewless.cli import main
from tests.serving.conftest import HISTORY, NOW, ev


def _registry(root: Path, n: int) -> Path:
    for seed in range(1, n + 1):
        publish_synthetic_model(root, fs=REFERENCE, seed=seed)  # each one promoted
    return root


def test_rollback_walks_the_history(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reg = _registry(tmp_path / "registry", 3)
    base = ["models", "rollback", "--registry", str(reg)]
    assert stack(reg, "production") == ["v0001", "v0002", "v0003"]
    assert main(base) == 0
    assert capsys.readouterr().out == "production: v0003 -> v0002 (rollback)\n"
    set_alias(reg, "production", "v0003")  # promoted again, then rolled back twice
    assert main(base) == 0 and main(base) == 0
    assert aliases(reg)["production"] == "v0001"
    assert [(h["action"], h["version"], h["previous"]) for h in history(reg, "production")] == [
        ("set", "v0001", None), ("set", "v0002", "v0001"), ("set", "v0003", "v0002"),
        ("rollback", "v0002", "v0003"), ("set", "v0003", "v0002"),
        ("rollback", "v0002", "v0003"), ("rollback", "v0001", "v0002"),
    ]  # fmt: skip
    capsys.readouterr()
    assert main(base) == 2  # nothing earlier: one line, the alias stays
    err = capsys.readouterr().err
    assert err.startswith("skewless models: alias: 'production' has no earlier version")
    assert aliases(reg)["production"] == "v0001"
    assert main([*base, "--alias", "canary"]) == 2  # never set


def test_rollback_refuses_a_corrupt_target(tmp_path: Path) -> None:
    reg = _registry(tmp_path / "registry", 2)
    (reg / "versions" / "v0001" / "model.onnx").write_bytes(b"not a model")
    assert main(["models", "rollback", "--registry", str(reg)]) == 2
    assert aliases(reg)["production"] == "v0002"


def test_served_version_changes_after_rollback(tmp_path: Path) -> None:
    from serving._proto.skewless.v1 import scorer_pb2 as pb
    from serving.convert import event_transaction
    from serving.server import ServerConfig
    from tests.serving.conftest import RunningServer

    reg = _registry(tmp_path / "registry", 2)
    store = open_store(StoreConfig(workdir=tmp_path / "feast"), REFERENCE)
    write_states(store, fold_states(HISTORY, REFERENCE), REFERENCE)
    store.close()
    config = ServerConfig(
        registry_dir=reg, feast_dir=tmp_path / "feast", address="127.0.0.1:0",
        reload_interval_s=0.1,
    )  # fmt: skip
    request = pb.ScoreRequest(transaction=event_transaction(ev("r1", 1, 10, 25.0, NOW)))
    server = RunningServer(config)
    try:
        server.wait_health("SERVING")
        first = server.stub.Score(request, timeout=5)
        assert first.model_version == "v0002"
        assert main(["models", "rollback", "--registry", str(reg)]) == 0
        seen = []
        deadline = time.monotonic() + 30  # a bound on the poll, not a timed assertion
        while time.monotonic() < deadline:
            resp = server.stub.Score(request, timeout=5)  # any failure raises here
            seen.append(resp.model_version)
            if resp.model_version == "v0001":
                break
        assert seen[-1] == "v0001"
        assert set(seen) <= {"v0001", "v0002"}
        assert resp.score != first.score  # another model answered
    finally:
        server.stop(0)
