"""The real ghz (the Go gRPC load tool) drives a real ``skewless serve`` process.

ghz reads the schema from ``protos/skewless/v1/scorer.proto`` itself, from a descriptor
set built by grpc_tools, or from the server's reflection, and encodes its JSON data with
Go's protobuf: a foreign client, a foreign parser of the .proto and a foreign encoder.
Every call of a bounded run (``-n 50``) must come back OK; a transaction without
``card_id`` must come back INVALID_ARGUMENT (presence survives the foreign encoder: a
missing field is not a silent 0), while an explicit ``card_id: 0`` is a valid card.

``scripts/services.sh install`` (run by ``make test``) installs ghz; without it the
module is skipped.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from features.reference import REFERENCE
from features.store import StoreConfig, open_store
from serving.testing import fold_states, publish_synthetic_model, write_states
from tests.serving.conftest import HISTORY, NOW

REPO = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO / "protos"
PROTO = PROTO_ROOT / "skewless" / "v1" / "scorer.proto"
README = (REPO / "README.md").read_text()
CALLS = 50


def find_ghz() -> str | None:
    """``SKEWLESS_GHZ`` (to try another version), ghz on PATH, or where
    ``scripts/services.sh install`` puts it when /usr/local/bin is not writable."""
    if os.environ.get("SKEWLESS_GHZ"):
        return os.environ["SKEWLESS_GHZ"]
    home = Path(os.environ.get("SKEWLESS_SERVICES_HOME", Path.home() / ".cache" / "skewless"))
    local = home / "bin" / "ghz"
    return shutil.which("ghz") or (str(local) if os.access(local, os.X_OK) else None)


GHZ = find_ghz()


@pytest.fixture(autouse=True)
def _ghz_installed() -> None:
    # `make test` installs ghz (scripts/services.sh install): missing is a failure, not a skip
    if GHZ is None:
        pytest.fail("ghz is not installed: run `scripts/services.sh install`")


AT = datetime.fromtimestamp(NOW / 1000, UTC).isoformat().replace("+00:00", "Z")
TX = {
    "transaction_id": "ghz-1", "card_id": 1, "merchant_id": 10, "amount": 42.5,
    "currency": "EUR", "country": "FR", "mcc": 5411, "event_time": AT,
}  # fmt: skip


def _wait_serving(address: str, proc: subprocess.Popen[str], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            assert proc.poll() is None, "skewless serve exited before it was SERVING"
            assert time.monotonic() < deadline, f"skewless serve not SERVING after {timeout} s"
            time.sleep(0.1)


@pytest.fixture(scope="module")
def address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``python -m skewless serve`` on a free loopback port: a synthetic model in
    its registry and the known history in its embedded Feast store."""
    data = tmp_path_factory.mktemp("ghz-serve")
    publish_synthetic_model(data / "registry", seed=1, fs=REFERENCE)
    store = open_store(StoreConfig(workdir=data / "feast"), REFERENCE)
    write_states(store, fold_states(HISTORY, REFERENCE), REFERENCE)
    store.close()
    env = {
        **os.environ,
        "SKEWLESS_DATA_DIR": str(data),
        "SKEWLESS_REGISTRY_DIR": str(data / "registry"),
        "SKEWLESS_GRPC_ADDRESS": "127.0.0.1:0",
        "SKEWLESS_REDIS_URL": "",
        "SKEWLESS_KAFKA_BOOTSTRAP": "",
        "SKEWLESS_AUTH_TOKEN": "",
    }
    log = data / "serve.log"  # a file, not a pipe: nobody reads it while ghz runs
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "skewless", "serve", "--no-prediction-log"],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err, text=True,
        )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until bound (or the process died)
        assert line.startswith("listening on port "), log.read_text()[-3000:]
        addr = f"127.0.0.1:{int(line.split()[-1])}"
        _wait_serving(addr, proc)
        yield addr
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="module")
def protoset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The README's descriptor-set command (grpc_tools' protoc), output to a temp dir."""
    m = re.search(r"`(python -m\s+grpc_tools\.protoc[^`]*)`", README)
    assert m, "README lost its protoset command"
    out = tmp_path_factory.mktemp("protoset") / "scorer.protoset"
    args = [
        f"--descriptor_set_out={out}" if a.startswith("--descriptor_set_out=") else a
        for a in m.group(1).split()
    ]
    run = subprocess.run([sys.executable, *args[1:]], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0 and out.is_file(), f"{args}: {run.stderr}"
    return out


def readme_ghz_command(address: str) -> list[str]:
    """The README's ghz command, bounded to CALLS calls (2 in flight), at ``address``."""
    m = re.search(r"<!-- ghz-example -->\n```bash\n(.*?)```", README, re.S)
    assert m, "README lost its ghz example"
    words = shlex.split(m.group(1).replace("\\\n", " "))
    assert words[0] == "ghz" and words[-1] == "127.0.0.1:50051", words
    for flag, value in (("-n", str(CALLS)), ("-c", "2")):
        words[words.index(flag) + 1] = value
    return [*words[:-1], "--format", "json", address]


