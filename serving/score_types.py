"""The scorer's data types: errors, results and the protocols it talks to.

Apart from :mod:`serving.scorer` so that the batch path (:mod:`serving.score_batch`), which
the scorer mixes in, builds the same results without importing the scorer. Import them
from :mod:`serving.scorer`, which re-exports them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, overload

import numpy as np

#: an event record of the definitions' schema (a named tuple, schema order)
Event = Any


class NotReadyError(RuntimeError):
    """The store is not connected or no model is loaded yet (maps to UNAVAILABLE)."""


class InvalidRequestError(ValueError):
    """A request field breaks a rule; the message starts with the field's name."""


class CorruptStateError(ValueError):
    """A stored entity state cannot be decoded (maps to DATA_LOSS)."""


class DeadlineExceededError(TimeoutError):
    """The caller's deadline passed while the work was still running."""


class BatchItemError(Exception):
    """Item ``index`` of a batch failed with ``error`` (the transport names the field)."""

    def __init__(self, index: int, error: Exception) -> None:
        super().__init__(f"[{index}] {error}")
        self.index, self.error = index, error


class Model(Protocol):
    """What the scorer needs from a loaded model (see :mod:`serving.model`)."""

    @property
    def version(self) -> str: ...
    @property
    def feature_names(self) -> tuple[str, ...]: ...
    @property
    def threshold(self) -> float: ...
    @property
    def fingerprint(self) -> str: ...
    def predict(self, X: Any) -> np.ndarray: ...


class EntityStateInfo(NamedTuple):
    """How fresh an entity's online state was: ``age_ms = t - newest ingested event``
    (negative when the stream already holds events at or after ``t``; they are excluded)."""

    entity: str
    entity_id: int
    found: bool
    newest_event_ms: int | None
    age_ms: int | None


class ScoreResult(NamedTuple):
    """One scored event (a named tuple: built once per event on the hot path)."""

    transaction_id: str
    score: float
    decision: bool
    threshold: float
    model_version: str
    #: the model input, in ``feature_names`` order (NaN = missing)
    feature_names: tuple[str, ...]
    features: Sequence[float]
    entities: tuple[EntityStateInfo, ...]
    warnings: tuple[str, ...]
    #: the shadow model's score of the same vector (set off the response path, for the log)
    shadow_score: float | None = None
    shadow_version: str | None = None


class ScoreResults(Sequence[ScoreResult]):
    """A batch's results: a sequence of :class:`ScoreResult` and, when the scorer set them,
    the same values by result field in :attr:`columns` (the lists the results were built
    from), so that the prediction log and the response encoder need not transpose 500
    tuples back into columns. From the scorer (:meth:`by_column`) the results themselves are
    built only when something reads one (the shadow, the drift gauges, a canary, a response
    with features): a plain batch's log and response read the columns alone, and 500
    named tuples and their feature lists cost ~0.5 µs per event. A copy or slice is a plain
    list; ``columns`` is None once a result was replaced (a canary's rows)."""

    __slots__ = ("_items", "_make", "_n", "columns", "feature_names")

    def __init__(
        self,
        results: Iterable[ScoreResult] = (),
        columns: dict[str, list[Any]] | None = None,
    ) -> None:
        items = list(results)
        self._items: list[ScoreResult] | None = items
        self._make: Callable[[], list[ScoreResult]] | None = None
        self._n = len(items)
        self.columns = columns
        self.feature_names: tuple[str, ...] = items[0].feature_names if items else ()

    @classmethod
    def by_column(
        cls,
        columns: dict[str, list[Any]],
        feature_names: tuple[str, ...],
        make: Callable[[], list[ScoreResult]],
    ) -> ScoreResults:
        """Results whose objects ``make()`` builds on first read (from the same values)."""
        self = cls.__new__(cls)
        self._items, self._make, self._n = None, make, len(columns["score"])
        self.columns, self.feature_names = columns, feature_names
        return self

    def _list(self) -> list[ScoreResult]:
        items = self._items
        if items is None:  # two threads may both build it: the same values either way
            assert self._make is not None
            items = self._items = self._make()
        return items

    @property
    def built(self) -> bool:
        """True once the result objects exist (read, or given when constructed)."""
        return self._items is not None

    def __len__(self) -> int:
        return self._n

    @overload
    def __getitem__(self, i: int) -> ScoreResult: ...
    @overload
    def __getitem__(self, i: slice) -> list[ScoreResult]: ...
    def __getitem__(self, i: int | slice) -> ScoreResult | list[ScoreResult]:
        return self._list()[i]

    def __setitem__(self, i: int, result: ScoreResult) -> None:
        self._list()[i] = result
        self.columns = None  # the columns no longer say what the results hold

    def __iter__(self) -> Iterator[ScoreResult]:
        return iter(self._list())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ScoreResults | list):
            return self._list() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ScoreResults({self._list()!r})"


class RequestEvents(list[Any]):
    """A request's validated events (a list of event records) and, when the native reader
    built them, the same values by schema field as Arrow buffers in :attr:`columns`
    (``(values, validity or None, string data or None)`` per field, schema order), so that
    the prediction log need not transpose the records and convert Python values again. A
    copy or slice is a plain list."""

    __slots__ = ("columns",)

    def __init__(self, events: Any = (), columns: list[tuple[Any, ...]] | None = None):
        super().__init__(events)
        self.columns = columns


@dataclass(frozen=True, slots=True)
class EntityFeatures:
    names: tuple[str, ...]
    values: list[float]
    state: EntityStateInfo
    warnings: tuple[str, ...]


class PredictionSink(Protocol):
    """Receives the scored events and their results (features included) and, from a
    batch, the model input ``X`` as scored (fresh per call: the sink may keep it)."""

    def __call__(
        self, events: Sequence[Event], results: Sequence[ScoreResult], X: Any = None
    ) -> None: ...
