"""A batch's results by column (:class:`serving.score_types.ScoreResults`): a plain batch's
prediction log entry and response are made from the columns alone, without one
``ScoreResult`` per event; whoever reads a result gets exactly what scoring each event
alone gives (``Score`` and ``ScoreBatch`` agree), the columns included."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.reference import REFERENCE
from flows.registry import resolve
from serving.canary import Canary
from serving.convert import batch_response_bytes
from serving.model import LoadedModel, load_model
from serving.predlog_writer import BatchQueue, ScoredBatch
from serving.score_types import ScoreResult, ScoreResults
from tests.serving.conftest import NOW, ev
from tests.serving.test_scorer import make_scorer


@pytest.fixture(scope="module")
def model(model_registry: Path) -> LoadedModel:
    return load_model(resolve(model_registry, "production"), REFERENCE.fingerprint())


#: the result fields the columns hold (the rest: names, features, entities)
COLUMNS = ("transaction_id", "score", "decision", "threshold", "model_version", "warnings",
           "shadow_score", "shadow_version")  # fmt: skip


class _Queue(BatchQueue):
    """The prediction log's queue, never started: the entries stay to be read."""

    def _write(self, entries: list[ScoredBatch]) -> None:
        raise AssertionError("not started")


def test_a_plain_batch_is_logged_and_answered_without_result_objects(
    model: LoadedModel,
) -> None:
    queue = _Queue()
    scorer, _ = make_scorer(model, sink=queue)
    events = [ev(f"p{i}", [1, 2, 404][i % 3], [10, 909][i % 2], 2.0 + i, NOW + i) for i in range(9)]
    results = scorer.score_columns(events, infos=False)
    data = batch_response_bytes(results, False)
    (entry,) = queue._buf
    assert type(results) is ScoreResults and not results.built  # nothing read a result
    assert len(results) == 9 and results.feature_names == scorer.plan_for(model).names
    assert entry.feature_names == results.feature_names and entry.X is not None
    # the same bytes and log entry as from the result objects
    built = list(results)
    assert results.built and batch_response_bytes(built, False) == data
    assert entry.columns == {k: [getattr(r, k) for r in built] for k in COLUMNS}
    assert repr(entry.X.tolist()) == repr([r.features for r in built])  # NaN too


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(st.sampled_from([1, 2, 3, 404, 2**63 - 1]), st.sampled_from([10, 11, 12, 909]),
                  st.floats(0.01, 1e6), st.integers(0, 10_000)),
        min_size=2, max_size=30,
    ),
    st.booleans(),
)  # fmt: skip
def test_lazy_results_equal_scoring_each_event_alone(
    model: LoadedModel, rows: list[tuple[int, int, float, int]], infos: bool
) -> None:
    scorer, _ = make_scorer(model)
    events = [ev(f"h{k}", c, m, a, NOW + dt) for k, (c, m, a, dt) in enumerate(rows)]
    lazy = scorer.score_columns(events, log=False, infos=infos)
    assert not lazy.built
    alone = [scorer.score(e, log=False) for e in events]
    if not infos:
        alone = [r._replace(entities=()) for r in alone]
    assert list(map(repr, lazy)) == list(map(repr, alone))  # NaN and -0.0 too
    assert lazy == list(lazy) and lazy[0] is lazy[0] and lazy[-1] is list(lazy)[-1]
    assert repr(lazy[1:]) == repr(alone[1:]) and type(lazy[1:]) is list
    assert lazy.columns == {k: [getattr(r, k) for r in alone] for k in COLUMNS}


def test_a_replaced_result_drops_the_columns(model: LoadedModel) -> None:
    """A canary replaces the rows it decides: the columns would no longer say what the
    results hold, so the log and the response read the results themselves."""
    scorer, _ = make_scorer(model)
    events = [ev(f"c{i}", i % 3 + 1, 10, 1.0 + i, NOW + i) for i in range(6)]
    plain = scorer.score_columns(events, log=False)
    assert plain.columns is not None
    scorer.canary = Canary(1.0, scorer.plan.primary.key)  # every event, once installed
    scorer.canary.install(scorer.plan_for(model))
    replaced = scorer.score_columns(events, log=False)
    assert replaced.columns is None and replaced.built
    assert [r.score for r in replaced] == [r.score for r in plain]  # the same model here
    eager: Any = ScoreResults(list(replaced))
    assert batch_response_bytes(replaced, False) == batch_response_bytes(eager, False)
    assert isinstance(replaced[0], ScoreResult)


