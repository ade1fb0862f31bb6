"""The backfill job end to end: schema errors, rejects, duplicates and late rows, spine
passthrough, the Feast offline tables, and end states byte-identical to an engine replay."""

from __future__ import annotations

import math
import random
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from features.backfill import window_features
from features.definitions import (
    MS_PER_DAY,
    MS_PER_HOUR,
    MS_PER_MINUTE,
    Aggregation,
    Entity,
    FeatureSet,
    Op,
    Window,
)
from features.feast_objects import offline_table_name, state_field
from features.reference import REFERENCE
from features.reference_codec import StateCodec
from features.reference_engine import Engine, EntityState, txid_hash
from features.schema import SchemaError
from flows.backfill import BackfillReport, end_states, load_events, run_backfill
from flows.simulate import SimulationConfig, simulate

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
SCHEMA = pa.schema(
    [("transaction_id", pa.string()), ("card_id", pa.int64()), ("merchant_id", pa.int64()),
     ("amount", pa.float64()), ("currency", pa.string()), ("country", pa.string()),
     ("mcc", pa.int32()), ("event_time", pa.int64())]
)  # fmt: skip

# A second feature set that reaches the codec paths the reference set does not: two
# fields (raw ties broken by a tuple), a min, and a count-only entity without values.
CARD, MERCHANT = Entity("card", "card_id"), Entity("merchant", "merchant_id")
WIDE = FeatureSet(
    schema=REFERENCE.schema,
    entities=(CARD, MERCHANT),
    primary=CARD,
    aggregations=(
        Aggregation(CARD, Op.SUM, Window(timedelta(hours=1), timedelta(minutes=5)), "amount"),
        Aggregation(CARD, Op.MIN, Window(timedelta(days=1), timedelta(hours=1)), "mcc"),
        Aggregation(CARD, Op.STD, Window(timedelta(days=2), timedelta(hours=1)), "amount"),
        Aggregation(CARD, Op.SINCE_LAST),
        Aggregation(MERCHANT, Op.COUNT, Window(timedelta(hours=1), timedelta(minutes=5))),
    ),
)


def _events(seed: int, n: int, extreme: bool = False) -> list[dict]:
    """Random arrival-ordered events: ties, hop-boundary times, out-of-order and far-late
    arrivals, exact duplicates, repeated amounts (std cancellation), tiny and huge values."""
    rnd = random.Random(seed)
    steps = [0, 1, MS_PER_MINUTE, 5 * MS_PER_MINUTE, MS_PER_HOUR, MS_PER_DAY, 9 * MS_PER_DAY]
    amounts = [0.1, 33.33, 5e6, 1.0]
    t, out = T0, []
    for i in range(n):
        t += rnd.choice([*steps, rnd.randrange(3 * MS_PER_HOUR)])
        ts = t - rnd.choice([0, 0, 0, rnd.randrange(10 * MS_PER_DAY)])
        amount = rnd.choice(
            [rnd.randint(1, 10**9) / 100, rnd.choice(amounts), rnd.random() * 1e-3 + 1e-9]
            + ([1e-300, 9_999_999.99, 5e-324] if extreme else [])
        )
        out.append(
            {"transaction_id": f"x{i}", "card_id": rnd.randrange(4), "merchant_id": rnd.randrange(3),
             "amount": amount, "currency": "EUR", "country": "FR", "mcc": rnd.choice([5411, 42, 0]),
             "event_time": ts}
        )  # fmt: skip
    for _ in range(rnd.randrange(8)):
        out.insert(rnd.randrange(len(out) + 1), dict(rnd.choice(out)))
    return out


def _replay(fs: FeatureSet, events: list[dict]) -> dict[str, dict[int, EntityState]]:
    """The stream's way: every event through each entity's engine in arrival order (each
    entity decides duplicates and lateness on its own events)."""
    engine = Engine(fs)
    states: dict[str, dict[int, EntityState]] = {e.name: {} for e in fs.entities}
    for ev in events:
        for e in fs.entities:
            layout = engine.layout(e.name)
            state = states[e.name].setdefault(ev[e.join_key], layout.new_state())
            vals = tuple(float(ev[f]) for f in layout.fields if f != "__count__")
            layout.update(state, ev["event_time"], vals, txid_hash(ev["transaction_id"]))
    return states


