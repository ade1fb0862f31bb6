"""The scorer: an event's features as of its own time, plus the model, in plain Python.

No gRPC in here, so every rule is unit-testable without a server. Per request the scorer

1. reads the state of every entity of the event (e.g. card and merchant) from the online
   store in **one round trip** (``store.read_states``), the keys read by the definitions'
   plan (:mod:`features.plan`);
2. decodes each state and *finalizes it at the event's own time* ``t``: only events
   ``< t`` count. So values are request-time correct (R2: a card idle for 3 h has
   ``card_txn_count_1h == 0``) and the scored event never sees itself (R1), even when the
   stream already ingested it;
3. adds the request-time features (the plan's functions, which the backfill runs too),
   builds the vector in the model's ``feature_names`` order and predicts.

The model is swapped atomically by :meth:`Scorer.install`: a request reads the current
:class:`_Plan` once, so a reload in the middle of a request cannot mix two models.

>>> from features.reference import REFERENCE
>>> Scorer(REFERENCE).score(None)  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
serving.score_types.NotReadyError: store: the online store is not connected yet
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from features.definitions import FeatureSet
from features.layout import QueryTooOldError
from features.native import NativeLayout, native
from features.plan import EntityPlan, Plan, compile_plan
from flows.registry import RegistryError
from serving.score_batch import BatchScoring
from serving.score_types import (
    BatchItemError,
    CorruptStateError,
    DeadlineExceededError,
    EntityFeatures,
    EntityStateInfo,
    Event,
    InvalidRequestError,
    Model,
    NotReadyError,
    PredictionSink,
    ScoreResult,
)

if TYPE_CHECKING:  # only the type is needed
    from features.store import OnlineStore
    from serving.canary import Canary

#: the data types live in serving.score_types (shared with the batch path); import them here
__all__ = [
    "BatchItemError", "CorruptStateError", "DeadlineExceededError", "EntityFeatures",
    "EntityStateInfo", "Event", "InvalidRequestError", "Model", "NotReadyError",
    "PredictionSink", "Read", "ScoreResult", "Scorer",
]  # fmt: skip
#: a store's read_states, or the coalescer's read shared by the calls in flight
Read = Callable[[Sequence[tuple[str, int]]], list[bytes | None]]


#: the newest event time in a state's header, read natively without decoding it
_max_seen = NativeLayout.max_seen


class _Reader:
    """One entity's layout, run by the native core: bytes -> values at ``t``."""

    def __init__(self, plan: EntityPlan, time_field: str) -> None:
        self.layout = plan.layout
        self.core = NativeLayout(plan.layout).core
        self.name = plan.name
        self.join_key = plan.join_key
        self.key = plan.key
        self.names = plan.names
        self.time_field = time_field

    def too_old(self, exc: QueryTooOldError) -> QueryTooOldError:
        """The engine's refusal, naming the schema's own time field."""
        return QueryTooOldError(f"{self.time_field}{str(exc).removeprefix('event_time')}")

    def values(self, raw: bytes | None, entity_id: int, t: int) -> list[Any]:
        """Window values at ``t`` from stored bytes (None: the entity was never seen)."""
        try:
            return self.core.features(raw, t)
        except QueryTooOldError as exc:
            raise self.too_old(exc) from None
        except ValueError as exc:
            raise CorruptStateError(f"{self.name} {entity_id}: {exc}") from None

    def info(
        self, raw: bytes | None, entity_id: int, newest_ms: int | None, t: int, warnings: list[str]
    ) -> EntityStateInfo:
        """How fresh the state read was; an entity not in the store adds a warning."""
        if raw is None:
            warnings.append(
                f"{self.join_key} {entity_id}: no {self.name} state in the online store; "
                "scored with empty-window values"
            )
            return EntityStateInfo(self.name, entity_id, False, None, None)
        age = None if newest_ms is None else t - newest_ms
        return EntityStateInfo(self.name, entity_id, True, newest_ms, age)


class _Plan:
    """A model plus where each computed value goes in its input vector."""

    def __init__(self, model: Model, fs: FeatureSet, readers: Sequence[_Reader]) -> None:
        names = tuple(model.feature_names)
        known = {*fs.window_feature_names, *fs.request_features}
        unknown = [n for n in names if n not in known]
        lacking = [n for n in fs.feature_names if n not in names]
        if unknown or lacking:
            raise RegistryError(
                f"model {model.version}: feature_names differ from the running definitions "
                f"(unknown {unknown}, not used {lacking})"
            )
        pos = {n: i for i, n in enumerate(names)}
        self.model, self.names, self.n = model, names, len(names)
        self.version, self.threshold = model.version, float(model.threshold)
        #: per reader, the model column of each of its values (layout order)
        self.columns = tuple(tuple(pos[n] for n in r.names) for r in readers)
        self.request_columns = tuple(pos[n] for n in fs.request_features)
        #: the window half of one row in one native call (:meth:`Scorer.score`)
        self.finalizer = native.RowFinalizer(
            [r.core for r in readers], [list(c) for c in self.columns], self.n
        )
        self._local = threading.local()
        self._orders: dict[tuple[str, ...], list[int]] = {}

    def order_from(self, names: tuple[str, ...]) -> list[int]:
        """Where each of this model's inputs is in a vector ordered by ``names``."""
        if names not in self._orders:
            self._orders[names] = [names.index(n) for n in self.names]
        return self._orders[names]

    def row(self) -> np.ndarray:
        """A reusable (1, F) float64 model input for this thread."""
        buf: np.ndarray | None = getattr(self._local, "row", None)
        if buf is None:
            buf = self._local.row = np.empty((1, self.n), dtype=np.float64)
        return buf