def test_drift_gauges_take_a_batch_by_column(model: LoadedModel) -> None:
    """The drift window from a batch's columns and model input (its result objects are
    not built) equals the window from the result objects, a bounded window included, with
    another model's rows (a canary's) left out."""
    from prometheus_client import CollectorRegistry

    from serving.drift_gauges import DriftGauges

    calls: list[tuple[Any, Any, Any]] = []
    scorer, _ = make_scorer(model, sink=lambda e, r, X=None: calls.append((e, r, X)))
    t = scorer.plan.event_time
    lean, eager = (DriftGauges(lambda: model, t, CollectorRegistry(), window_rows=25, min_rows=1)
                   for _ in range(2))  # fmt: skip
    for k in range(5):
        events = [
            ev(f"d{k}-{i}", i % 3 + 1, 10 + i % 2, 1.0 + i, NOW + 7 * k + i) for i in range(9)
        ]
        scorer.score_columns(events, infos=False)
        other = [r._replace(model_version="v0009") for r in (scorer.score(events[0], log=False),)]
        calls.append((events[:1], other, None))  # another model's row: left out
    for events, results, X in calls:
        lean(events, results, X)
    assert not any(r.built for _, r, _ in calls if type(r) is ScoreResults)
    got = lean.update()
    assert not any(r.built for _, r, _ in calls if type(r) is ScoreResults)  # columns only
    for events, results, X in calls:
        eager(events, list(results), X)  # plain lists: the result objects are read
    assert repr(eager.update()) == repr(got)
    assert repr(list(lean._window)) == repr(list(eager._window)) and len(lean._window) == 25
    assert {r[1] for r in lean._window} <= {s for _, r, _ in calls[2:] for s in map(_score, r)}


def _score(r: ScoreResult) -> float:
    return r.score


def test_the_shadow_scores_a_batch_by_column(model: LoadedModel) -> None:
    """The shadow scores a batch from its model input and hands on its columns with the
    shadow score added, building no result object; the log gets what the objects give."""
    from serving.shadow import Shadow

    calls: list[tuple[Any, Any, Any]] = []
    scorer, _ = make_scorer(model, sink=lambda e, r, X=None: calls.append((e, r, X)))
    for k in range(3):
        events = [ev(f"s{k}-{i}", i % 3 + 1, [10, 909][i % 2], 1.0 + i, NOW + i) for i in range(7)]
        scorer.score_columns(events, infos=False)
    calls.insert(1, ([calls[0][0][0]], [scorer.score(calls[0][0][0], log=False)], None))  # Score
    lean_out: list[tuple[Any, Any, Any]] = []
    eager_out: list[tuple[Any, Any, Any]] = []
    lean = Shadow(lambda e, r, X=None: lean_out.append((e, r, X)))
    eager = Shadow(lambda e, r, X=None: eager_out.append((e, r, X)))
    for shadow in (lean, eager):
        shadow.install(scorer.plan_for(model))
    for events, results, X in calls:
        lean(events, results, X)
    assert lean.drain() == 22
    by_column = [r for _, r, _ in lean_out if type(r) is ScoreResults]
    assert len(by_column) == 3 and not any(r.built for r in by_column)
    assert not any(r.built for _, r, _ in calls if type(r) is ScoreResults)
    for events, results, X in calls:
        eager(events, list(results), X)  # the result objects, as before
    eager.drain()
    for (_, got, gx), (_, want, wx) in zip(lean_out, eager_out, strict=True):
        assert repr(list(got)) == repr(want) and gx is wx
        if type(got) is ScoreResults:
            assert got.columns == {k: [getattr(r, k) for r in want] for k in COLUMNS}
    assert all(r.shadow_score == r.score and r.shadow_version for _, rs, _ in eager_out for r in rs)