@pytest.mark.parametrize("fs", [REFERENCE, WIDE], ids=["reference", "wide"])
def test_end_states_and_features_equal_engine_replay(fs: FeatureSet) -> None:
    engine = Engine(fs)
    for seed in range(40):
        events = _events(seed, random.Random(seed).randint(1, 250), extreme=seed % 5 == 4)
        _, accepted, _, _ = load_events(fs, pa.Table.from_pylist(events, SCHEMA), BackfillReport())
        replayed = _replay(fs, events)
        want = {
            name: {k: StateCodec(engine.layout(name)).encode(s) for k, s in per.items()}
            for name, per in replayed.items()
        }
        assert end_states(fs, accepted) == want, f"seed {seed}"
        # the vectorized features (exact sums, lifting fallbacks) agree with finalize
        rnd = random.Random(seed)
        scale = float(max(accepted.by_entity["card"].fields["amount"], default=1.0))
        for e in fs.entities:
            layout = engine.layout(e.name)
            queries = [
                (k, rnd.randint(s.max_seen - layout.horizon_ms, s.max_seen + 2 * MS_PER_HOUR))
                for k, s in replayed[e.name].items()
                for _ in range(3)
                if s.max_seen is not None
            ]
            q_keys, q_t = (np.array(c, dtype=np.int64) for c in zip(*queries, strict=True))
            mine = accepted.by_entity[e.name]
            got = window_features(fs, e.name, mine.keys, mine.ts, mine.fields, q_keys, q_t)
            for i, (k, t) in enumerate(queries):
                for pos, value in enumerate(layout.finalize(replayed[e.name][k], t)):
                    a = fs.for_entity(e)[pos]
                    mine = float(got[a.name][i])
                    if a.op in (Op.COUNT, Op.MIN, Op.MAX, Op.SINCE_LAST) or math.isnan(value):
                        assert mine == value or (math.isnan(mine) and math.isnan(value)), a.name
                    else:
                        tol = 1e-9 * scale if a.op is Op.STD else 0.0
                        assert math.isclose(mine, value, rel_tol=1e-9, abs_tol=tol), a.name


def _write(rows: list[dict], path: Path, schema: pa.Schema = SCHEMA) -> Path:
    pq.write_table(pa.Table.from_pylist(rows, schema), path)
    return path


@pytest.mark.parametrize(
    ("drop", "retype", "column"),
    [("amount", None, "amount"), (None, ("card_id", pa.string()), "card_id")],
)
def test_malformed_events_file_fails_naming_the_column(
    tmp_path: Path, drop: str | None, retype: tuple[str, pa.DataType] | None, column: str
) -> None:
    table = pa.Table.from_pylist(_events(1, 20), SCHEMA)
    if drop:
        table = table.drop_columns([drop])
    if retype:
        name, typ = retype
        table = table.set_column(table.schema.get_field_index(name), name, table[name].cast(typ))
    pq.write_table(table, tmp_path / "events.parquet")
    with pytest.raises(SchemaError, match=f"column '{column}'"):
        run_backfill(REFERENCE, tmp_path / "events.parquet", tmp_path / "out")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(SchemaError, match="cannot read"):
        run_backfill(REFERENCE, tmp_path / "junk.parquet", tmp_path / "out")


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pa.Table, BackfillReport]:
    """A simulated history made messy: invalid rows, duplicates and one far-late event."""
    out = tmp_path_factory.mktemp("backfill")
    table = simulate(SimulationConfig(events=3000, cards=60, merchants=15, days=12.0, seed=3))
    rows = table.to_pylist()
    for k, patch in enumerate([{"amount": -1.0}, {"currency": "eur"}, {"mcc": 10_000}]):
        rows.insert(50 * k + 7, {**rows[k], "transaction_id": f"bad{k}", **patch})
    rows += [dict(rows[i]) for i in (100, 200, 300)]  # duplicates arrive later
    late = {**rows[5], "transaction_id": "late0"}  # its card has moved on by 11 days
    late["event_time"] = rows[-1]["event_time"] - timedelta(days=11)
    late["card_id"] = max(rows, key=lambda r: r["event_time"])["card_id"]
    rows.append(late)
    events = pa.Table.from_pylist(rows, table.schema).append_column(
        "row_id", pa.array(np.arange(len(rows)) * 10)
    )
    pq.write_table(events, out / "events.parquet")
    spine = events.select(["card_id", "merchant_id", "event_time", "amount", "row_id"])
    spine = spine.take(pa.array(np.random.default_rng(0).permutation(spine.num_rows)[:500]))
    pq.write_table(spine, out / "spine.parquet")
    report = run_backfill(REFERENCE, out / "events.parquet", out / "out", out / "spine.parquet")
    run_backfill(REFERENCE, out / "events.parquet", out / "default")
    return out, events, report


