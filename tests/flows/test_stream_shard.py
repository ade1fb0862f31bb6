"""The shard-batched state layout (``--state-layout sharded``) writes what the entity
layout writes: the same online rows, late output and dead letters on adversarial
histories (duplicates, too-late events, out-of-order, ties at hop edges, a restart
without recovery, idle eviction), and refuses the other layout's recovery directory."""

from __future__ import annotations

import itertools
import json
import sqlite3
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from bytewax.testing import run_main

from features.reference import REFERENCE
from features.store import StoreConfig, open_store
from flows import stream_entity, stream_io
from flows.simulate import SimulationConfig, simulate
from flows.stream import StreamConfig, build_flow
from flows.stream_io import Ingested
from flows.stream_shard import (
    SHARDS,
    STEP,
    ShardRouter,
    check_recovery,
    resolve_layout,
    shard_of,
    step_id,
)
from tests.integration import stream_support as sup

HOUR = 3_600_000


def _adversarial(seed: int = 4) -> pa.Table:
    """~3,000 simulated events over 12 days, then: local swaps (out of order), exact
    duplicates later on, copies of the first days' events at the end under new ids (too
    late for their card, maybe not for their merchant), ties at hop edges (same time,
    other amount), and invalid rows."""
    t = simulate(SimulationConfig(events=3000, cards=60, merchants=8, days=12.0, seed=seed))
    rows = t.to_pylist()
    rng = np.random.default_rng(seed)
    for i in rng.choice(len(rows) - 5, 80, replace=False):
        rows[i], rows[i + 4] = rows[i + 4], rows[i]
    for i in rng.choice(len(rows), 50, replace=False):
        rows.insert(min(len(rows), int(i) + 30), dict(rows[int(i)]))
    for k, i in enumerate(rng.choice(400, 40, replace=False)):  # too late, at the end
        rows.append({**rows[int(i)], "transaction_id": f"late{k}"})
    for k, i in enumerate(rng.choice(len(rows) - 200, 60, replace=False)):
        r = rows[int(i)]
        edge = r["event_time"].replace(minute=0, second=0, microsecond=0)
        for j in range(2):  # two events at the same hop edge, other amounts
            tie = {**r, "transaction_id": f"tie{k}-{j}", "event_time": edge, "amount": 3.5 + j}
            rows.insert(int(i) + 2 + j, tie)
    for k in range(5):
        rows.insert(200 * k + 7, {**rows[k], "transaction_id": f"bad{k}", "amount": -1.0})
    return pa.Table.from_pylist(rows, schema=t.schema)


def _run(events: Path, out: Path, layout: str, store: StoreConfig, **kw: Any) -> None:
    cfg = StreamConfig(
        store=store, replay_path=events, out_dir=out / "stream", tail=False, batch_size=250,
        state_layout=layout, **kw,
    )  # fmt: skip
    stream_io.clear_stop()
    run_main(build_flow(REFERENCE, cfg))


def _lines(out: Path, kind: str) -> Counter[str]:
    """Every ``kind`` output line of the run (order across entities is not defined)."""
    return Counter(
        line for f in (out / "stream").glob(f"{kind}-*.jsonl") for line in f.read_text().split("\n")
    )


def _states(store: StoreConfig, table: pa.Table) -> list[bytes | None]:
    s = open_store(store, REFERENCE)
    keys = [("card", c) for c in sorted(set(table.column("card_id").to_pylist()))]
    keys += [("merchant", m) for m in sorted(set(table.column("merchant_id").to_pylist()))]
    return s.read_states(keys)


@pytest.fixture(scope="module")
def adversarial(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pa.Table]:
    path = tmp_path_factory.mktemp("adv") / "events.parquet"
    table = _adversarial()
    pq.write_table(table, path)
    return path, table


