"""One Parquet file from Parquet files written apart, byte for byte the file one
``pyarrow.parquet.ParquetWriter`` would have written with their tables in order.

A Parquet file is ``PAR1``, the row groups' pages, a footer (Thrift compact protocol:
schema, row groups with the file offsets of their pages, key-value metadata) and
``PAR1``. The pages hold no file offsets and are encoded per row group, so a row group
encodes to the same bytes alone as inside a larger file (tested). The distributed
backfill encodes its output row groups as tasks, one file each (:mod:`flows.backfill_dask`);
:func:`stitch` copies their pages after each other and writes the footer of the whole:
the first piece's, with every piece's row groups, their offsets shifted by where their
pages now start, their ordinals renumbered and the row count summed.

>>> import pyarrow as pa, pyarrow.parquet as pq, tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> t = pa.table({"x": list(range(10)), "s": [str(i % 3) for i in range(10)]})
>>> pq.write_table(t, d / "whole.parquet", row_group_size=4)
>>> for i in range(3):
...     pq.write_table(t.slice(4 * i, 4), d / f"{i}.parquet")
>>> stitch([d / f"{i}.parquet" for i in range(3)], d / "stitched.parquet")
>>> (d / "stitched.parquet").read_bytes() == (d / "whole.parquet").read_bytes()
True
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAGIC = b"PAR1"

# compact protocol types
_TRUE, _FALSE, _BYTE, _I16, _I32, _I64, _DOUBLE, _BINARY = 1, 2, 3, 4, 5, 6, 7, 8
_LIST, _SET, _MAP, _STRUCT = 9, 10, 11, 12


@dataclass
class Field:
    """One field of a decoded struct: its id, compact type and value (``bool`` for the
    two boolean types, ``int``, ``float``, ``bytes``, :class:`List` or a list of
    :class:`Field` for a struct)."""

    id: int
    type: int
    value: Any


@dataclass
class List:
    type: int
    items: list[Any]


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def byte(self) -> int:
        self.at += 1
        return self.data[self.at - 1]

    def varint(self) -> int:
        shift = out = 0
        while True:
            b = self.byte()
            out |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return out

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def value(self, t: int) -> Any:
        if t in (_TRUE, _FALSE):  # only inside a list: one byte each
            return self.byte()
        if t == _BYTE:
            return self.byte()
        if t in (_I16, _I32, _I64):
            return self.zigzag()
        if t == _DOUBLE:
            self.at += 8
            return self.data[self.at - 8 : self.at]
        if t == _BINARY:
            n = self.varint()
            self.at += n
            return self.data[self.at - n : self.at]
        if t in (_LIST, _SET):
            head = self.byte()
            size, et = head >> 4, head & 0x0F
            if size == 15:
                size = self.varint()
            return List(et, [self.value(et) for _ in range(size)])
        if t == _STRUCT:
            return self.struct()
        raise ValueError(f"Parquet footer: Thrift type {t} not supported")

    def struct(self) -> list[Field]:
        fields: list[Field] = []
        last = 0
        while True:
            head = self.byte()
            if head == 0:
                return fields
            t, delta = head & 0x0F, head >> 4
            fid = last + delta if delta else self.zigzag()
            value = t == _TRUE if t in (_TRUE, _FALSE) else self.value(t)
            fields.append(Field(fid, t, value))
            last = fid


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _zigzag(n: int) -> bytes:
    return _varint((n << 1) ^ (n >> 63))


def _value(t: int, v: Any) -> bytes:
    if t in (_TRUE, _FALSE, _BYTE):
        return bytes([v])
    if t in (_I16, _I32, _I64):
        return _zigzag(v)
    if t == _DOUBLE:
        return bytes(v)
    if t == _BINARY:
        return _varint(len(v)) + bytes(v)
    if t in (_LIST, _SET):
        n = len(v.items)
        head = bytes([n << 4 | v.type]) if n < 15 else bytes([0xF0 | v.type]) + _varint(n)
        return head + b"".join(_value(v.type, x) for x in v.items)
    if t == _STRUCT:
        return encode(v)
    raise ValueError(f"Parquet footer: Thrift type {t} not supported")


def encode(fields: list[Field]) -> bytes:
    """A struct in the compact protocol, as the Thrift C++ library writes it."""
    out, last = bytearray(), 0
    for f in fields:
        t = (_TRUE if f.value else _FALSE) if f.type in (_TRUE, _FALSE) else f.type
        delta = f.id - last
        out += bytes([delta << 4 | t]) if 0 < delta <= 15 else bytes([t]) + _zigzag(f.id)
        if t not in (_TRUE, _FALSE):
            out += _value(t, f.value)
        last = f.id
    return bytes(out + b"\x00")


def decode(data: bytes) -> list[Field]:
    return _Reader(data).struct()


def _get(fields: list[Field], fid: int) -> Field | None:
    return next((f for f in fields if f.id == fid), None)


def _shift(fields: list[Field], ids: tuple[int, ...], by: int) -> None:
    for f in fields:
        if f.id in ids and f.value:  # 0: not set (Arrow writes ColumnChunk.file_offset so)
            f.value += by


# FileMetaData: 3 num_rows, 4 row_groups. RowGroup: 1 columns, 5 file_offset, 7 ordinal.
# ColumnChunk: 2 file_offset, 3 meta_data, 4/6 offset/column index offsets, 8 crypto.
# ColumnMetaData: 9 data, 10 index, 11 dictionary page offsets, 14 bloom filter offset.
_FILE_ROWS, _FILE_GROUPS = 3, 4
_GROUP_COLUMNS, _GROUP_OFFSET, _GROUP_ORDINAL = 1, 5, 7
_CHUNK_OFFSETS, _CHUNK_META = (2, 4, 6), 3
_META_OFFSETS = (9, 10, 11, 14)


def footer(path: Path) -> tuple[list[Field], int]:
    """A Parquet file's decoded footer and where it starts (= the end of its pages)."""
    with open(path, "rb") as f:
        f.seek(-8, os.SEEK_END)
        tail = f.read(8)
        if tail[4:] != MAGIC:
            raise ValueError(f"{path}: not a Parquet file")
        (length,) = struct.unpack("<i", tail[:4])
        end = f.seek(-8 - length, os.SEEK_END)
        meta = f.read(length)
    fields = decode(meta)
    if encode(fields) != meta:  # an exact round trip, or no stitching
        raise ValueError(f"{path}: footer does not re-encode to its own bytes")
    return fields, end