def test_rejects_duplicates_and_late_rows_are_counted_and_written(
    job: tuple[Path, pa.Table, BackfillReport],
) -> None:
    out, events, report = job
    assert (report.rejected, report.duplicates, report.late) == (3, 3, 1)
    assert report.accepted == events.num_rows - 7
    rejects = pq.read_table(out / "out" / "rejects.parquet")
    assert sorted(rejects.column("transaction_id").to_pylist()) == ["bad0", "bad1", "bad2"]
    reasons = rejects.column("reason").to_pylist()
    assert [r.split(":")[0] for r in reasons] == ["amount", "currency", "mcc"]
    late = pq.read_table(out / "out" / "late.parquet")
    assert late.column("transaction_id").to_pylist() == ["late0"]
    assert late.column("late_for").to_pylist() == ["card,merchant"]  # both moved on


def test_spine_passthrough_keeps_extra_columns_in_order(
    job: tuple[Path, pa.Table, BackfillReport],
) -> None:
    out, _, _ = job
    spine = pq.read_table(out / "spine.parquet")
    got = pq.read_table(out / "out" / "features.parquet")
    assert got.column_names[: spine.num_columns] == spine.column_names
    assert got.column("row_id").equals(spine.column("row_id"))
    assert set(REFERENCE.feature_names) <= set(got.column_names)
    # the same rows in the default run (spine = the events) carry the same features
    full = pq.read_table(out / "default" / "features.parquet")
    at = pc.index_in(spine.column("row_id"), full.column("row_id"))
    for name in REFERENCE.feature_names:
        a, b = got.column(name).to_numpy(), full.column(name).take(at).to_numpy()
        assert np.array_equal(a, b, equal_nan=True), name


def test_feast_table_has_one_state_per_entity_on_its_last_row(
    job: tuple[Path, pa.Table, BackfillReport],
) -> None:
    out, _, report = job
    for entity in REFERENCE.entities:
        table = pq.read_table(out / "out" / "feast" / offline_table_name(entity))
        keys = table.column(entity.join_key).to_numpy()
        ts = table.column("event_timestamp").cast(pa.int64()).to_numpy()
        pairs = np.stack([keys, ts], axis=1)
        assert len(np.unique(pairs, axis=0)) == len(pairs)  # one row per (entity, time)
        has = table.column(state_field(entity)).is_valid().to_numpy(zero_copy_only=False)
        assert has.sum() == len(np.unique(keys)) == report.entities[entity.name]
        newest = {int(k): int(t) for k, t in zip(keys, ts, strict=True)}  # sorted by time
        assert all(newest[int(k)] == int(t) for k, t in zip(keys[has], ts[has], strict=True))
        # the row's features are the state's own values just after its newest event
        layout = Engine(REFERENCE).layout(entity.name)
        codec = StateCodec(layout)
        last = table.filter(pa.array(has)).to_pylist()
        for row in last[:: max(1, len(last) // 25)]:
            state = codec.decode(row[state_field(entity)])
            assert state.max_seen == round(row["event_timestamp"].timestamp() * 1000)
            for name, value in zip(layout.names, layout.as_of_last(state), strict=True):
                assert math.isclose(row[name], value, rel_tol=1e-9, abs_tol=1e-9) or (
                    math.isnan(row[name]) and math.isnan(value)
                ), name
