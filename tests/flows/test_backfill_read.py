"""The backfill reads its low-cardinality string columns as dictionary codes as well
(:func:`flows.backfill_events.read_events`), and the validator checks those columns once
per distinct value: the table it returns, the rows it accepts and the reasons it gives are
those of the plain read, and the job's files are byte for byte the same."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import features.validate_table as vt
from features.reference import REFERENCE
from features.schema import EventSchema, Field, FieldType
from flows.backfill import run_backfill
from flows.backfill_events import read_events
from flows.simulate import SimulationConfig, simulate

T0 = 1_767_225_600_000  # 2026-01-01 UTC, epoch ms
BAD_CODES = ["eur", "EURO", "", "E1R", None, "ÉUR", "usd"]
BAD_COUNTRIES = ["fr", "F", "FRA", None, "  "]


def _events(n: int = 6_000, seed: int = 11) -> pa.Table:
    cfg = SimulationConfig(events=n, cards=n // 50, merchants=max(n // 1000, 1), days=5.0,
                           seed=seed)  # fmt: skip
    table = simulate(cfg)
    codes, countries = table.column("currency").to_pylist(), table.column("country").to_pylist()
    for k, i in enumerate(range(7, n, 97)):
        codes[i] = BAD_CODES[k % len(BAD_CODES)]
    for k, i in enumerate(range(11, n, 131)):
        countries[i] = BAD_COUNTRIES[k % len(BAD_COUNTRIES)]
    for name, values in (("currency", codes), ("country", countries)):
        i = table.schema.get_field_index(name)
        table = table.set_column(i, table.schema.field(i), pa.array(values, pa.string()))
    return table


def test_read_events_is_the_plain_read_plus_the_small_dictionaries(tmp_path: Path) -> None:
    table = _events()
    path = tmp_path / "events.parquet"
    pq.write_table(table, path, row_group_size=1_000)  # a dictionary per row group
    read, encoded = read_events(path, REFERENCE.schema)
    plain = pq.read_table(path)
    assert read.schema.equals(plain.schema, check_metadata=True)
    assert read.equals(plain)
    assert [len(c) for c in read.column("currency").chunks] == [
        len(c) for c in plain.column("currency").chunks
    ]
    # the ids are unique (no small dictionary), the codes are a handful of values
    assert sorted(encoded) == ["country", "currency"]
    for name, codes in encoded.items():
        assert pa.types.is_dictionary(codes.type)
        assert pc.cast(codes, pa.string()).equals(plain.column(name))

    pq.write_table(table, path, use_dictionary=False)
    read, encoded = read_events(path, REFERENCE.schema)
    assert encoded == {} and read.equals(pq.read_table(path))


SCHEMA = EventSchema(
    fields=(
        Field("id", FieldType.STRING, min_length=1),
        Field("code", FieldType.STRING, pattern="[A-Z]{3}", min_length=3, max_length=3),
        Field("kind", FieldType.STRING, required=False, allowed=("a", "b")),
        # a look-ahead: RE2 refuses it, so Python's re checks the values
        Field("tag", FieldType.STRING, pattern="(?=x)[a-z]+"),
        Field("t", FieldType.TIMESTAMP),
    ),
    event_id="id",
    event_time="t",
)


@pytest.mark.parametrize("chunks", [1, 3])
def test_rules_over_the_codes_equal_the_rules_over_every_row(
    chunks: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = 300
    columns = {
        "id": [f"e{i}" for i in range(n)],
        "code": [["EUR", "usd", "GBP", None, "EURO", "", "ÉUR"][i % 7] for i in range(n)],
        "kind": [["a", "b", None, "c", "A"][i % 5] for i in range(n)],
        "tag": [["xy", "ab", "x", None, "x1"][i % 5] for i in range(n)],
    }
    step = -(-n // chunks)
    table = pa.Table.from_batches(
        [pa.record_batch({**{k: pa.array(v[lo : lo + step], pa.string())
                             for k, v in columns.items()},
                          "t": pa.array(range(T0 + lo, T0 + min(lo + step, n)), pa.int64())})
         for lo in range(0, n, step)]
    )  # fmt: skip
    encoded = {name: pc.dictionary_encode(table.column(name)) for name in ("code", "kind", "tag")}
    seen: list[int] = []
    string_ok = vt._string_ok

    def counting(f: Field, value: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
        seen.append(len(value))
        return string_ok(f, value)

    monkeypatch.setattr(vt, "_string_ok", counting)
    valid, rejects = vt.validate_table(SCHEMA, table, encoded)
    by_codes = seen[:]
    seen.clear()
    valid_plain, rejects_plain = vt.validate_table(SCHEMA, table)

    assert valid.equals(valid_plain) and valid.schema.equals(valid_plain.schema)
    assert rejects.equals(rejects_plain) and rejects.schema.equals(rejects_plain.schema)
    assert 0 < valid.num_rows < n and rejects.column("reason").null_count == 0
    # the three encoded columns were checked once per distinct value of each chunk
    distinct = sum(len(c.dictionary) for codes in encoded.values() for c in codes.chunks)
    assert sorted(by_codes) == sorted([n] + [len(c.dictionary) for codes in encoded.values()
                                             for c in codes.chunks])  # fmt: skip
    assert sum(by_codes) == n + distinct < 2 * n
    assert sorted(seen) == [n] * 4


def test_job_on_dictionary_encoded_codes_writes_the_plain_files_bytes(tmp_path: Path) -> None:
    table = _events()
    with_codes, plain = tmp_path / "codes.parquet", tmp_path / "plain.parquet"
    pq.write_table(table, with_codes, row_group_size=1_500)
    pq.write_table(table, plain, use_dictionary=False, row_group_size=1_500)
    a = run_backfill(REFERENCE, with_codes, tmp_path / "a")
    b = run_backfill(REFERENCE, plain, tmp_path / "b")
    assert a.rejected == b.rejected > 0
    files = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.parquet"))
    assert len(files) == 5
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f


def test_dask_split_validates_the_codes_and_writes_the_plain_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cloudpickle

    from features.validate import Validator
    from flows.backfill_split import split_piece

    table = _events()
    with_codes, plain = tmp_path / "codes.parquet", tmp_path / "plain.parquet"
    pq.write_table(table, with_codes, row_group_size=2_500)
    pq.write_table(table, plain, use_dictionary=False, row_group_size=2_500)
    hints: list[list[str]] = []
    validate = Validator.validate_table

    def recording(self: Validator, t: pa.Table, *encoded: object) -> tuple[pa.Table, pa.Table]:
        hints.append(sorted(encoded[0]) if encoded and encoded[0] else [])
        return validate(self, t, *encoded)  # type: ignore[arg-type]

    monkeypatch.setattr(Validator, "validate_table", recording)
    blob = cloudpickle.dumps(REFERENCE)
    out = {}
    for path in (with_codes, plain):
        tmp = tmp_path / path.stem
        split_piece(blob, str(path), 1, 2_500, str(tmp), 2, 1_000, 0)
        out[path.stem] = {
            kind: pa.ipc.open_file(str(tmp / kind / "000000.arrow")).read_all()
            for kind in ("valid", "rejects")
        }
    assert hints == [["country", "currency"]] * 3 + [[]] * 3  # batches of 1,000 rows
    for kind in ("valid", "rejects"):
        assert out["codes"][kind].equals(out["plain"][kind])
        assert out["codes"][kind].schema.equals(out["plain"][kind].schema, check_metadata=True)
    assert out["codes"]["rejects"].num_rows > 0
