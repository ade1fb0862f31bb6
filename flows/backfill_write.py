"""The backfill job's Parquet writes: options chosen by measurement, and each large file's
row groups encoded on parallel threads, then joined in order into the very bytes one
``write_table`` call would have written (:class:`flows.parquet_stitch.Stitcher`).

One ``write_table`` encodes a whole file on one thread: the last Feast table to be built
was written alone at the job's end (~0.4 s of 2M events' card table) while the other
core waited. Row groups are independent (pages hold no file offsets), so each is a task
writing its own file: the first in place, the others beside it, their pages then
appended to the first (in the kernel: ``copy_file_range``) under the joint footer, by the
task that finishes last.

>>> import pyarrow as pa, pyarrow.parquet as pq, tempfile, pathlib
>>> from concurrent.futures import ThreadPoolExecutor
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> t = pa.table({"x": list(range(10)), "s": [str(i % 3) for i in range(10)]})
>>> pq.write_table(t, d / "whole.parquet", row_group_size=4, **parquet_options(t.schema))
>>> with ThreadPoolExecutor(2) as pool:
...     write_in_groups(pool, t, d / "groups.parquet", row_group=4).finish()
>>> (d / "groups.parquet").read_bytes() == (d / "whole.parquet").read_bytes()
True
"""

from __future__ import annotations

import threading
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from flows.parquet_stitch import Stitcher

#: pyarrow's default largest row group (``write_table`` without ``row_group_size``)
ROW_GROUP = 1024 * 1024


def parquet_options(schema: pa.Schema) -> dict[str, Any]:
    """Parquet options chosen by measurement (docs/perf-plan.md, 2M events; the values
    read back are the same under any of them):

    * pages up to ``data_page_size`` (1 MB) instead of pyarrow's 20,000-row cap: every
      page rebuilds its buffers and levels, and the cap tripled the pages;
    * integers and times delta-encoded (``DELTA_BINARY_PACKED``), uncompressed: ids,
      counts and sorted times shrink more than snappy made them, for half its time;
    * floats and binary (the state columns) plain, uncompressed: a feature's mantissas
      barely compress, at twice the write time;
    * strings: dictionary pages, snappy; anything else snappy;
    * statistics on all but float and binary columns: the ids, times and passthrough
      columns users filter on keep theirs, a feature's min/max or a state blob's do not
      buy a reader anything.

    (The distributed backfill writes with these too.)"""

    def number(f: pa.Field) -> bool:
        return pa.types.is_integer(f.type) or pa.types.is_timestamp(f.type)

    def plain(f: pa.Field) -> bool:
        return pa.types.is_floating(f.type) or pa.types.is_binary(f.type)

    return {
        "use_dictionary": [f.name for f in schema if pa.types.is_string(f.type)],
        "compression": {f.name: "none" if number(f) or plain(f) else "snappy" for f in schema},
        "column_encoding": {f.name: "DELTA_BINARY_PACKED" for f in schema if number(f)},
        "write_statistics": [f.name for f in schema if not plain(f)],
        "max_rows_per_page": ROW_GROUP,
    }


def write(table: pa.Table, path: Path, row_group: int | None = None) -> None:
    """``table`` to ``path`` with :func:`parquet_options`, on this thread."""
    pq.write_table(table, path, row_group_size=row_group, **parquet_options(table.schema))


class PendingFile:
    """A file whose row groups are being encoded. The task that encodes its last row group
    joins them (in order, on that writer thread) as soon as all are written, so that the
    job's end waits only for the files encoded last, not for every file's join in turn on
    the main thread (2M events: ~0.15-0.3 CPU-s of serial copying and footers).
    :meth:`finish` waits for that join."""

    def __init__(self, path: Path, parts: list[Future[None]]) -> None:
        self.path, self._parts = path, parts
        self._joined: Future[None] = Future()
        self._left = len(parts)
        self._lock = threading.Lock()
        for part in parts:
            part.add_done_callback(self._part_done)

    def _part_done(self, _: Future[None]) -> None:
        with self._lock:
            self._left -= 1
            if self._left:
                return
        try:
            self._join()
        except BaseException as exc:  # handed to finish(), re-raised there
            self._joined.set_exception(exc)
        else:
            self._joined.set_result(None)

    def _join(self) -> None:
        """Every row group written: raise what a task raised, else append the others to
        the first and write the joint footer."""
        try:
            for part in self._parts:
                part.result()
            if len(self._parts) > 1:
                out = Stitcher(self.path, first_in_place=True)
                try:
                    for k in range(1, len(self._parts)):
                        out.add(_part(self.path, k))
                except BaseException:
                    out.discard()
                    raise
                out.close()
        finally:
            for k in range(1, len(self._parts)):
                _part(self.path, k).unlink(missing_ok=True)

    @property
    def joined(self) -> bool:
        """Whether the file is complete (or its writing failed)."""
        return self._joined.done()

    def finish(self) -> None:
        """Wait for the encoding and the join (raises what a task raised)."""
        self._joined.result()


def _part(path: Path, k: int) -> Path:
    return path.with_name(f".{path.name}.part{k}")


def write_in_groups(
    pool: Executor, table: pa.Table, path: Path, row_group: int = ROW_GROUP
) -> PendingFile:
    """``table`` to ``path`` as :func:`write` would write it, each row group of
    ``row_group`` rows a task on ``pool``; :meth:`PendingFile.finish` completes it."""
    n = table.num_rows
    cuts = range(0, max(n, 1), row_group)
    parts = [
        pool.submit(write, table.slice(lo, min(row_group, n - lo)), _part(path, k) if k else path)
        for k, lo in enumerate(cuts)
    ]
    return PendingFile(path, parts)