class Scorer(BatchScoring):
    """Features at request time + model. ``store`` may be attached later (server start);
    until both a store and a model are there, scoring raises :class:`NotReadyError`."""

    def __init__(
        self,
        fs: FeatureSet,
        store: OnlineStore | None = None,
        *,
        sink: PredictionSink | None = None,
    ) -> None:
        self.fs = fs
        self.plan: Plan = compile_plan(fs)
        self.store = store
        self.sink = sink
        time_field = fs.schema.event_time
        self._readers = tuple(_Reader(p, time_field) for p in self.plan.entities)
        self._by_entity = {r.name: r for r in self._readers}
        self._plan: _Plan | None = None
        #: a second model deciding a fixed share of the primary entities (serving.canary)
        self.canary: Canary[_Plan] | None = None
        self._event_id = self.plan.event_id
        self._event_time = self.plan.event_time

    # -- model -----------------------------------------------------------------------
    def install(self, model: Model) -> None:
        """Make ``model`` the one every new request uses (atomic; in-flight requests
        finish on the model they started with). Refuses a model whose inputs differ."""
        self._plan = self.plan_for(model)

    def plan_for(self, model: Model) -> _Plan:
        """``model`` checked against the running definitions, ready to score."""
        if model.fingerprint != self.fs.fingerprint():
            raise RegistryError(
                f"model {model.version}: trained on definitions {model.fingerprint}, running "
                f"{self.fs.fingerprint()}"
            )
        return _Plan(model, self.fs, self._readers)

    @property
    def model(self) -> Model | None:
        plan = self._plan
        return None if plan is None else plan.model

    def _ready(self) -> tuple[OnlineStore, _Plan]:
        store, plan = self.store, self._plan
        if store is None:
            raise NotReadyError("store: the online store is not connected yet")
        if plan is None:
            raise NotReadyError("model: no model is loaded yet")
        return store, plan

    # -- scoring ---------------------------------------------------------------------
    def score(self, event: Event, read: Read | None = None, log: bool = True) -> ScoreResult:
        """One validated event, the latency path: :meth:`score_batch`'s rules (tests hold them
        equal). ``read`` replaces the store's; ``log=False`` leaves the sink to the caller."""
        store, plan = self._ready()
        keys = [(r.name, r.key(event)) for r in self._readers]
        result = self._one(plan, event, keys, (read or store.read_states)(keys))
        if log and self.sink is not None:
            self.sink((event,), (result,))
        return result

    def score_read(
        self, event: Event, keys: Sequence[tuple[str, int]], raws: Sequence[bytes | None]
    ) -> ScoreResult:
        """:meth:`score` of an event whose states the caller read already: ``keys`` are
        ``(entity, id)`` in entity order (:attr:`plan`), ``raws`` their stored bytes (the
        coalescer's direct path sends the read before anything else). Not logged."""
        return self._one(self._ready()[1], event, keys, raws)

    def _one(
        self, plan: _Plan, event: Event, keys: Sequence[tuple[str, int]],
        raws: Sequence[bytes | None],
    ) -> ScoreResult:  # fmt: skip
        canary = self.canary
        if canary is not None and (cp := canary.plan) is not None and canary.chooses(event):
            plan = cp
        readers, t = self._readers, self._event_time(event)
        try:  # every entity finalized and placed in one native call
            row, window, newest = plan.finalizer.fill(raws, t)
        except ValueError as exc:
            if len(exc.args) != 2 or type(exc.args[0]) is not int:
                raise
            j, error = exc.args
            if isinstance(error, QueryTooOldError):
                raise readers[j].too_old(error) from None
            raise CorruptStateError(f"{readers[j].name} {keys[j][1]}: {error}") from None
        warnings: list[str] = []
        ents = tuple(
            [r.info(raws[j], keys[j][1], newest[j], t, warnings) for j, r in enumerate(readers)]
        )
        request = self.plan.request_one(event, window)
        for c, v in zip(plan.request_columns, request, strict=True):
            row[c] = v
        X = plan.row()
        X[0] = row
        p = float(plan.model.predict(X)[0])
        return ScoreResult(
            self._event_id(event), p, p >= plan.threshold, plan.threshold, plan.version,
            plan.names, X[0].tolist(), ents, tuple(warnings),
        )  # fmt: skip

    def score_batch(
        self, events: Sequence[Event], deadline: float | None = None,
        read: Read | None = None, log: bool = True,
    ) -> Sequence[ScoreResult]:  # fmt: skip
        """Score validated events with one store round trip (``read``, ``log``: as in
        :meth:`score`); ``deadline`` is a ``time.monotonic()`` value checked once the states
        are read. Failures of one event raise :class:`BatchItemError` (one: the error)."""
        if len(events) == 1:
            return [self.score(events[0], read, log)]
        return self.score_columns(events, deadline, read=read, log=log)

    def entity_features(self, entity: str, entity_id: int, t: int) -> EntityFeatures:
        """One entity's window features at query time ``t`` (epoch ms), no model needed."""
        store = self.store
        if store is None:
            raise NotReadyError("store: the online store is not connected yet")
        reader = self._by_entity.get(entity)
        if reader is None:
            raise InvalidRequestError(
                f"entity: {entity!r} is not one of {', '.join(self._by_entity)}"
            )
        [raw] = store.read_states([(entity, entity_id)])
        warnings: list[str] = []
        values = reader.values(raw, entity_id, t)
        info = reader.info(raw, entity_id, _max_seen(raw), t, warnings)
        return EntityFeatures(reader.names, values, info, tuple(warnings))

    def check_store(self) -> None:
        """One cheap read: raises ``StoreUnavailableError`` when the store is unreachable."""
        store = self.store
        if store is None:
            raise NotReadyError("store: the online store is not connected yet")
        store.read_states([(self.fs.primary.name, 0)])
