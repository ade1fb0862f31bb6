"""Opening the files a command reads, with errors a user can act on.

Every reader of an input (events, spine, features, replay, prediction log) goes through
here, so a missing file says ``no such file`` with its path and a file that is not Parquet
says so, both naming the input, instead of pyarrow's wording.

>>> read_parquet("missing.parquet", "events")
Traceback (most recent call last):
...
flows.inputs.MissingInputError: events: no such file: missing.parquet
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from features.schema import SchemaError


class MissingInputError(FileNotFoundError):
    """An input file that is not there (``str()`` is the whole message)."""

    def __str__(self) -> str:
        return str(self.args[0])


class UnreadableInputError(SchemaError):
    """An input file that exists but is not Parquet (a ``SchemaError``, as the backfill
    always raised for it; so a ``ValueError`` too)."""


def require_file(path: str | Path, what: str) -> Path:
    """``path`` as a :class:`~pathlib.Path`, or :class:`MissingInputError` naming ``what``
    (a folder counts: pyarrow reads a folder of Parquet files as one table)."""
    path = Path(path)
    if not path.exists():
        raise MissingInputError(f"{what}: no such file: {path}")
    return path


def read_parquet(path: str | Path, what: str, **kwargs: Any) -> pa.Table:
    """``pq.read_table(path, **kwargs)`` with the errors above."""
    path = require_file(path, what)
    try:
        return pq.read_table(path, **kwargs)
    except (OSError, pa.ArrowInvalid) as exc:
        raise UnreadableInputError(f"{what}: cannot read {path} as Parquet ({exc})") from None


def read_parquet_schema(path: str | Path, what: str) -> pa.Schema:
    """The schema only (cheap: the footer), with the errors above; for a command that
    reads the file later, in another process or deep in a flow."""
    path = require_file(path, what)
    try:
        if path.is_dir():  # a folder of Parquet files, read as one table
            import pyarrow.dataset as ds

            return ds.dataset(path, format="parquet").schema
        return pq.read_schema(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise UnreadableInputError(f"{what}: cannot read {path} as Parquet ({exc})") from None
