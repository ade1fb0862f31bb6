"""Labels: the feedback that arrives after the prediction, and its join to the log.

A label is ``{<event id>, label, label_time}``: the definitions' event id field (with its
own rules), the label in the type of the definitions' label column, and when it became
known. Its rules live in a small :class:`~features.schema.EventSchema` built from the
definitions, so :class:`~features.validate.Validator` checks one Kafka message and a
whole Parquet table with the same reasons as events. A labels table is a log: one id may
have several labels (a chargeback, then its reversal); :func:`latest` keeps the one with
the latest ``label_time`` (ties: the later row), :func:`known_at` first drops what was
not yet known at a time.

A prediction counts for quality only when its event is older than ``as_of - horizon``:
by then its label is due, so a missing label means a negative. A younger prediction is
not counted at all, labelled or not (:func:`due`).

>>> from features.reference import REFERENCE
>>> v = Validator(label_schema(REFERENCE))
>>> v.parse(b'{"transaction_id": "t1", "label": true, "label_time": "2026-01-09T10:00:00Z"}')
Label(transaction_id='t1', label=True, label_time=1767952800000)
>>> v.parse(b'{"transaction_id": "t1", "label": "yes", "label_time": 0}')
Traceback (most recent call last):
...
features.schema.InvalidEventError: label: must be a boolean, got str
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features.definitions import FeatureSet
from features.schema import EventSchema, Field, FieldType, SchemaError
from features.validate import Validator

__all__ = [
    "LABEL",
    "LABEL_TIME",
    "due",
    "join",
    "known_at",
    "label_schema",
    "latest",
    "read_labels",
    "validate_labels",
    "write_labels",
]

LABEL = "label"
LABEL_TIME = "label_time"
_MS = pa.timestamp("ms", tz="UTC")


def label_schema(fs: FeatureSet) -> EventSchema:
    """The label event of ``fs``: its event id field as declared, ``label`` typed as its
    label column (required here), ``label_time``."""
    if fs.label is None:
        raise ValueError(f"label: the definitions (project {fs.project}) name no label column")
    ident = fs.schema.field(fs.schema.event_id)
    label = dataclasses.replace(fs.schema.field(fs.label), name=LABEL, required=True)
    schema = EventSchema(
        fields=(ident, label, Field(LABEL_TIME, FieldType.TIMESTAMP)),
        event_id=ident.name,
        event_time=LABEL_TIME,
    )
    schema.record.__name__ = "Label"
    return schema


def empty_labels(fs: FeatureSet) -> pa.Table:
    s = label_schema(fs)
    ident, label = s.fields[0], s.fields[1]
    kind = pa.bool_() if label.type is FieldType.BOOL else pa.int64()
    return pa.table(
        {ident.name: pa.array([], pa.string()), LABEL: pa.array([], kind), LABEL_TIME: []},
        schema=pa.schema([(ident.name, pa.string()), (LABEL, kind), (LABEL_TIME, _MS)]),
    )


def validate_labels(fs: FeatureSet, table: pa.Table) -> tuple[pa.Table, pa.Table]:
    """(valid labels: id, label, label_time as timestamp[ms, UTC], in file order;
    rejects: the original rows with ``row`` and ``reason``)."""
    s = label_schema(fs)
    valid, rejects = Validator(s).validate_table(table)
    return valid.select([*s.names]), rejects


def read_labels(fs: FeatureSet, path: Path) -> tuple[pa.Table, pa.Table]:
    """A labels Parquet file, validated (see :func:`validate_labels`)."""
    try:
        table = pq.read_table(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"labels: {path} does not exist") from None
    except (OSError, pa.ArrowInvalid) as exc:
        raise ValueError(f"labels: cannot read {path} as Parquet ({exc})") from None
    try:
        return validate_labels(fs, table)
    except SchemaError as exc:
        raise SchemaError(f"labels {path}: {exc}") from None


def write_labels(table: pa.Table, path: Path) -> None:
    """Write atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    tmp.rename(path)


def known_at(labels: pa.Table, as_of_ms: int | None) -> pa.Table:
    """The labels whose ``label_time`` is at or before ``as_of_ms`` (None: all)."""
    if as_of_ms is None:
        return labels
    ms = pc.cast(labels.column(LABEL_TIME), pa.int64())
    return labels.filter(pc.less_equal(ms, as_of_ms))


def latest(labels: pa.Table) -> pa.Table:
    """One label per id: the latest ``label_time``; on a tie the later row wins.

    >>> t = pa.table({"id": ["a", "b", "a", "a"], "label": [True, False, False, True],
    ...               "label_time": pa.array([5, 1, 9, 9], pa.int64()).cast(_MS)})
    >>> latest(t).to_pydict()["label"], latest(t).to_pydict()["id"]
    ([True, False], ['a', 'b'])
    """
    ident = labels.column_names[0]
    n = labels.num_rows
    if n == 0:
        return labels
    keyed = labels.append_column("_row", pa.array(np.arange(n, dtype=np.int64)))
    order = pc.sort_indices(
        keyed, [(ident, "ascending"), (LABEL_TIME, "ascending"), ("_row", "ascending")]
    )
    ids = labels.column(ident).take(order)
    ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    last = np.ones(n, dtype=bool)
    if n > 1:
        last[:-1] = pc.not_equal(ids.slice(0, n - 1), ids.slice(1)).to_numpy(zero_copy_only=False)
    return labels.take(order.filter(pa.array(last)))


def join(predictions: pa.Table, labels: pa.Table, as_of_ms: int | None = None) -> pa.Table:
    """``predictions`` with ``label`` and ``label_time`` added (null where no label was
    known at ``as_of_ms``), matched on the first column of ``labels`` (the event id).
    Row order and count are kept."""
    ident = labels.column_names[0]
    if ident not in predictions.column_names:
        raise SchemaError(
            f"column '{ident}': missing from the prediction log (the event id the labels name)"
        )
    lab = latest(known_at(labels, as_of_ms))
    idx = pc.index_in(predictions.column(ident), value_set=lab.column(ident).combine_chunks())
    out = predictions
    for name in (LABEL, LABEL_TIME):
        if name in out.column_names:
            out = out.drop_columns([name])
        out = out.append_column(name, lab.column(name).take(idx))
    return out


def due(event_ms: np.ndarray, as_of_ms: int, horizon_ms: int) -> np.ndarray:
    """Predictions whose label is due by ``as_of_ms``: event time <= as_of - horizon.

    >>> due(np.array([0, 5, 10]), as_of_ms=15, horizon_ms=10).tolist()
    [True, True, False]
    """
    return np.asarray(event_ms) <= as_of_ms - horizon_ms


def outcome(joined: pa.Table) -> np.ndarray:
    """1.0 for a positive label, 0.0 otherwise (a missing label of a due prediction is a
    negative: use with :func:`due`)."""
    lab = joined.column(LABEL)
    y = pc.fill_null(pc.cast(lab, pa.int64()), 0).to_numpy(zero_copy_only=False)
    return (np.asarray(y) != 0).astype(np.float64)
