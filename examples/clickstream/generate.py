"""A small, seeded click-stream: users browse items in sessions; some sessions end in a
purchase.

The label (``purchased``) is learnable from the click-stream's window features without
being trivially separable: a user with buying intent clicks more (``user_click_count_1h``),
dwells longer than usual on what they buy (``dwell_to_user_mean_7d``), and buys items
that are popular right now (``item_click_count_1h``) from near the top of the page
(``click_position``); browsers also have long dwells and bursts, and buyers sometimes buy
on a short look.

Like real input, the file is not clean: rows are in arrival order, so a few are out of
order by minutes; a few are re-sent (the same ``click_id`` again, as an at-least-once
producer does); a few break a schema rule (they go to the rejects with a reason); and a
few arrive more than a week late for their user (routed to the late output).

Everything is drawn from one ``numpy`` generator in a fixed order, so a seed gives the
same table.

>>> t = generate(events=500, seed=1)
>>> t.num_rows, t.column_names[:3]
(500, ['click_id', 'user_id', 'item_id'])
>>> t.schema.field("ts").type
TimestampType(timestamp[ms, tz=UTC])
>>> generate(events=500, seed=1).equals(t)
True

Run it as ``python examples/clickstream/generate.py --out clicks.parquet --events 3000``.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["EVENT_SCHEMA", "START", "generate", "main", "write_events"]

EVENT_SCHEMA = pa.schema(
    [
        ("click_id", pa.string()),
        ("user_id", pa.int64()),
        ("item_id", pa.int64()),
        ("dwell_s", pa.float64()),
        ("position", pa.int64()),
        ("device", pa.string()),
        ("ts", pa.timestamp("ms", tz="UTC")),
        ("purchased", pa.bool_()),
    ]
)
#: the first possible event time (fixed, so a seed gives the same file on any day)
START = datetime(2026, 3, 2, tzinfo=UTC)
_DEVICES = ("web", "ios", "android")
_MS_MINUTE = 60_000
_MS_DAY = 86_400_000


def _sessions(rng: np.random.Generator, events: int, users: int, days: float) -> list[np.ndarray]:
    """Per click: user, session id, intent flag, index within session; about ``events``."""
    rate = rng.gamma(1.5, 1.0, users)  # some users are far more active than others
    rate /= rate.sum()
    user, session, intent, step, start = [], [], [], [], []
    total, s = 0, 0
    span = int(days * _MS_DAY)
    while total < events:
        u = int(rng.choice(users, p=rate))
        buying = bool(rng.random() < 0.25)
        size = int(rng.geometric(1 / (9.0 if buying else 5.0)))
        size = min(size, events - total)
        user += [u] * size
        session += [s] * size
        intent += [buying] * size
        step += list(range(size))
        start += [int(rng.integers(0, span))] * size
        total += size
        s += 1
    return [np.array(a) for a in (user, session, intent, step, start)]


def generate(
    events: int = 3_000,
    seed: int = 7,
    users: int = 150,
    items: int = 300,
    days: float = 4.0,
    duplicate_rate: float = 0.01,
    disorder_rate: float = 0.03,
    invalid: int = 6,
    late: int = 3,
) -> pa.Table:
    """Exactly ``events`` rows (duplicates, invalid and late rows included), in arrival
    order, with the ``purchased`` label."""
    if events < 50:
        raise ValueError(f"events: need at least 50, got {events}")
    rng = np.random.default_rng(seed)
    extra = round(events * duplicate_rate) + invalid + late
    base = events - extra
    user, session, intent, step, start = _sessions(rng, base, users, days)
    n = len(user)

    # time: clicks within a session 5 s .. 3 min apart
    gaps = rng.exponential(40_000.0, n).astype(np.int64) + 5_000
    gaps[step == 0] = 0
    offset = np.zeros(n, dtype=np.int64)
    for i in range(1, n):  # cumulative within a session
        offset[i] = offset[i - 1] + gaps[i] if step[i] else 0
    ts = int(START.timestamp() * 1000) + start + offset

    # items: popular items get most clicks; a buying session keeps returning to a few
    popularity = 1.0 / np.arange(1, items + 1) ** 0.9
    popularity /= popularity.sum()
    item = rng.choice(items, size=n, p=popularity)
    for s in np.unique(session[intent]):
        rows = np.flatnonzero(session == s)
        focus = rng.choice(items, size=2, p=popularity)
        keep = rng.random(len(rows)) < 0.7
        item[rows[keep]] = focus[rng.integers(0, 2, keep.sum())]

    # dwell: each user has a typical dwell; buyers look longer
    typical = rng.lognormal(np.log(25.0), 0.5, users)
    dwell = typical[user] * rng.lognormal(0.0, 0.6, n) * np.where(intent, 1.8, 1.0)
    dwell = np.clip(np.round(dwell, 3), 0.5, 3600.0)
    position = np.minimum(rng.geometric(0.15, n) - 1, 100)
    device = np.array(_DEVICES)[rng.choice(3, size=n, p=(0.5, 0.3, 0.2))]

    # the label: intent, a long look relative to the user's usual, deep in the session,
    # near the top of the page
    logit = (
        -5.0
        + 2.2 * intent
        + 1.3 * np.log(dwell / typical[user])
        + 0.25 * np.minimum(step, 8)
        - 0.08 * position
    )
    purchased = rng.random(n) < 1 / (1 + np.exp(-logit))

    table = pa.table(
        {
            "click_id": [f"c{i:09d}" for i in np.argsort(np.argsort(ts, kind="stable"))],
            "user_id": pa.array(user, pa.int64()),
            "item_id": pa.array(item, pa.int64()),
            "dwell_s": pa.array(dwell, pa.float64()),
            "position": pa.array(position, pa.int64()),
            "device": pa.array(device, pa.string()),
            "ts": pa.array(ts, pa.timestamp("ms", tz="UTC")),
            "purchased": pa.array(purchased, pa.bool_()),
        },
        schema=EVENT_SCHEMA,
    )
    # arrival order: by time, but a few clicks arrive up to 5 minutes after their time
    arrival = ts + np.where(
        rng.random(n) < disorder_rate, rng.integers(_MS_MINUTE, 5 * _MS_MINUTE, n), 0
    )
    table = table.take(pa.array(np.lexsort((np.arange(n), arrival))))

    rows = table.to_pylist()
    # re-sent clicks: a copy arrives again a little later in the file
    for i in sorted(rng.choice(n, round(events * duplicate_rate), replace=False), reverse=True):
        at = min(n, int(i) + int(rng.integers(1, 40)))
        rows.insert(at, dict(rows[int(i)]))
    # broken rows, one rule each (the rejects name the field)
    breakers = (
        ("dwell_s", 0.0),
        ("dwell_s", 7200.0),
        ("position", 101),
        ("device", "tv"),
        ("user_id", -1),
        ("click_id", ""),
    )
    end_ms = int(ts.max())
    for k in range(invalid):
        name, value = breakers[k % len(breakers)]
        row = dict(rows[int(rng.integers(0, len(rows)))])
        row["click_id"] = f"bad{k:06d}"
        row[name] = value
        rows.insert(int(rng.integers(0, len(rows))), row)
    # very late clicks: more than 8 days before their user's newest click, at the end
    for k in range(late):
        row = dict(rows[int(rng.integers(0, len(rows)))])
        row.update(
            click_id=f"late{k:05d}",
            ts=datetime.fromtimestamp((end_ms - 9 * _MS_DAY - k * _MS_MINUTE) / 1000, UTC),
        )
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=EVENT_SCHEMA)


def write_events(table: pa.Table, path: str | Path) -> None:
    """Write events as Parquet (zstd, no schema metadata: equal tables, equal bytes)."""
    pq.write_table(table.replace_schema_metadata(None), str(path), compression="zstd")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="events Parquet to write")
    parser.add_argument("--events", type=int, default=3_000, help="rows to write (default 3000)")
    parser.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    parser.add_argument("--users", type=int, default=150)
    parser.add_argument("--items", type=int, default=300)
    parser.add_argument("--days", type=float, default=4.0)
    args = parser.parse_args(argv)
    table = generate(args.events, args.seed, args.users, args.items, args.days)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_events(table, args.out)
    positives = sum(bool(v) for v in table.column("purchased").to_pylist())
    print(f"{table.num_rows} clicks ({positives} purchases) -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
