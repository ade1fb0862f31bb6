"""Shadow scoring: a second model scores every request off the response path, both scores
are logged, a failing shadow costs no response and no log row, the alias hot-reloads."""

from __future__ import annotations

import math
import socket
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from features.reference import REFERENCE
from flows.registry import resolve, set_alias
from serving._proto.skewless.v1 import scorer_pb2 as pb
from serving.convert import event_transaction
from serving.model import LoadedModel, load_model
from serving.predlog import record
from serving.scorer import Scorer, ScoreResult
from serving.server import ServerConfig
from serving.shadow import Shadow
from serving.testing import publish_synthetic_model
from tests.serving.conftest import NOW, RunningServer, ev

NAMES = tuple(REFERENCE.feature_names)


def _wait(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, what
        time.sleep(0.05)


def _score_all(s: RunningServer, n: int, tag: str) -> list[Any]:
    evs = [ev(f"{tag}{i}", 1 + i % 5, 10, 3.0 + i, NOW + i) for i in range(n)]
    txs = [event_transaction(e) for e in evs]
    singles = [s.stub.Score(pb.ScoreRequest(transaction=t), timeout=5) for t in txs[: n // 2]]
    batch = s.stub.ScoreBatch(pb.ScoreBatchRequest(transactions=txs[n // 2 :]), timeout=5)
    return [*singles, *batch.responses]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _features(t: Any) -> np.ndarray:
    return np.column_stack([t.column(f"f_{n}").to_numpy(zero_copy_only=False) for n in NAMES])


def test_both_scores_logged_and_the_alias_reloads(
    start_server: Callable[..., RunningServer],
    base_config: ServerConfig,
    registry: Path,
    tmp_path: Path,
) -> None:
    v2 = publish_synthetic_model(registry, seed=2, alias="shadow", fs=REFERENCE)
    log_dir = tmp_path / "predictions"
    s = start_server(replace(base_config, shadow_alias="shadow", prediction_log_dir=log_dir))
    shadow = s.server.rollout.shadow
    assert shadow is not None
    _wait(lambda: shadow.version == v2, "shadow model never loaded")
    first = _score_all(s, 10, "a")
    assert {r.model_version for r in first} == {"v0001"}  # the shadow never decides
    v3 = publish_synthetic_model(registry, seed=3, alias=None, fs=REFERENCE)
    set_alias(registry, "shadow", v3)
    _wait(lambda: shadow.version == v3, "shadow alias move never followed")
    second = _score_all(s, 10, "b")
    s.stop()
    t = pq.read_table(sorted(log_dir.glob("predictions-*.parquet")))
    assert t.column("transaction_id").to_pylist() == [f"a{i}" for i in range(10)] + [
        f"b{i}" for i in range(10)
    ]
    assert t.column("score").to_pylist() == [r.score for r in [*first, *second]]
    assert t.column("model_version").to_pylist() == ["v0001"] * 20
    assert t.column("shadow_version").to_pylist() == [v2] * 10 + [v3] * 10
    X = _features(t)
    fp = REFERENCE.fingerprint()
    want = np.concatenate(
        [
            load_model(resolve(registry, v), fp).predict(X[k : k + 10])
            for v, k in ((v2, 0), (v3, 10))
        ]
    )
    assert t.column("shadow_score").to_numpy() == pytest.approx(want, abs=1e-6)
    assert not np.allclose(t.column("shadow_score").to_numpy(), t.column("score").to_numpy())
    assert shadow.errors == 0 and shadow.scored == 20


@dataclass
class Broken:
    """A registry model whose predict raises (a shadow that breaks at scoring time)."""

    inner: LoadedModel

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def predict(self, X: Any) -> np.ndarray:
        raise RuntimeError("shadow model exploded")


def test_a_failing_shadow_costs_no_response_and_no_log_row(
    start_server: Callable[..., RunningServer],
    base_config: ServerConfig,
    registry: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    v2 = publish_synthetic_model(registry, seed=2, alias="shadow", fs=REFERENCE)

    def loader(version_dir: Path, fingerprint: str) -> Any:
        model = load_model(version_dir, fingerprint)
        return Broken(model) if version_dir.name == v2 else model

    log_dir = tmp_path / "predictions"
    port = _free_port()
    cfg = replace(base_config, shadow_alias="shadow", prediction_log_dir=log_dir, metrics_port=port)
    s = start_server(cfg, loader=loader)
    shadow = s.server.rollout.shadow
    assert shadow is not None
    _wait(lambda: shadow.version == v2, "shadow model never loaded")
    with caplog.at_level("ERROR", logger="skewless.serving.shadow"):
        responses = _score_all(s, 6, "x")  # not one call fails
        _wait(lambda: shadow.errors >= 1, "a shadow failure never counted")
        responses += _score_all(s, 6, "y")
        _wait(lambda: shadow.errors >= 2, "a second shadow failure never counted")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        assert f"skewless_shadow_errors_total {float(shadow.errors)}" in r.read().decode()
    s.stop()
    assert len(responses) == 12 and {r.model_version for r in responses} == {"v0001"}
    t = pq.read_table(sorted(log_dir.glob("predictions-*.parquet")))
    assert t.num_rows == 12  # every prediction logged, without a shadow score
    assert "shadow_score" not in t.column_names
    reports = [r for r in caplog.records if "shadow model" in r.getMessage()]
    assert len(reports) == 1  # rate-limited: one line per minute, however many failures
    assert "exploded" in reports[0].getMessage()


def _result(i: int, version: str = "v0001") -> ScoreResult:
    return ScoreResult(f"t{i}", 0.5, True, 0.5, version, NAMES, [float(i)] * len(NAMES), (), ())


def test_off_the_path_bounded_and_drained_on_close(model_registry: Path) -> None:
    model = load_model(resolve(model_registry, "production"), REFERENCE.fingerprint())
    got: list[ScoreResult] = []
    shadow = Shadow(lambda events, results, X=None: got.extend(results), max_pending=4)
    shadow.install(Scorer(REFERENCE).plan_for(model))
    for i in range(3):  # no thread: the sink only buffers, nothing is scored on the path
        shadow((None,), (_result(i),))
    assert got == []
    shadow((None, None), (_result(3), _result(4)))
    shadow((None,), (_result(5),))  # 5 pending >= 4: straight to the log, unscored
    assert [r.transaction_id for r in got] == ["t5"] and got[0].shadow_score is None
    assert shadow.skipped == 1
    shadow.close()
    assert [r.transaction_id for r in got] == ["t5", "t0", "t1", "t2", "t3", "t4"]
    X = np.array([r.features for r in got[1:]])
    assert [r.shadow_score for r in got[1:]] == pytest.approx(model.predict(X).tolist())
    assert {r.shadow_version for r in got[1:]} == {"v0001"}


def test_kafka_record_carries_the_shadow_only_when_on() -> None:
    schema = Scorer(REFERENCE).plan.schema
    e = ev("t1", 1, 2, 3.0, NOW)
    plain = record(schema, 0, e, _result(1))
    assert "shadow_score" not in plain
    both = record(schema, 0, e, _result(1)._replace(shadow_score=0.25, shadow_version="v0002"))
    assert (both["shadow_score"], both["shadow_version"]) == (0.25, "v0002")
    assert not math.isnan(both["score"])


@dataclass
class Blocked:
    """A registry model whose predict waits until the test lets it go."""

    inner: LoadedModel
    release: threading.Event

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def predict(self, X: Any) -> np.ndarray:
        assert self.release.wait(30), "the test never released the shadow"
        return self.inner.predict(X)


def test_responses_never_wait_for_the_shadow(
    start_server: Callable[..., RunningServer],
    base_config: ServerConfig,
    registry: Path,
    tmp_path: Path,
) -> None:
    v2 = publish_synthetic_model(registry, seed=2, alias="shadow", fs=REFERENCE)
    release = threading.Event()

    def loader(version_dir: Path, fingerprint: str) -> Any:
        model = load_model(version_dir, fingerprint)
        return Blocked(model, release) if version_dir.name == v2 else model

    log_dir = tmp_path / "predictions"
    cfg = replace(base_config, shadow_alias="shadow", prediction_log_dir=log_dir)
    s = start_server(cfg, loader=loader)
    shadow = s.server.rollout.shadow
    assert shadow is not None
    _wait(lambda: shadow.version == v2, "shadow model never loaded")
    try:
        first = _score_all(s, 6, "p")
        _wait(lambda: shadow._lock.locked(), "the shadow never started scoring")
        # the shadow is stuck in predict: every call still answers
        responses = [*first, *_score_all(s, 10, "q")]
    finally:
        release.set()
    assert len(responses) == 16 and {r.model_version for r in responses} == {"v0001"}
    s.stop()
    t = pq.read_table(sorted(log_dir.glob("predictions-*.parquet")))
    assert t.num_rows == 16 and t.column("shadow_version").to_pylist() == [v2] * 16


@pytest.mark.integration
def test_shadow_and_canary_together_on_redis(
    redis_url: str,
    start_server: Callable[..., RunningServer],
    base_config: ServerConfig,
    registry: Path,
    tmp_path: Path,
) -> None:
    from serving.canary import bucket
    from tests.serving.test_redis import OFFSET, populate

    populate(redis_url)
    v2 = publish_synthetic_model(registry, seed=2, alias="shadow", fs=REFERENCE)
    v3 = publish_synthetic_model(registry, seed=3, alias="canary", fs=REFERENCE)
    log_dir = tmp_path / "predictions"
    cfg = replace(
        base_config, redis_url=redis_url, prediction_log_dir=log_dir, shadow_alias="shadow",
        canary_alias="canary", canary_fraction=0.5,
    )  # fmt: skip
    s = start_server(cfg)
    rollout = s.server.rollout
    assert rollout.shadow is not None and rollout.canary is not None
    _wait(lambda: rollout.shadow.version == v2 and rollout.canary.version == v3, "not loaded")
    cards = [OFFSET + c for c in range(1, 21)]
    evs = [ev(f"r{i}", c, 10 + OFFSET, 50.0, NOW) for i, c in enumerate(cards)]
    batch = s.stub.ScoreBatch(
        pb.ScoreBatchRequest(transactions=[event_transaction(e) for e in evs]), timeout=5
    )
    cut = rollout.canary.cut
    want = [v3 if bucket(c) < cut else "v0001" for c in cards]
    assert [r.model_version for r in batch.responses] == want
    assert set(want) == {v3, "v0001"}
    s.stop()
    t = pq.read_table(sorted(log_dir.glob("predictions-*.parquet")))
    assert t.column("model_version").to_pylist() == want
    assert t.column("shadow_version").to_pylist() == [v2] * len(cards)
    # card 1 (+OFFSET) has history in Redis: its vector is not the empty-window one
    assert t.column("f_card_txn_count_10m").to_pylist()[0] == 6.0
    want_shadow = load_model(resolve(registry, v2), REFERENCE.fingerprint()).predict(_features(t))
    assert t.column("shadow_score").to_numpy() == pytest.approx(want_shadow, abs=1e-6)
