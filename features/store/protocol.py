"""What every online-store backend offers, and what its callers may catch.

A store holds, per entity, the as-of-last-event feature values and the state bytes the
scorer finalizes at request time, in Feast's layout so the Feast SDK reads what we write.
Choose a backend with :func:`features.store.open_store`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol


class StoreUnavailableError(ConnectionError):
    """The online store cannot be reached; the message says which and how to start it."""


class OnlineRow(NamedTuple):
    """One entity's write: as-of-last-event values (definition order) and state bytes."""

    entity_id: int
    event_ts_ms: int
    values: Sequence[float | int]
    state: bytes


class OnlineStore(Protocol):
    def write(self, entity: str, rows: Sequence[OnlineRow]) -> None: ...

    def read_states(
        self, keys: Sequence[tuple[str, int]], bootstrap: bool = False
    ) -> list[bytes | None]: ...

    def close(self) -> None: ...