def test_both_layouts_write_the_same_rows_late_and_dead_letters(
    adversarial: tuple[Path, pa.Table], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Embedded store, each layout run twice over the same input (a restart without
    recovery rereads it): same states, same late output, same dead letters. The entity
    layout runs with the per-event Python loop (one ``Core.update`` per event), the
    sharded one with the native batch call."""
    events, table = adversarial
    got = {}
    for layout in ("entity", "sharded"):
        if layout == "entity":
            monkeypatch.setattr(stream_entity, "native", SimpleNamespace())
        else:
            monkeypatch.undo()
        out = tmp_path / layout
        store = StoreConfig(workdir=out / "feast")
        _run(events, out, layout, store)
        first = _states(store, table)
        _run(events, out, layout, store)
        got[layout] = (first, _states(store, table), _lines(out, "late"), _lines(out, "dlq"))
    entity, sharded = got["entity"], got["sharded"]
    assert all(s is not None for s in entity[0])
    assert entity[0] == entity[1]  # the restart changed nothing
    late = entity[2]
    assert sum(late.values()) > 40 and sum(entity[3].values()) >= 10  # 2 runs x 5 bad
    assert {json.loads(x)["late_for"] for x in late if x} == {"card", "merchant"}
    for a, b, what in zip(entity, sharded, ("states", "after restart", "late", "dlq"), strict=True):
        assert a == b, what


def test_idle_eviction_and_a_restart_leave_redis_byte_identical(
    adversarial: tuple[Path, pa.Table], redis_url: str, tmp_path: Path
) -> None:
    """Real Redis, ``--evict-after`` tiny (entities leave and return many times), each
    layout run twice: the whole online store is the same bytes."""
    events, _ = adversarial
    dumps = {}
    for layout, db in (("entity", 13), ("sharded", 14)):
        url = sup.fresh_db_url(redis_url, db)
        store = StoreConfig(redis_url=url)
        for _ in range(2):
            _run(events, tmp_path / layout, layout, store, evict_after_s=0.005)
        dumps[layout] = sup.dump(url)
    evicted = stream_io.METRICS.evicted._value.get()
    assert evicted > 50, "no entity went idle: the test proves nothing"
    assert len(dumps["entity"]) > 60
    assert dumps["sharded"] == dumps["entity"]


def test_router_groups_by_shard_and_entity_in_arrival_order() -> None:
    card = REFERENCE.schema.position("card_id")
    items = []
    for i, c in enumerate([5, 7, 5, 2**40 + 3, 7, 5]):
        rec = [None] * len(REFERENCE.schema.names)
        rec[card] = c
        items.append(Ingested(tuple(rec), 0, i))
    out = ShardRouter([("card", lambda e: e[card]), ("half", lambda e: e[card] // 2)])(
        [*items, "not an event"]
    )
    got = {k: (n, {e: [x.txid for x in v] for e, v in g.items()}) for k, (n, g) in out}
    assert len(got) == len(out)  # one item per shard of each entity
    want: dict[str, tuple[str, dict[int, list[int]]]] = {}
    for c, txids in ((5, [0, 2, 5]), (7, [1, 4]), (2**40 + 3, [3])):
        want.setdefault(f"card/{shard_of(c)}", ("card", {}))[1][c] = txids
    for c, txids in ((2, [0, 2, 5]), (3, [1, 4]), (2**39 + 1, [3])):
        want.setdefault(f"half/{shard_of(c)}", ("half", {}))[1][c] = txids
    assert got == want
    assert all(0 <= shard_of(i) < SHARDS for i in range(-5, 10_000))
    assert len({shard_of(i) for i in range(1000)}) == SHARDS  # sequential ids spread
    assert shard_of(123456789) == 47  # stable: a recovery snapshot depends on it


def _recovery_dir(path: Path, step: str) -> Path:
    path.mkdir()
    con = sqlite3.connect(path / "part-0.sqlite3")
    con.execute("CREATE TABLE snaps (step_id TEXT, state_key TEXT, snap_epoch INT, ser BLOB)")
    con.execute("INSERT INTO snaps VALUES (?, '1', 1, NULL)", (f"skewless_stream.{step}",))
    con.commit()
    con.close()
    return path


@pytest.mark.parametrize(
    ("written", "resumed", "refused"),
    [
        ("card", "sharded", "--state-layout entity; resume with that layout"),
        (STEP, "entity", f"--state-layout sharded ({SHARDS} shards); resume with that layout"),
        ("shards16", "sharded", "--state-layout sharded (16 shards); resume with that layout"),
        # the earlier sharded layout (one step per entity) is refused, in either layout
        (step_id("card"), "sharded", f"sharded ({SHARDS} shards) of an earlier build"),
        (step_id("merchant"), "entity", "resume with the build that wrote it"),
        ("card_shards16", "sharded", "sharded (16 shards) of an earlier build"),
        ("card", "entity", None),
        (STEP, "sharded", None),
        ("kafka_in", "sharded", None),
    ],
)
def test_a_recovery_directory_of_the_other_layout_is_refused_naming_it(
    tmp_path: Path, written: str, resumed: str, refused: str | None
) -> None:
    rec = _recovery_dir(tmp_path / "rec", written)
    if refused is None:
        check_recovery(rec, ["card", "merchant"], resumed)
        return
    with pytest.raises(ValueError, match=r"^--state-layout .*") as err:
        check_recovery(rec, ["card", "merchant"], resumed)
    assert refused in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("chosen", "written", "resolved"),
    [
        ("auto", None, "sharded"),  # no -r: nothing is snapshotted
        ("auto", "new", "entity"),  # a new -r directory: the entity layout's small epochs
        ("auto", "card", "entity"),  # resumes what the directory holds
        ("auto", STEP, "sharded"),
        ("auto", step_id("card"), "entity"),  # an earlier build's: check_recovery refuses it
        ("entity", None, "entity"),  # an explicit layout is kept as given
        ("sharded", "card", "sharded"),
    ],
)
def test_auto_layout_is_sharded_without_recovery_and_what_the_directory_holds_with_it(
    tmp_path: Path, chosen: str, written: str | None, resolved: str
) -> None:
    rec = None
    if written == "new":
        rec = tmp_path / "rec"
    elif written is not None:
        rec = _recovery_dir(tmp_path / "rec", written)
    assert resolve_layout(chosen, rec, ["card", "merchant"]) == resolved


class _Fake:
    """An entity logic that records what it was given (ShardLogic's contract only)."""

    def __init__(self, resume: Any) -> None:
        self.entity_id, self.seen = (None, []) if resume is None else resume
        self.touched = None

    def on_batch(self, events: list[int]) -> tuple[list[Any], bool]:
        self.entity_id = self.entity_id or events[0] // 100
        self.seen = self.seen + events
        return [], True

    def snapshot(self) -> tuple[int, list[int]]:
        return self.entity_id, self.seen


def test_a_shard_keeps_each_entitys_order_across_polls_and_resumes_from_its_snapshot() -> None:
    from flows.stream_shard import ShardLogic

    makes = {"card": _Fake, "merchant": lambda r: pytest.fail("not this entity's logic")}
    logic = ShardLogic(makes, None, True, None)
    logic.on_batch([("card", {1: [100, 101]}), ("card", {2: [200]}), ("card", {1: [102]})])  # type: ignore[list-item]
    logic.on_batch([("card", {2: [201]})])  # type: ignore[list-item]
    assert {i: x.seen for i, x in logic.entities.items()} == {1: [100, 101, 102], 2: [200, 201]}
    snap = logic.snapshot()
    assert snap == (SHARDS, "card", [(1, [100, 101, 102]), (2, [200, 201])])
    again = ShardLogic(makes, None, True, snap)  # its entity from the snapshot alone
    assert again.entity == "card" and again.snapshot() == snap
    with pytest.raises(ValueError, match=r"^--state-layout sharded: .* 16 shards"):
        ShardLogic(makes, None, True, (16, "card", []))
    with pytest.raises(ValueError, match=r"^--state-layout sharded: .* 64 shards, this"):
        ShardLogic(makes, None, True, (64, []))  # type: ignore[arg-type]  # an earlier build's


def test_the_native_batch_update_equals_one_update_per_event(
    adversarial: tuple[Path, pa.Table],
) -> None:
    """``update_items`` against ``Core.update`` per event, over the adversarial history in
    uneven batches per entity: same outcomes, applied count, newest produced time, and the
    same state bytes and exact snapshot after each batch."""
    from features.plan import compile_plan
    from flows.stream_decode import Decoder
    from flows.stream_entity import _EntityContext, _update_each
    from flows.stream_io import ReplayMessage, table_to_messages

    _, table = adversarial
    plan = compile_plan(REFERENCE)
    msgs = [ReplayMessage(m, i, 1000 + i % 97) for i, m in enumerate(table_to_messages(table))]
    items = [x for x in Decoder(plan)(msgs) if type(x) is Ingested]
    rng = np.random.default_rng(3)
    for name in ("card", "merchant"):
        ctx = _EntityContext(plan, name, None)
        assert ctx.update_items is not None, "the native core lacks update_items: rebuild it"
        by_id: dict[int, list[Ingested]] = {}
        for item in items:
            by_id.setdefault(ctx.plan.key(item.event), []).append(item)
        refused = 0
        for events in by_id.values():
            a, b = ctx.core.new_state(), ctx.core.new_state()
            cuts = sorted(rng.choice(len(events) + 1, size=4).tolist())
            for lo, hi in zip([0, *cuts], [*cuts, len(events)], strict=True):
                batch = events[lo:hi]
                want = _update_each(ctx, a, batch)
                outcomes, applied, newest = ctx.update_items(
                    ctx.core, b, batch, ctx.time_pos, ctx.value_pos
                )
                assert (list(outcomes), applied, newest) == want
                assert ctx.core.snapshot(a) == ctx.core.snapshot(b)
                refused += len(batch) - applied
            assert ctx.core.row(a) == ctx.core.row(b)
        assert refused > 50  # duplicates and too-late events were in the batches
    with pytest.raises(ValueError, match="update_items: 2 value positions for 1 fields"):
        ctx.update_items(ctx.core, ctx.core.new_state(), items[:1], ctx.time_pos, [1, 2])


def test_bytewax_run_checks_the_recovery_directory_it_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``python -m bytewax.run flows.stream:flow -r DIR``: the same refusal, as one line."""
    from flows import stream

    rec = _recovery_dir(tmp_path / "rec", "card")
    assert stream._recovery_directory(["run.py", "m:flow", "-r", str(rec)], {}) == rec
    assert stream._recovery_directory([f"--recovery-directory={rec}"], {}) == rec
    assert stream._recovery_directory([], {"BYTEWAX_RECOVERY_DIRECTORY": str(rec)}) == rec
    assert stream._recovery_directory(["m:flow"], {}) is None
    monkeypatch.setattr("sys.argv", ["run.py", "flows.stream:flow", "-r", str(rec)])
    monkeypatch.setenv("SKEWLESS_STREAM_STATE_LAYOUT", "sharded")
    with pytest.raises(SystemExit, match=r"^flows\.stream:flow: --state-layout sharded: "):
        stream.flow  # noqa: B018
    monkeypatch.setenv("SKEWLESS_STREAM_STATE_LAYOUT", "entity")
    monkeypatch.delenv("SKEWLESS_KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.setenv("SKEWLESS_REPLAY_PATH", str(tmp_path / "events.parquet"))
    monkeypatch.setenv("SKEWLESS_DATA_DIR", str(tmp_path / "data"))
    assert stream.flow.flow_id == "skewless_stream"  # the layout that wrote it: accepted


@pytest.mark.parametrize(("layout", "writes_per_poll"), [("entity", 2), ("sharded", 1)])
def test_the_sharded_layout_writes_a_polls_rows_once(
    adversarial: tuple[Path, pa.Table],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    layout: str,
    writes_per_poll: int,
) -> None:
    """One stateful step for every entity: a poll's card and merchant rows reach the sink
    as one container, so one ``write_batch`` (one Redis pipeline) per poll. The entity
    layout (one step per entity) gives Bytewax two containers, two writes."""
    from flows import stream_sink
    from flows.stream_io import _ReplayPartition

    polls, writes = [0], []
    poll, write = _ReplayPartition.next_batch, stream_sink._StorePartition.write_batch

    def counted_poll(self: Any) -> Any:
        out = poll(self)
        polls[0] += bool(out)
        return out

    def counted_write(self: Any, items: list[Any]) -> None:
        rows = [r for x in items for r in (x if isinstance(x, list) else [x])]
        writes.append(Counter(r.entity for r in rows))
        write(self, items)

    monkeypatch.setattr(_ReplayPartition, "next_batch", counted_poll)
    monkeypatch.setattr(stream_sink._StorePartition, "write_batch", counted_write)
    events, table = adversarial
    _run(events, tmp_path, layout, StoreConfig(workdir=tmp_path / "feast"))
    assert polls[0] == -(-table.num_rows // 250)
    assert len(writes) == writes_per_poll * polls[0]
    if layout == "sharded":  # each write holds both entities' rows
        assert all(set(w) == {"card", "merchant"} for w in writes)


def test_one_native_call_per_shard_equals_update_items_and_row_per_entity(
    adversarial: tuple[Path, pa.Table],
) -> None:
    """``update_rows`` (a shard's entities in one call) against ``update_items`` then
    ``Core.row`` per entity, over the adversarial history routed as the flow routes it,
    in polls of uneven size: same outcomes, applied count, newest produced time, row
    values and state bytes, and the same exact snapshots after every poll."""
    from features.plan import compile_plan
    from flows.stream_decode import Decoder
    from flows.stream_entity import _EntityContext
    from flows.stream_io import ReplayMessage, table_to_messages

    _, table = adversarial
    plan = compile_plan(REFERENCE)
    msgs = [ReplayMessage(m, i, 1000 + i % 97) for i, m in enumerate(table_to_messages(table))]
    items = [x for x in Decoder(plan)(msgs) if type(x) is Ingested]
    ctxs = {name: _EntityContext(plan, name, None) for name in ("card", "merchant")}
    assert all(c.update_rows is not None for c in ctxs.values()), "rebuild the native core"
    router = ShardRouter([(name, c.plan.key) for name, c in ctxs.items()])
    a: dict[tuple[str, int], Any] = {}
    b: dict[tuple[str, int], Any] = {}
    rng = np.random.default_rng(5)
    cuts = sorted(rng.choice(len(items), size=12, replace=False).tolist())
    refused = rows = 0
    for lo, hi in zip([0, *cuts], [*cuts, len(items)], strict=True):
        for _, (name, group) in router(items[lo:hi]):
            ctx, core = ctxs[name], ctxs[name].core
            keys = [(name, i) for i in group]
            for k in keys:
                if k not in a:
                    a[k], b[k] = core.new_state(), core.new_state()
            want = []
            for k, events in zip(keys, group.values(), strict=True):
                outcomes, applied, newest = ctx.update_items(
                    core, a[k], events, ctx.time_pos, ctx.value_pos
                )
                row = core.row(a[k]) if applied else (None, None)
                want.append((list(outcomes), applied, newest, *row))
                refused += len(events) - applied
                rows += bool(applied)
            got = ctx.update_rows(
                core, [b[k] for k in keys], list(group.values()), ctx.time_pos, ctx.value_pos
            )
            assert [(list(o), n, t, v, s) for o, n, t, v, s in got] == want
            assert [core.snapshot(b[k]) for k in keys] == [core.snapshot(a[k]) for k in keys]
    assert refused > 50 and rows > 500  # duplicates, too-late events, many rows
    core = ctxs["card"].core
    with pytest.raises(ValueError, match="update_rows: 2 value positions for 1 fields"):
        ctxs["card"].update_rows(core, [core.new_state()], [items[:1]], 0, [1, 2])
    with pytest.raises(ValueError, match="update_rows: 1 states for 2 batches"):
        ctxs["card"].update_rows(core, [core.new_state()], [items[:1]] * 2, 0, [1])


def test_the_native_router_groups_as_the_python_loop(adversarial: tuple[Path, pa.Table]) -> None:
    """``route_shards`` (one native call per poll) against the router's Python loop, over
    the adversarial history in polls of uneven size with dead letters among the items:
    the same keys, groups, entity order and event order; an id beyond int64 falls back."""
    from features.plan import compile_plan
    from flows.stream_decode import Decoder
    from flows.stream_io import ReplayMessage, table_to_messages

    _, table = adversarial
    plan = compile_plan(REFERENCE)
    msgs = [ReplayMessage(m, i, 1000) for i, m in enumerate(table_to_messages(table))]
    items = Decoder(plan)(msgs)
    assert any(type(x) is not Ingested for x in items)  # dead letters ride along
    keys = [(e.name, e.key) for e in plan.entities]
    positions = [REFERENCE.schema.position(e.join_key) for e in plan.entities]
    router = ShardRouter(keys, positions)
    assert router.native is not None, "the native core lacks route_shards: rebuild it"
    cuts = [0, 1, 7, 250, 251, 1300, 3000, len(items)]
    for lo, hi in itertools.pairwise(cuts):
        got, want = router(items[lo:hi]), router.route(items[lo:hi])
        assert [(k, n, list(g.items())) for k, (n, g) in got] == [
            (k, n, list(g.items())) for k, (n, g) in want
        ]
    card = REFERENCE.schema.position("card_id")
    rec = list(items[0].event)
    rec[card] = 2**70
    huge = Ingested(tuple(rec), *items[0][1:])
    assert router([huge]) == router.route([huge])
    assert router([huge])[0][0] == f"card/{shard_of(2**70)}"
