"""A lone ``Score`` in few steps: the window half of its row in one native call
(``RowFinalizer``), the response without features encoded natively, the direct path fed
the states it read itself. Each must give exactly what the stage-by-stage path gives."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from features.native import NativeLayout
from features.reference import REFERENCE
from features.reference_engine import QueryTooOldError
from flows.registry import resolve
from serving._proto.skewless.v1 import scorer_pb2 as pb
from serving.coalesce import response_bytes
from serving.convert import event_transaction, score_response
from serving.model import LoadedModel, load_model
from serving.scorer import CorruptStateError, ScoreResult
from serving.server import ServerConfig
from tests.serving.conftest import HISTORY, HOUR, MIN, NOW, T0, RunningServer, ev
from tests.serving.test_redis import OFFSET, populate
from tests.serving.test_scorer import make_scorer


@pytest.fixture(scope="module")
def model(model_registry: Path) -> LoadedModel:
    return load_model(resolve(model_registry, "production"), REFERENCE.fingerprint())


def test_row_finalizer_gives_each_entity_cores_values(model: LoadedModel) -> None:
    scorer, store = make_scorer(model)
    plan = scorer._plan
    assert plan is not None
    readers = scorer._readers
    cards = [1, 2, 3, 99]  # 99: never seen
    for card in cards:
        for t in (NOW, NOW + 5 * MIN, NOW + 30 * HOUR, T0 + 9 * HOUR + 30 * MIN):
            raws = [store.data.get(("card", card)), store.data.get(("merchant", 10))]
            row, windows, newest = plan.finalizer.fill(raws, t)
            want_row = [math.nan] * plan.n
            for j, r in enumerate(readers):
                values = r.core.features(raws[j], t)
                assert repr(windows[j]) == repr(values)  # ints where counts are, NaN alike
                assert newest[j] == NativeLayout.max_seen(raws[j])
                for c, v in zip(plan.columns[j], values, strict=True):
                    want_row[c] = float(v)
            assert [repr(v) for v in row] == [repr(v) for v in want_row]  # NaN in place too


def test_row_finalizer_names_the_failing_entity(model: LoadedModel) -> None:
    scorer, store = make_scorer(model)
    plan = scorer._plan
    assert plan is not None
    card, merchant = store.data[("card", 1)], store.data[("merchant", 10)]
    with pytest.raises(ValueError) as info:
        plan.finalizer.fill([card, b"garbage!"], NOW)
    j, error = info.value.args
    assert j == 1 and str(error).startswith("state: 8 bytes is not a skewless")
    with pytest.raises(ValueError) as info:
        plan.finalizer.fill([card, merchant], T0 + 8 * HOUR)  # older than the card's state
    j, error = info.value.args
    assert j == 0 and isinstance(error, QueryTooOldError)
    with pytest.raises(ValueError, match="one per entity"):
        plan.finalizer.fill([card], NOW)
    # the scorer turns them into the errors it always raised, named
    store.data[("merchant", 10)] = b"garbage!"
    with pytest.raises(CorruptStateError, match=r"^merchant 10: state: 8 bytes"):
        scorer.score(ev("q", 1, 10, 5.0, NOW))


def test_score_read_is_score(model: LoadedModel) -> None:
    scorer, store = make_scorer(model)
    for e in [ev(f"q{i}", 1 + i % 4, 10 + i % 2, 5.0 + i, NOW + i * MIN) for i in range(8)]:
        keys = [(r.name, r.key(e)) for r in scorer._readers]
        got = scorer.score_read(e, keys, store.read_states(keys))
        assert repr(got) == repr(scorer.score(e))


def _result(**kw: Any) -> ScoreResult:
    base = ScoreResult("t1", 0.25, False, 0.5, "v0003", ("a",), [1.0], (), ())
    return base._replace(**kw)


@pytest.mark.parametrize(
    "result",
    [
        _result(),
        _result(score=0.75, decision=True),
        _result(score=0.0, transaction_id=""),
        _result(score=-0.0),
        _result(warnings=("card_id 9: no card state in the online store; scored with …",) * 2),
        _result(transaction_id="é" * 200, model_version="v" * 130),  # 2-byte lengths
        _result(threshold=0.0, model_version=""),
    ],
)
def test_response_bytes_without_features_is_score_response(result: ScoreResult) -> None:
    want = score_response(result, False)
    got = response_bytes(result, False)
    assert got == want.SerializeToString()
    assert pb.ScoreResponse.FromString(got) == want


@pytest.mark.integration
def test_a_lone_call_answers_what_the_stagewise_path_and_score_batch_do(
    redis_url: str, start_server: Callable[..., RunningServer], base_config: ServerConfig
) -> None:
    """On the real Redis (the direct path's awaited read), with and without features."""
    populate(redis_url)
    s = start_server(replace(base_config, redis_url=redis_url))
    servicer, scorer = s.server.servicer, s.server.scorer
    assert servicer is not None
    events = [ev(f"l{i}", OFFSET + 1 + i % 4, OFFSET + 10 + i % 2, 5.0 + i, NOW) for i in range(6)]
    events.append(ev("unknown", OFFSET + 77, OFFSET + 10, 5.0, NOW))  # a warning
    for include in (False, True):
        reqs = [pb.ScoreRequest(transaction=event_transaction(e), include_features=include)
                for e in events]  # fmt: skip
        got = [s.stub.Score(r, timeout=10) for r in reqs]
        want = [score_response(scorer.score(e, log=False), include) for e in events]
        assert got == want
        assert [g.SerializeToString() for g in got] == [w.SerializeToString() for w in want]
        batch = s.stub.ScoreBatch(
            pb.ScoreBatchRequest(transactions=[r.transaction for r in reqs]), timeout=10
        )
        assert [r.score for r in batch.responses] == [g.score for g in got]
    assert got[-1].warnings and len(got[0].entities) == 2
    assert servicer.batches == servicer.batched_events  # every call took the direct path
    assert HISTORY  # the populated history is the shared one