def _move_group(group: list[Field], by: int, ordinal: int) -> None:
    _shift(group, (_GROUP_OFFSET,), by)
    for f in group:
        if f.id == _GROUP_ORDINAL:
            f.value = ordinal
    columns = _get(group, _GROUP_COLUMNS)
    for chunk in columns.value.items if columns else []:
        if _get(chunk, 8) is not None or _get(chunk, 1) is not None:
            raise ValueError("Parquet footer: encrypted or external column chunks")
        _shift(chunk, _CHUNK_OFFSETS, by)
        meta = _get(chunk, _CHUNK_META)
        if meta is not None:
            _shift(meta.value, _META_OFFSETS, by)


def _copy(src: Path, start: int, count: int, dst: Any) -> None:
    with open(src, "rb") as f:
        at = start
        while count:
            try:
                n = os.copy_file_range(f.fileno(), dst.fileno(), count, at)
            except OSError:  # another filesystem or kernel: through user space
                f.seek(at)
                n = len(chunk := f.read(min(count, 1 << 24)))
                dst.write(chunk)
            if not n:
                raise ValueError(f"{src}: shorter than its footer says")
            at, count = at + n, count - n


class Stitcher:
    """An output file its pieces are appended to in order, each as soon as it is written
    (the distributed backfill copies finished row groups while later ones are encoded);
    :meth:`close` writes the footer."""

    def __init__(self, out: Path, first_in_place: bool = False) -> None:
        """With ``first_in_place``, ``out`` already holds the first piece: its pages stay
        where they are (its footer is cut off), and later pieces follow them."""
        self.out = out
        self._head: list[Field] | None = None
        self._rows = 0
        self._groups: list[list[Field]] = []
        self._pieces = 0
        if not first_in_place:
            self._dst = open(out, "wb", buffering=0)  # noqa: SIM115 (closed by close())
            self._dst.write(MAGIC)
            return
        fields, end = footer(out)
        self._dst = open(out, "r+b", buffering=0)  # noqa: SIM115 (closed by close())
        self._dst.truncate(end)
        self._dst.seek(end)
        self._groups_of(fields, 0)

    @property
    def count(self) -> int:
        """Pieces added so far."""
        return self._pieces

    def add(self, path: Path) -> None:
        fields, end = footer(path)
        by = self._dst.tell() - len(MAGIC)
        _copy(path, len(MAGIC), end - len(MAGIC), self._dst)
        self._groups_of(fields, by)

    def _groups_of(self, fields: list[Field], by: int) -> None:
        self._pieces += 1
        if self._head is None:
            self._head = fields
        num = _get(fields, _FILE_ROWS)
        self._rows += num.value if num else 0
        found = _get(fields, _FILE_GROUPS)
        for group in found.value.items if found else []:
            _move_group(group, by, len(self._groups))
            self._groups.append(group)

    def discard(self) -> None:
        """Close and remove the half-written file."""
        self._dst.close()
        self.out.unlink(missing_ok=True)

    def close(self) -> None:
        try:
            if self._head is None:
                raise ValueError(f"{self.out}: no pieces to stitch")
            for f in self._head:
                if f.id == _FILE_ROWS:
                    f.value = self._rows
                elif f.id == _FILE_GROUPS:
                    f.value = List(_STRUCT, self._groups)
            meta = encode(self._head)
            self._dst.write(meta + struct.pack("<i", len(meta)) + MAGIC)
        finally:
            self._dst.close()


def stitch(pieces: list[Path], out: Path) -> None:
    """``out``: the pieces' row groups in order; every piece written with the same
    schema and options (the first piece's footer is the template)."""
    s = Stitcher(out)
    try:
        for path in pieces:
            s.add(path)
    except BaseException:
        s.discard()
        raise
    s.close()
