"""The event schema: typed fields with rules, declared once by the user's definitions.

Every validator derives from it (one event and a whole table: :mod:`features.validate`;
the native fast path: :func:`features.native.event_parser`, parameters from these fields;
the serving request: :mod:`serving.convert`), so no rule is written twice.

>>> s = EventSchema(
...     fields=(Field("click_id", FieldType.STRING, min_length=1, max_length=64),
...             Field("user_id", FieldType.INT64, min=0),
...             Field("dwell_s", FieldType.FLOAT64, min=0, max=3600),
...             Field("ts", FieldType.TIMESTAMP)),
...     event_id="click_id", event_time="ts")
>>> s.field("dwell_s").rule_text()
'finite, >= 0 and <= 3600'
>>> EventSchema(fields=s.fields, event_id="click_id", event_time="when")
Traceback (most recent call last):
...
ValueError: event_time: 'when' is not a field of the schema (fields: click_id, user_id, dwell_s, ts)
"""

from __future__ import annotations

import re
from collections import namedtuple
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from operator import itemgetter
from typing import Any

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def epoch_ms(dt: datetime) -> int:
    """Epoch milliseconds of a timezone-aware datetime."""
    return (dt - _EPOCH) // timedelta(milliseconds=1)


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
#: default bounds of a timestamp field: [2000-01-01, 2100-01-01) (far past / far future)
TIME_MIN_MS = epoch_ms(datetime(2000, 1, 1, tzinfo=UTC))
TIME_MAX_MS = epoch_ms(datetime(2100, 1, 1, tzinfo=UTC))


class InvalidEventError(ValueError):
    """An event broke a rule; the message starts with the field name."""


class SchemaError(ValueError):
    """An events file cannot be read as events at all (missing column, wrong type)."""


class FieldType(StrEnum):
    INT64 = "int64"
    FLOAT64 = "float64"
    STRING = "string"
    BOOL = "bool"
    #: RFC 3339 with an offset, or epoch milliseconds; held as epoch ms (int) in an event
    TIMESTAMP = "timestamp"


#: the field types an aggregation may read
NUMERIC = frozenset({FieldType.INT64, FieldType.FLOAT64})


def _num(x: float | int) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else repr(x)


def _day(ms: int) -> str:
    dt = _EPOCH + timedelta(milliseconds=ms)
    return dt.strftime("%Y-%m-%d") if ms % 86_400_000 == 0 else dt.isoformat()


@dataclass(frozen=True)
class Field:
    """One event field and its rules.

    ``min``/``max`` bound numbers (and timestamps, in epoch ms); they are inclusive unless
    ``min_exclusive``/``max_exclusive``. Floats must also be finite. ``min_length``,
    ``max_length``, ``pattern`` (a full match, Python ``re``; ``hint`` says it in words) and
    ``allowed`` apply to strings (``allowed`` also to integers). An optional field may be
    absent or null.
    """

    name: str
    type: FieldType
    required: bool = True
    min: float | int | None = None
    max: float | int | None = None
    min_exclusive: bool = False
    max_exclusive: bool = False
    min_length: int | None = None
    max_length: int | None = None
    pattern: str | None = None
    hint: str | None = None
    allowed: tuple[Any, ...] | None = None
    description: str = ""
    _regex: re.Pattern[str] | None = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"name: {self.name!r} is not a lower_snake identifier")
        if not isinstance(self.type, FieldType):
            raise ValueError(f"{self.name}: type {self.type!r} is not a FieldType")
        t = self.type
        if t is FieldType.INT64:
            lo = INT64_MIN if self.min is None else self.min
            hi = INT64_MAX if self.max is None else self.max
            if int(lo) != lo or int(hi) != hi:
                raise ValueError(f"{self.name}: int64 bounds must be whole numbers")
            # integers: an exclusive bound is the inclusive one next to it (one rule form)
            object.__setattr__(self, "min", int(lo) + (1 if self.min_exclusive else 0))
            object.__setattr__(self, "max", int(hi) - (1 if self.max_exclusive else 0))
            object.__setattr__(self, "min_exclusive", False)
            object.__setattr__(self, "max_exclusive", False)
        elif t is FieldType.TIMESTAMP:
            if self.min is None:
                object.__setattr__(self, "min", TIME_MIN_MS)
            if self.max is None:
                object.__setattr__(self, "max", TIME_MAX_MS)
                object.__setattr__(self, "max_exclusive", True)
        elif (self.min is not None or self.max is not None) and t is not FieldType.FLOAT64:
            raise ValueError(f"{self.name}: min/max apply to numbers and timestamps, not {t}")
        if t is not FieldType.STRING and (
            self.min_length is not None or self.max_length is not None or self.pattern
        ):
            raise ValueError(f"{self.name}: length and pattern rules apply to strings, not {t}")
        if self.allowed is not None and t not in (FieldType.STRING, FieldType.INT64):
            raise ValueError(f"{self.name}: allowed values apply to strings and integers")
        if self.allowed is not None:
            object.__setattr__(self, "allowed", tuple(self.allowed))
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"{self.name}: min {self.min} is above max {self.max}")
        regex = None
        if self.pattern is not None:
            try:
                regex = re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(
                    f"{self.name}: pattern {self.pattern!r} is invalid ({exc})"
                ) from None
        object.__setattr__(self, "_regex", regex)

    @property
    def regex(self) -> re.Pattern[str] | None:
        return self._regex

    def rule_text(self) -> str:
        """The numeric rule in words, as error messages say it: ``finite, > 0 and <= 10``."""
        parts = ["finite"] if self.type is FieldType.FLOAT64 else []
        if self.min is not None:
            parts.append(f"{'>' if self.min_exclusive else '>='} {_num(self.min)}")
        if self.max is not None:
            parts.append(f"{'<' if self.max_exclusive else '<='} {_num(self.max)}")
        if len(parts) <= 1:
            return "".join(parts)
        return ", ".join(parts[:-1]) + " and " + parts[-1]

    def range_text(self) -> str:
        """``lo..hi`` for integers, ``2000-01-01..2100-01-01`` for timestamps."""
        if self.type is FieldType.TIMESTAMP:
            assert self.min is not None and self.max is not None
            return f"{_day(int(self.min))}..{_day(int(self.max))}"
        return f"{_num(self.min or 0)}..{_num(self.max or 0)}"

    def spec(self) -> dict[str, Any]:
        return {
            "name": self.name, "type": self.type.value, "required": self.required,
            "min": self.min, "max": self.max, "min_exclusive": self.min_exclusive,
            "max_exclusive": self.max_exclusive, "min_length": self.min_length,
            "max_length": self.max_length, "pattern": self.pattern,
            "allowed": list(self.allowed) if self.allowed is not None else None,
        }  # fmt: skip


