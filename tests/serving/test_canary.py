"""Canary routing: deterministic by the primary entity's key, the configured share of
cards, the deciding version in the response and the log, and hot reload of the alias."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from features.plan import compile_plan
from features.reference import REFERENCE
from flows.registry import resolve, set_alias
from serving._proto.skewless.v1 import scorer_pb2 as pb
from serving.canary import Canary, bucket
from serving.convert import event_transaction
from serving.model import load_model
from serving.scorer import Scorer
from serving.server import ServerConfig
from serving.testing import publish_synthetic_model
from tests.serving.conftest import NOW, RunningServer, ev

PLAN = compile_plan(REFERENCE)


@pytest.fixture(scope="module")
def canary_plan(model_registry: Path) -> object:
    model = load_model(resolve(model_registry, "production"), REFERENCE.fingerprint())
    return Scorer(REFERENCE).plan_for(model)


@pytest.mark.parametrize("fraction", [0.01, 0.05, 0.1, 0.3, 0.5])
def test_share_of_10k_cards(fraction: float, canary_plan: object) -> None:
    canary = Canary(fraction, PLAN.primary.key)
    canary.install(canary_plan)  # type: ignore[arg-type]
    # merchant ids vary too: only the card (the plan's primary entity) may decide
    events = [ev(f"t{c}", c, c * 7 % 1000, 1.0, NOW) for c in range(10_000)]
    chosen = [canary.chooses(e) for e in events]
    assert abs(sum(chosen) / 10_000 - fraction) <= max(0.01, 0.1 * fraction)
    # the same card is always routed the same way, whatever else the event holds
    again = [canary.chooses(ev(f"u{c}", c, 3, 99.0, NOW + 1)) for c in range(10_000)]
    assert again == chosen


def test_edges_and_the_plan_key(canary_plan: object) -> None:
    none, every = Canary(0.0, PLAN.primary.key), Canary(1.0, PLAN.primary.key)
    for c in (none, every):
        c.install(canary_plan)  # type: ignore[arg-type]
    events = [ev(f"t{i}", i, 1, 1.0, NOW) for i in range(1_000)]
    assert not any(none.chooses(e) for e in events)
    assert all(every.chooses(e) for e in events)
    assert PLAN.primary.join_key == "card_id"
    assert bucket(123) == bucket(123) != bucket(124)
    with pytest.raises(ValueError, match="canary_fraction"):
        Canary(1.5, PLAN.primary.key)
    with pytest.raises(ValueError, match="canary_fraction: needs canary_alias"):
        ServerConfig(registry_dir=Path("r"), canary_fraction=0.1)


def _wait(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, what
        time.sleep(0.05)


def test_canary_server_decides_by_card_and_reloads(
    start_server: Callable[..., RunningServer],
    base_config: ServerConfig,
    registry: Path,
    tmp_path: Path,
) -> None:
    v2 = publish_synthetic_model(registry, seed=2, alias="canary", fs=REFERENCE)
    log_dir = tmp_path / "predictions"
    cfg = replace(
        base_config, canary_alias="canary", canary_fraction=0.3, prediction_log_dir=log_dir
    )
    s = start_server(cfg)
    canary = s.server.scorer.canary
    assert canary is not None
    _wait(lambda: canary.version == v2, "canary model never loaded")
    cards = list(range(1, 41))
    evs = [ev(f"k{c}", c, 10, 20.0 + c, NOW) for c in cards]
    expect = {c: v2 if bucket(c) < canary.cut else "v0001" for c in cards}
    assert set(expect.values()) == {v2, "v0001"}  # both models decide some of these cards

    singles = [
        s.stub.Score(pb.ScoreRequest(transaction=event_transaction(e)), timeout=5) for e in evs
    ]
    batch = s.stub.ScoreBatch(
        pb.ScoreBatchRequest(transactions=[event_transaction(e) for e in evs]), timeout=5
    )
    assert [r.model_version for r in singles] == [expect[c] for c in cards]
    assert [r.model_version for r in batch.responses] == [expect[c] for c in cards]
    # one event scores the same alone and in a batch, whichever model decides it
    assert [r.score for r in batch.responses] == pytest.approx([r.score for r in singles])
    models = {v: load_model(resolve(registry, v), REFERENCE.fingerprint()) for v in ("v0001", v2)}
    assert [r.threshold for r in singles] == [models[expect[c]].threshold for c in cards]

    # hot reload: the canary alias moves, the canary cards follow, production stays
    v3 = publish_synthetic_model(registry, seed=3, alias=None, fs=REFERENCE)
    set_alias(registry, "canary", v3)
    _wait(lambda: canary.version == v3, "canary alias move never served")
    again = [
        s.stub.Score(pb.ScoreRequest(transaction=event_transaction(e)), timeout=5) for e in evs
    ]
    assert [r.model_version for r in again] == [v3 if expect[c] == v2 else "v0001" for c in cards]
    # and production still follows its own alias beside the canary
    v4 = publish_synthetic_model(registry, seed=4, alias=None, fs=REFERENCE)
    set_alias(registry, "production", v4)
    _wait(lambda: s.server.watcher.version == v4, "production alias move never served")
    again = [
        s.stub.Score(pb.ScoreRequest(transaction=event_transaction(e)), timeout=5) for e in evs
    ]
    assert [r.model_version for r in again] == [v3 if expect[c] == v2 else v4 for c in cards]
    s.stop()
    t = pq.read_table(sorted(log_dir.glob("predictions-*.parquet")))
    logged = dict(
        zip(
            t.column("transaction_id").to_pylist(),
            t.column("model_version").to_pylist(),
            strict=True,
        )
    )
    assert logged == {f"k{c}": (v3 if expect[c] == v2 else v4) for c in cards}
    assert "shadow_score" not in t.column_names  # no shadow: the log's columns as before


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--canary-alias", "canary"], "--canary-alias and --canary-fraction go together"),
        (["--canary-fraction", "0.1"], "--canary-alias and --canary-fraction go together"),
        (["--canary-alias", "c", "--canary-fraction", "1.5"], "must be a number in [0, 1]"),
    ],
)
def test_serve_flags_refused_in_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from skewless.cli import main

    try:
        code = main(["serve", *argv])
    except SystemExit as exc:  # argparse's own refusal
        code = exc.code  # type: ignore[assignment]
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
