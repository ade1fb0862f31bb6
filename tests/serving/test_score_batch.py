"""``ScoreBatch``'s column path (serving.score_batch): every field equal to ``Score`` per
event, on the benchmark's model (300 trees, past ONNX Runtime's 80-tree threshold for
splitting a row's trees over threads), with entities missing in any combination; and the
stage hook the benchmark times it through."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from features.reference import REFERENCE
from flows.registry import resolve
from serving.model import LoadedModel, load_model
from serving.score_batch import STAGES
from serving.testing import publish_synthetic_model, synthetic_training_data
from tests.serving.conftest import NOW, ev
from tests.serving.test_scorer import make_scorer

#: the benchmark's model; ONNX Runtime splits a row's trees over threads past 80 trees
ROUNDS = 300


@pytest.fixture(scope="module")
def big_model(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    reg: Path = tmp_path_factory.mktemp("registry-big")
    version = publish_synthetic_model(reg, rounds=ROUNDS, max_depth=6, seed=7, fs=REFERENCE)
    return load_model(resolve(reg, version), REFERENCE.fingerprint())


def test_predictor_runs_one_thread_so_a_row_alone_gives_the_batch_bits(
    big_model: LoadedModel,
) -> None:
    """With two intra-op threads ONNX Runtime splits a row's trees over them and the
    float32 sum changes: 14 of the bench's 500 rows differ in the last bits from one
    thread (onnxruntime 1.31; ``skewless bench`` reports the count). A score must not depend on
    the server's thread setting or cores, so one thread; and a row scored alone (``Score``)
    gives the bits of the same row in a batch (``ScoreBatch``)."""
    onnx = load_model(big_model.path, big_model.fingerprint, predictor="onnx")
    assert onnx.predictor == "onnx"  # the fallback for a model the native one refuses
    opts = onnx.session.get_session_options()
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (1, 1)
    X, _ = synthetic_training_data(big_model.feature_names, rows=500, seed=3)
    batch = onnx.predict(X)
    alone = np.array([onnx.predict(X[k : k + 1])[0] for k in range(len(X))])
    assert alone.tobytes() == batch.tobytes()


def test_the_bench_model_is_served_with_xgboosts_own_bits(big_model: LoadedModel) -> None:
    """The native predictor serves the bench's model: each score is XGBoost's float32 to
    the bit (ONNX Runtime's differ in the last bits on about 7 rows in 8), and a row alone
    gives the bits of the same row in the batch."""
    assert big_model.predictor == "native"
    X, _ = synthetic_training_data(big_model.feature_names, rows=2_000, seed=3)
    batch = big_model.predict(X)
    want = big_model.booster.inplace_predict(X)
    assert np.array_equal(batch.astype(np.float32).view(np.uint32), want.view(np.uint32))
    alone = np.array([big_model.predict(X[k : k + 1])[0] for k in range(500)])
    assert alone.tobytes() == batch[:500].tobytes()


def test_batch_equals_singles_with_entities_missing_in_every_combination(
    big_model: LoadedModel,
) -> None:
    scorer, store = make_scorer(big_model)
    cards, merchants = [1, 2, 404, 3, 405], [10, 11, 909, 909, 12, 10]
    events = [
        ev(f"m{i}", cards[i % len(cards)], merchants[i % len(merchants)], 3.0 + i, NOW + i * 991)
        for i in range(60)
    ]
    batch = scorer.score_batch(events)
    assert store.round_trips == 1
    assert {len(r.warnings) for r in batch} == {0, 1, 2}  # none, one and both missing
    for got, want in zip(batch, map(scorer.score, events), strict=True):
        assert type(got) is type(want)
        assert [repr(x) for x in got.features] == [repr(x) for x in want.features]
        assert got.score.hex() == want.score.hex()
        assert got._replace(features=()) == want._replace(features=())  # every other field
        assert all(type(e) is type(w) for e, w in zip(got.entities, want.entities, strict=True))


def test_batch_without_entity_infos_differs_only_by_them(big_model: LoadedModel) -> None:
    """``infos=False`` (a ScoreBatch response without features): the same results, the
    same warnings, only ``entities`` left empty."""
    scorer, _ = make_scorer(big_model)
    events = [ev(f"i{i}", [1, 404, 2][i % 3], [10, 909][i % 2], 4.0 + i, NOW + i) for i in range(9)]
    full = scorer.score_columns(events, log=False)
    lean = scorer.score_columns(events, log=False, infos=False)
    assert [repr(r._replace(entities=())) for r in full] == list(map(repr, lean))  # NaN too
    assert all(r.entities for r in full) and {len(r.warnings) for r in lean} == {0, 1, 2}


def test_stage_hook_sees_every_stage_in_order(big_model: LoadedModel) -> None:
    scorer, _ = make_scorer(big_model)
    seen: list[str] = []
    events = [ev(f"s{i}", 1 + i % 3, 10 + i % 2, 5.0 + i, NOW + i) for i in range(5)]
    results = scorer.score_columns(events, None, seen.append)
    assert tuple(seen) == STAGES
    assert results == scorer.score_columns(events)


def test_a_batch_read_natively_scores_as_its_events_do(big_model: LoadedModel) -> None:
    """The server's batch carries its numeric fields as arrays (ids, times and request
    feature inputs are taken from them): the same results as the same events without
    them, and as ``Score`` one by one."""
    from serving._proto.skewless.v1 import scorer_pb2 as pb
    from serving.convert import event_transaction
    from serving.score_types import RequestEvents
    from serving.servicer import ScorerServicer

    scorer, _ = make_scorer(big_model)
    cards, merchants = [1, 2, 404, 3, 2**63 - 1], [10, 11, 909, 0, 12, 10]
    amounts = [5e-324, 0.1, 3.0, 9_999_000.0, 12.5]
    events = [
        ev(f"n{i}", cards[i % 5], merchants[i % 6], amounts[i % 5] + i, NOW + i * 991)
        for i in range(40)
    ]
    data = pb.ScoreBatchRequest(transactions=list(map(event_transaction, events)))
    native, _, _ = ScorerServicer(scorer, 1000).batch_request(data.SerializeToString())
    assert type(native) is RequestEvents and native.columns is not None
    assert list(native) == events
    got = scorer.score_columns(native, log=False)
    assert list(map(repr, got)) == list(map(repr, scorer.score_columns(events, log=False)))
    for r, want in zip(got, map(scorer.score, events), strict=True):
        assert [repr(x) for x in r.features] == [repr(x) for x in want.features]
        assert r._replace(features=()) == want._replace(features=())
