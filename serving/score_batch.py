"""``ScoreBatch``'s column-at-a-time path: :meth:`Scorer.score`'s values for many events.

One store round trip for every distinct entity of the batch; on one Redis server its
replies are received into one buffer and every event finalized from there in one native
call (:mod:`serving.batch_read`), elsewhere one native call per entity for all rows from
the stored bytes; vectorized request features, one predict. The results carry their
columns (:class:`~serving.score_types.ScoreResults`) for the prediction log and the
response encoder, which read nothing else: the per-event objects are built only when
something reads a result (shadow, drift gauges, canary, a response with features).
The per-event objects (:class:`~serving.score_types.ScoreResult` and its
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
from typing import Any, NoReturn

import numpy as np

from features.definitions import FeatureSet
from features.layout import QueryTooOldError
from features.native import NativeLayout
from features.plan import Plan
from features.schema import FieldType
from serving.batch_read import batch_reader
from serving.score_types import (
    BatchItemError,
    CorruptStateError,
    DeadlineExceededError,
    EntityStateInfo,
    Event,
    PredictionSink,
    RequestEvents,
    ScoreResult,
    ScoreResults,
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
    #: (the store, its buffered batch read or None), set on first use
    _batch_read: tuple[Any, Any] | None = None

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
    ) -> ScoreResults:
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
) -> ScoreResults:
    store, plan = scorer._ready()
    readers, n = scorer._readers, len(events)
    schema = scorer.plan.schema
    numeric = _numeric_columns(schema, events)
    ids = [
        numeric[r.join_key].tolist() if r.join_key in numeric else list(map(r.key, events))
        for r in readers
    ]
    t_list = (
        numeric[schema.event_time].tolist()
        if schema.event_time in numeric
        else list(map(scorer._event_time, events))
    )
    got = None if read is not None else _buffered(scorer, store, readers, ids)
    if got is None:
        X, missing, newest = _read_and_fill(readers, plan, ids, t_list, store, read, infos,
                                            mark, deadline)  # fmt: skip
    else:
        if mark is not None:
            mark("store_read")
        _check(deadline, n)
        X, missing, newest = _fill(readers, plan, ids, t_list, got, infos)
    t = np.array(t_list, dtype=np.int64)
    if mark is not None:
        mark("finalize")
    ents: Iterable[tuple[EntityStateInfo, ...]]
    if infos:
        ents, warnings = _entity_infos(readers, ids, missing, newest, t_list)
    else:
        ents, warnings = repeat(()), _warnings(readers, ids, missing, t_list)
    if mark is not None:
        mark("entity_infos")
    where = {
        name: plan.columns[j][i] for j, r in enumerate(readers) for i, name in enumerate(r.names)
    }
    fields: dict[str, np.ndarray] = {}

    def column(name: str) -> np.ndarray | None:
        if name in where:
            return X[:, where[name]]
        if name == schema.event_time:
            return t
        if name in numeric:
            return numeric[name]
        if name not in fields:  # built once, however many features read it
            at = itemgetter(schema.position(name))
            fields[name] = np.array(list(map(at, events)), dtype=object)
        return fields[name]

    request = scorer.plan.request_many(column, n)
    for c, name in zip(plan.request_columns, scorer.fs.request_features, strict=True):
        X[:, c] = request[name]
    if mark is not None:
        mark("request_features")
    p = plan.model.predict(X).tolist()
    if mark is not None:
        mark("predict")
    threshold, n_none = plan.threshold, [None] * n
    txids = list(map(scorer._event_id, events))
    decisions = [s >= threshold for s in p]
    columns = {
        "transaction_id": txids, "score": p, "decision": decisions,
        "threshold": [threshold] * n, "model_version": [plan.version] * n,
        "warnings": warnings, "shadow_score": n_none, "shadow_version": n_none,
    }  # fmt: skip

    def build() -> list[ScoreResult]:  # the objects, once something reads one
        return list(
            map(
                _result,
                zip(
                    txids, p, decisions, repeat(threshold), repeat(plan.version),
                    repeat(plan.names), X.tolist(), ents, warnings, n_none, n_none,
                ),
            )
        )  # fmt: skip

    results = ScoreResults.by_column(columns, plan.names, build)
    if scorer.canary is not None:
        scorer.canary.rescore(plan, X, events, results)
    if mark is not None:
        mark("results")
    if log and scorer.sink is not None:
        scorer.sink(events, results, X)
    if mark is not None:
        mark("sink")
    return results


#: the numeric field types and their arrays' dtype, as the native reader's columns hold them
_NUMERIC = {FieldType.INT64: np.int64, FieldType.TIMESTAMP: np.int64,
            FieldType.FLOAT64: np.float64}  # fmt: skip


def _numeric_columns(schema: Any, events: Sequence[Event]) -> dict[str, np.ndarray]:
    """The request's numeric fields without a missing value as arrays over the native
    reader's buffers (:class:`~serving.score_types.RequestEvents`): the same numbers as
    reading them off each event record, without a Python call per event; empty when the
    events carry no columns."""
    columns = events.columns if type(events) is RequestEvents else None
    if columns is None:
        return {}
    return {
        f.name: np.frombuffer(values, dtype=_NUMERIC[f.type])
        for f, (values, valid, _) in zip(schema.fields, columns, strict=True)
        if valid is None and f.type in _NUMERIC
    }


def _check(deadline: float | None, n: int) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise DeadlineExceededError(f"deadline: passed after 0 of {n} events")


def _buffered(
    scorer: BatchScoring, store: Any, readers: Sequence[Any], ids: list[list[int]]
) -> tuple[Any, bytearray, list[bytes]] | None:
    """The batch's states read into one buffer (:mod:`serving.batch_read`), or None: the
    store does not offer it, or this read is one for the ordinary path."""
    cached = scorer._batch_read
    if cached is None or cached[0] is not store:
        cached = scorer._batch_read = (store, batch_reader(store))
    reader = cached[1]
    return None if reader is None else reader.read([r.name for r in readers], ids)


def _fill(
    readers: Sequence[Any], plan: Any, ids: list[list[int]], t_list: list[int],
    got: tuple[Any, bytearray, list[bytes]], infos: bool,
) -> tuple[np.ndarray, list[list[int]], list[list[int | None]] | None]:  # fmt: skip
    """Every event's window values placed in its model row in one native call, from the
    buffered replies; the errors the ordinary path raises (:func:`_read_and_fill`)."""
    try:
        x, missing, newest = plan.finalizer.fill_batch(*got, t_list, infos)
    except ValueError as exc:
        if len(exc.args) != 3 or type(exc.args[0]) is not int:
            raise
        j, index, error = exc.args
        _raise_item(readers[j], ids[j], index, error)
    X = np.frombuffer(x, dtype=np.float64).reshape(len(t_list), plan.n)
    return X, missing, newest


def _raise_item(reader: Any, col: list[int], index: int, error: Exception) -> NoReturn:
    if isinstance(error, QueryTooOldError):
        raise BatchItemError(index, reader.too_old(error)) from None
    raise CorruptStateError(f"{reader.name} {col[index]}: {error}") from None


def _read_and_fill(
    readers: Sequence[Any], plan: Any, ids: list[list[int]], t_list: list[int], store: Any,
    read: Callable[[Sequence[tuple[str, int]]], list[bytes | None]] | None, infos: bool,
    mark: Callable[[str], Any] | None, deadline: float | None,
) -> tuple[np.ndarray, list[list[int]], list[list[int | None]] | None]:  # fmt: skip
    """The ordinary path: one ``read_states`` of every distinct key, a native call per
    entity for all rows."""
    n = len(t_list)
    distinct = [list(dict.fromkeys(col)) for col in ids]
    keys = [(r.name, i) for r, d in zip(readers, distinct, strict=True) for i in d]
    raws = (read or store.read_states)(keys)
    if mark is not None:
        mark("store_read")
    _check(deadline, n)
    X = np.empty((n, plan.n), dtype=np.float64)
    missing, newest = [], []
    start = 0
    for j, (r, col, d) in enumerate(zip(readers, ids, distinct, strict=True)):
        got = raws[start : start + len(d)]
        start += len(d)
        data = list(map(dict(zip(d, got, strict=True)).__getitem__, col))
        try:
            block = r.core.features_many(data, t_list)
        except ValueError as exc:
            index, error = exc.args if len(exc.args) == 2 else (0, exc)
            _raise_item(r, col, index, error)
        X[:, plan.columns[j]] = np.frombuffer(block, dtype=np.float64).reshape(n, -1)
        missing.append([i for i, x in enumerate(data) if x is None])
        if infos:
            newest.append(
                list(map(dict(zip(d, map(_max_seen, got), strict=True)).__getitem__, col))
            )
    return X, missing, (newest if infos else None)


def _entity_infos(
    readers: Sequence[Any],
    ids: list[list[int]],
    missing: list[list[int]],
    newest: list[list[int | None]] | None,
    t: list[int],
) -> tuple[list[tuple[EntityStateInfo, ...]], list[tuple[str, ...]]]:
    """Per event: its entities' :class:`EntityStateInfo` (reader order) and its warnings,
    equal to ``_Reader.info`` per event and entity (one warning per entity not found)."""
    assert newest is not None
    per_reader = []
    for r, col, lost, nw in zip(readers, ids, missing, newest, strict=True):
        found = [True] * len(t)
        for i in lost:
            found[i] = False
        age = [None if m is None else tk - m for m, tk in zip(nw, t, strict=True)]
        per_reader.append(list(map(_state_info, zip(repeat(r.name), col, found, nw, age))))
    return list(zip(*per_reader, strict=True)), _warnings(readers, ids, missing, t)


def _warnings(
    readers: Sequence[Any], ids: list[list[int]], missing: list[list[int]], t: list[int]
) -> list[tuple[str, ...]]:
    """Per event: one warning per entity not found (``_Reader.info``'s)."""
    warnings: list[tuple[str, ...]] = [()] * len(t)
    lost = [set(m) for m in missing]
    for k in sorted(set().union(*lost)):
        w: list[str] = []
        for r, col, gone in zip(readers, ids, lost, strict=True):
            if k in gone:
                r.info(None, col[k], None, t[k], w)
        warnings[k] = tuple(w)
    return warnings