def ghz(address: str, call: str, data: Any, schema: list[str]) -> dict[str, Any]:
    """Run ghz for CALLS calls (2 in flight, one connection); its JSON report."""
    assert GHZ is not None
    cmd = [GHZ, "--insecure", *schema, "--call", f"skewless.v1.Scorer.{call}",
           "-n", str(CALLS), "-c", "2", "--connections", "1", "--timeout", "20s",
           "-d", json.dumps(data), "--format", "json", address]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert run.returncode == 0, f"ghz exited {run.returncode}: {run.stderr or run.stdout}"
    report: dict[str, Any] = json.loads(run.stdout)
    return report


def statuses(report: dict[str, Any]) -> dict[str, int]:
    return {k: int(v) for k, v in (report.get("statusCodeDistribution") or {}).items()}


PROTO_FLAGS = ["--proto", str(PROTO.relative_to(REPO)), "--import-paths", "protos"]


#: ghz asks reflection for the file of the *method* symbol (skewless.v1.Scorer.Score), which
#: stock grpcio-reflection cannot resolve (grpc/grpc#34743, open); serving/reflection.py does.
@pytest.mark.parametrize("source", ["proto", "protoset", "reflection"])
def test_ghz_scores_every_call_ok(address: str, protoset: Path, source: str) -> None:
    schema = {
        "proto": PROTO_FLAGS,
        "protoset": ["--protoset", str(protoset)],
        "reflection": [],  # ghz asks the server's reflection service for the schema
    }[source]
    report = ghz(address, "Score", {"transaction": TX, "include_features": True}, schema)
    assert statuses(report) == {"OK": CALLS}, report.get("errorDistribution")
    assert report["count"] == CALLS


def test_the_readmes_ghz_command(address: str) -> None:
    assert GHZ is not None
    cmd = readme_ghz_command(address)
    run = subprocess.run([GHZ, *cmd[1:]], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert run.returncode == 0, run.stderr
    assert statuses(json.loads(run.stdout)) == {"OK": CALLS}


def test_ghz_every_rpc_with_the_proto(address: str) -> None:
    two = [TX, {**TX, "transaction_id": "ghz-2", "card_id": 2}]
    assert statuses(ghz(address, "ScoreBatch", {"transactions": two}, PROTO_FLAGS)) == {"OK": CALLS}
    at = {"entity": "card", "entity_id": 1, "at": AT}
    assert statuses(ghz(address, "GetFeatures", at, PROTO_FLAGS)) == {"OK": CALLS}
    # a bidirectional stream per call, sending both requests
    stream = [{"transaction": t} for t in two]
    assert statuses(ghz(address, "ScoreStream", stream, PROTO_FLAGS)) == {"OK": CALLS}


def test_ghz_keeps_presence_a_missing_card_is_refused_a_zero_card_is_not(address: str) -> None:
    missing = {k: v for k, v in TX.items() if k != "card_id"}
    report = ghz(address, "Score", {"transaction": missing}, PROTO_FLAGS)
    assert statuses(report) == {"InvalidArgument": CALLS}
    assert any("card_id: missing" in e for e in report.get("errorDistribution") or {})
    zero = {**TX, "card_id": 0}  # a card nobody saw: scored with empty windows
    assert statuses(ghz(address, "Score", {"transaction": zero}, PROTO_FLAGS)) == {"OK": CALLS}
