"""``ScoreBatch``'s column-at-a-time path: :meth:`Scorer.score`'s values for many events.

One store round trip for every distinct entity of the batch, one native call per entity
for all rows (finalize from the stored bytes), vectorized request features, one predict.
The per-event objects the caller gets back (:class:`~serving.score_types.ScoreResult` and its
:class:`~serving.score_types.EntityStateInfo` tuples) are built from columns by C-level
``map``/``zip`` rather than one Python call per event: at 500 events per call those calls
were a third of the scorer's own time (docs/perf-plan.md, "ScoreBatch, second round").
The tests hold every field equal to scoring each event alone.

``mark``, when given, is called with a stage's name as each stage ends
(:data:`STAGES`, in order): ``skewless bench`` times this very code by stage, so the table
it prints is the production path's and not a copy of it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from itertools import repeat
from operator import itemgetter
from typing import Any

import numpy as np

from features.definitions import FeatureSet
from features.layout import QueryTooOldError
from features.native import NativeLayout
from features.plan import Plan
from serving.score_types import (
    BatchItemError,
    CorruptStateError,
    DeadlineExceededError,
    EntityStateInfo,
    Event,
    PredictionSink,
    ScoreResult,
)

#: the stages of one call, in order (the names ``mark`` receives)
STAGES = ("store_read", "finalize", "entity_infos", "request_features", "predict",
          "results", "sink")  # fmt: skip

_state_info = partial(tuple.__new__, EntityStateInfo)  # a named tuple from one tuple, in C
_result = partial(tuple.__new__, ScoreResult)
_max_seen = NativeLayout.max_seen


class BatchScoring:
    """The column path, mixed into :class:`serving.scorer.Scorer` (which sets these)."""

    fs: FeatureSet
    plan: Plan
    sink: PredictionSink | None
    canary: Any  # serving.canary.Canary | None
    _readers: tuple[Any, ...]  # serving.scorer._Reader, one per entity
    _event_time: Callable[[Event], int]
    _event_id: Callable[[Event], str]

    def _ready(self) -> tuple[Any, Any]:  # (the store, the installed model's _Plan)
        raise NotImplementedError

    def score_columns(
        self,
        events: Sequence[Event],
        deadline: float | None = None,
        mark: Callable[[str], Any] | None = None,
        read: Callable[[Sequence[tuple[str, int]]], list[bytes | None]] | None = None,
        log: bool = True,
        infos: bool = True,
    ) -> list[ScoreResult]:
        """:meth:`Scorer.score_batch` for two or more events (see the module docstring);
        ``read`` replaces the store's read, ``log=False`` leaves the sink to the caller;
        ``infos=False`` leaves each result's ``entities`` empty (a response without
        features does not carry them, and the prediction log drops them; the warnings are
        the same): 0.5-0.7 µs per event not spent."""
        return _score_columns(self, events, deadline, mark, read, log, infos)


def _score_columns(
    scorer: BatchScoring,
    events: Sequence[Event],
    deadline: float | None,
    mark: Callable[[str], Any] | None,
    read: Callable[[Sequence[tuple[str, int]]], list[bytes | None]] | None = None,
    log: bool = True,
    infos: bool = True,
) -> list[ScoreResult]:
    store, plan = scorer._ready()
    readers, n = scorer._readers, len(events)
    ids = [list(map(r.key, events)) for r in readers]
    distinct = [list(dict.fromkeys(col)) for col in ids]
    keys = [(r.name, i) for r, d in zip(readers, distinct, strict=True) for i in d]
    raws = (read or store.read_states)(keys)
    if mark is not None:
        mark("store_read")
    if deadline is not None and time.monotonic() > deadline:
        raise DeadlineExceededError(f"deadline: passed after 0 of {n} events")
    t_list = list(map(scorer._event_time, events))
    t = np.array(t_list, dtype=np.int64)
    X = np.empty((n, plan.n), dtype=np.float64)
    datas, newest = [], []
    start = 0
    for j, (r, col, d) in enumerate(zip(readers, ids, distinct, strict=True)):
        got = raws[start : start + len(d)]
        start += len(d)
        data = list(map(dict(zip(d, got, strict=True)).__getitem__, col))
        try:
            block = r.core.features_many(data, t_list)
        except ValueError as exc:
            index, error = exc.args if len(exc.args) == 2 else (0, exc)
            if isinstance(error, QueryTooOldError):
                raise BatchItemError(index, r.too_old(error)) from None
            raise CorruptStateError(f"{r.name} {col[index]}: {error}") from None
        X[:, plan.columns[j]] = np.frombuffer(block, dtype=np.float64).reshape(n, -1)
        datas.append(data)
        if infos:
            newest.append(
                list(map(dict(zip(d, map(_max_seen, got), strict=True)).__getitem__, col))
            )
    if mark is not None:
        mark("finalize")
    ents: Iterable[tuple[EntityStateInfo, ...]]
    if infos:
        ents, warnings = _entity_infos(readers, ids, datas, newest, t_list)
    else:
        ents, warnings = repeat(()), _warnings(readers, ids, datas, t_list)
    if mark is not None:
        mark("entity_infos")
    where = {
        name: plan.columns[j][i] for j, r in enumerate(readers) for i, name in enumerate(r.names)
    }
    schema = scorer.plan.schema

    def column(name: str) -> np.ndarray | None:
        if name in where:
            return X[:, where[name]]
        if name == schema.event_time:
            return t
        return np.array(list(map(itemgetter(schema.position(name)), events)), dtype=object)

    request = scorer.plan.request_many(column, n)
    for c, name in zip(plan.request_columns, scorer.fs.request_features, strict=True):
        X[:, c] = request[name]
    if mark is not None:
        mark("request_features")
    p = plan.model.predict(X).tolist()
    if mark is not None:
        mark("predict")
    threshold = plan.threshold
    results = list(
        map(
            _result,
            zip(
                map(scorer._event_id, events), p, [s >= threshold for s in p], repeat(threshold),
                repeat(plan.version), repeat(plan.names), X.tolist(), ents, warnings,
                repeat(None), repeat(None),
            ),
        )
    )  # fmt: skip
    if scorer.canary is not None:
        scorer.canary.rescore(plan, X, events, results)
    if mark is not None:
        mark("results")
    if log and scorer.sink is not None:
        scorer.sink(events, results, X)
    if mark is not None:
        mark("sink")
    return results


def _entity_infos(
    readers: Sequence[Any],
    ids: list[list[int]],
    datas: list[list[bytes | None]],
    newest: list[list[int | None]],
    t: list[int],
) -> tuple[list[tuple[EntityStateInfo, ...]], list[tuple[str, ...]]]:
    """Per event: its entities' :class:`EntityStateInfo` (reader order) and its warnings,
    equal to ``_Reader.info`` per event and entity (one warning per entity not found)."""
    per_reader = []
    for r, col, data, nw in zip(readers, ids, datas, newest, strict=True):
        found = [x is not None for x in data]
        age = [None if m is None else tk - m for m, tk in zip(nw, t, strict=True)]
        per_reader.append(list(map(_state_info, zip(repeat(r.name), col, found, nw, age))))
    return list(zip(*per_reader, strict=True)), _warnings(readers, ids, datas, t)


def _warnings(
    readers: Sequence[Any], ids: list[list[int]], datas: list[list[bytes | None]], t: list[int]
) -> list[tuple[str, ...]]:
    """Per event: one warning per entity not found (``_Reader.info``'s)."""
    warnings: list[tuple[str, ...]] = [()] * len(t)
    missing = sorted({k for data in datas if None in data for k, x in enumerate(data) if x is None})
    for k in missing:
        w: list[str] = []
        for r, col, data in zip(readers, ids, datas, strict=True):
            if data[k] is None:
                r.info(None, col[k], None, t[k], w)
        warnings[k] = tuple(w)
    return warnings