@dataclass(frozen=True)
class EventSchema:
    """The events a definition reads: its fields, which one is the event id (dedup),
    which one the event time. Entity keys and the Kafka key are named by the entities
    (:class:`features.definitions.FeatureSet` checks them against this schema)."""

    fields: tuple[Field, ...]
    event_id: str
    event_time: str
    max_message_bytes: int = 16 * 1024
    _record: type = field(init=False, repr=False, compare=False, hash=False)
    _index: dict[str, int] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fields", tuple(self.fields))
        names = [f.name for f in self.fields]
        if not names:
            raise ValueError("fields: a schema needs at least one field")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"fields: duplicate field names {dup}")
        index = {n: i for i, n in enumerate(names)}
        object.__setattr__(self, "_index", index)
        self._require(
            "event_id", self.event_id, (FieldType.STRING,), "the event id must be a string"
        )
        self._require("event_time", self.event_time, (FieldType.TIMESTAMP,), "must be a timestamp")
        if self.max_message_bytes <= 0:
            raise ValueError("max_message_bytes: must be positive")
        object.__setattr__(self, "_record", _record_type(self))

    def _require(self, what: str, name: str, types: tuple[FieldType, ...], why: str) -> Field:
        f = self.get(name)
        if f is None:
            raise ValueError(
                f"{what}: {name!r} is not a field of the schema (fields: {', '.join(self.names)})"
            )
        if f.type not in types:
            raise ValueError(f"{what}: {name!r} is {f.type}; {why}")
        if not f.required:
            raise ValueError(f"{what}: {name!r} must be required")
        return f

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def get(self, name: str) -> Field | None:
        i = self._index.get(name)
        return None if i is None else self.fields[i]

    def field(self, name: str) -> Field:
        f = self.get(name)
        if f is None:
            raise KeyError(name)
        return f

    def position(self, name: str) -> int:
        """The position of ``name`` in an event record (schema order)."""
        return self._index[name]

    def getter(self, name: str) -> itemgetter[Any]:
        return itemgetter(self._index[name])

    @property
    def record(self) -> type:
        """The event record: a named tuple with one attribute per field, in schema order
        (the time as epoch ms; optional fields default to None; ``event_time_ms`` and
        ``event_id`` name the time and id whatever the schema calls them)."""
        return self._record

    def spec(self) -> dict[str, Any]:
        return {
            "fields": [f.spec() for f in self.fields],
            "event_id": self.event_id,
            "event_time": self.event_time,
            "max_message_bytes": self.max_message_bytes,
        }


def _record_type(schema: EventSchema) -> type:
    names = schema.names
    optional_tail = 0
    for f in reversed(schema.fields):
        if f.required:
            break
        optional_tail += 1
    base = namedtuple("Event", names, defaults=(None,) * optional_tail)  # type: ignore[misc]
    time_at, id_at = schema.position(schema.event_time), schema.position(schema.event_id)
    ns: dict[str, Any] = {
        "__slots__": (),
        "__doc__": f"One valid event of the schema ({', '.join(names)}).",
        # the class is made per schema, so pickle cannot find it by name: events cross
        # Bytewax workers and processes as plain tuples (every path reads by position)
        "__reduce__": lambda self: (tuple, (tuple(self),)),
    }
    for alias, at, doc in (
        ("event_time_ms", time_at, "the event time, epoch ms"),
        ("event_id", id_at, "the event id (dedup key)"),
    ):
        if alias not in names:
            ns[alias] = property(itemgetter(at), doc=doc)
    return type("Event", (base,), ns)
