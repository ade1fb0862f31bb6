"""The vectorized backfill: every feature at every spine row, no per-event Python loop.

It implements exactly the semantics of :mod:`features.engine` over whole arrays:

1. :func:`accept` decides, in file order, which valid events count: the first copy of each
   ``(primary id, transaction_id)`` that is not too late for its primary entity.
2. :func:`window_features` answers ``[floor(t/H)*H - W, t)`` for every spine row with two
   binary searches over events sorted by (entity, time), then folds the range with
   doubling tables: sums and moments by binary lifting, min/max by a sparse table. Each
   level is built from the previous one and dropped, so memory stays O(events).

>>> import numpy as np
>>> from features.reference import REFERENCE
>>> ts = np.array([0, 60_000, 120_000])
>>> amounts = {"amount": np.array([1.0, 2.0, 4.0])}
>>> q_keys, q_t = np.array([1, 1]), np.array([120_000, 120_001])
>>> out = window_features(REFERENCE, "card", np.array([1, 1, 1]), ts, amounts, q_keys, q_t)
>>> out["card_txn_count_10m"].tolist(), out["card_amount_max_24h"].tolist()
([2, 3], [2.0, 4.0])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from features.definitions import MS_PER_SECOND, FeatureSet, Op

_I64_MAX = np.iinfo(np.int64).max


@dataclass(frozen=True)
class Acceptance:
    """Per valid event, in file order: exactly one of accepted / duplicate / late."""

    accepted: np.ndarray
    duplicate: np.ndarray
    late: np.ndarray


def _segmented_exclusive_cummax(groups: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """For rows sorted by group (file order within), the max ts of earlier rows of the
    same group; ``int64 min`` for a group's first row."""
    if not len(ts):
        return ts.copy()
    tmin = ts.min()
    span = int(ts.max() - tmin) + 1
    shifted = (ts - tmin) + groups * span
    run = np.maximum.accumulate(shifted)
    prev = np.empty_like(run)
    prev[0] = -1
    prev[1:] = run[:-1]
    first = np.ones(len(ts), dtype=bool)
    first[1:] = groups[1:] != groups[:-1]
    out = prev - groups * span + tmin
    out[first] = np.iinfo(np.int64).min
    return out


def accept(
    fs: FeatureSet, primary_ids: np.ndarray, txids: np.ndarray, ts: np.ndarray
) -> Acceptance:
    """Dedup (first copy per primary id and transaction id) then too-late routing, both in
    file order, as the stream sees a Kafka partition keyed by the primary id."""
    from features.engine import Engine

    n = len(ts)
    order = np.lexsort((np.arange(n), txids, primary_ids))
    first = np.ones(n, dtype=bool)
    if n:
        same = (primary_ids[order][1:] == primary_ids[order][:-1]) & (
            txids[order][1:] == txids[order][:-1]
        )
        first[order[1:][same]] = False
    duplicate = ~first
    layout = Engine(fs).layout(fs.primary.name)
    late = np.zeros(n, dtype=bool)
    if layout.lateness_ms is not None and n:
        idx = np.flatnonzero(first)
        o = idx[np.lexsort((idx, primary_ids[idx]))]
        _, groups = np.unique(primary_ids[o], return_inverse=True)
        prev = _segmented_exclusive_cummax(groups.astype(np.int64), ts[o])
        is_late = (prev != np.iinfo(np.int64).min) & (ts[o] < prev - layout.lateness_ms)
        late[o[is_late]] = True
    return Acceptance(first & ~late, duplicate, late)


def _ranges(
    keys: np.ndarray, ts: np.ndarray, q_keys: np.ndarray, bounds: list[np.ndarray]
) -> list[np.ndarray]:
    """Positions (into events sorted by key, ts) of the first event of ``q_key`` at or
    after each bound; an unknown key gives an empty range."""
    if not len(ts):
        return [np.zeros(len(q_keys), dtype=np.int64) for _ in bounds]
    uniq, groups = np.unique(keys, return_inverse=True)
    tmin, tmax = int(ts.min()), int(ts.max())
    stride = tmax - tmin + 2
    if len(uniq) * stride >= _I64_MAX:
        raise ValueError(
            "events: time span × entities too large for one backfill; split the file by time"
        )
    comp = groups.astype(np.int64) * stride + (ts - tmin)
    gq = np.searchsorted(uniq, q_keys)
    found = gq < len(uniq)
    found[found] = uniq[gq[found]] == q_keys[found]
    base = np.where(found, gq, 0).astype(np.int64) * stride
    out = []
    for b in bounds:
        pos = np.searchsorted(comp, base + np.clip(b - tmin, 0, stride - 1), side="left")
        out.append(np.where(found, pos, 0))
    return out


class _Fold:
    """Range folds over one value column by doubling: level j holds blocks of 2^j."""

    def __init__(self, values: np.ndarray, want: set[str]) -> None:
        self.values, self.want = values, want

    def run(self, lo: np.ndarray, hi: np.ndarray) -> dict[str, np.ndarray]:
        x, n = self.values, len(self.values)
        length = hi - lo
        q = len(lo)
        res: dict[str, np.ndarray] = {}
        need_sum = "sum" in self.want
        need_mom = "std" in self.want
        if need_sum:
            res["sum"] = np.zeros(q)
        if need_mom:
            acc_n, acc_mean, acc_m2 = np.zeros(q), np.zeros(q), np.zeros(q)
        if "max" in self.want:
            res["max"] = np.full(q, np.nan)
        if "min" in self.want:
            res["min"] = np.full(q, np.nan)
        top = int(length.max()).bit_length() if q else 0
        pad = np.zeros(1)
        s = np.concatenate([x, pad])
        mx = np.concatenate([x, [-np.inf]])
        mn = np.concatenate([x, [np.inf]])
        cnt = np.concatenate([np.ones(n), pad])
        mean, m2 = s.copy(), np.zeros(n + 1)
        k = np.zeros(q, dtype=np.int64)  # floor(log2(length)) for the sparse-table queries
        nz = length > 0
        k[nz] = np.floor(np.log2(length[nz])).astype(np.int64)
        pos = lo.copy()
        for j in range(top):
            bit = ((length >> j) & 1).astype(bool)
            if need_sum:
                res["sum"] += np.where(bit, s[pos], 0.0)
            if need_mom:
                bn, bmean, bm2 = cnt[pos], mean[pos], m2[pos]
                tot = acc_n + bn
                take = bit & (bn > 0)
                with np.errstate(invalid="ignore", divide="ignore"):
                    delta = bmean - acc_mean
                    new_mean = np.where(acc_n == 0, bmean, acc_mean + delta * bn / tot)
                    new_m2 = acc_m2 + bm2 + delta * delta * acc_n * bn / tot
                acc_mean = np.where(take, new_mean, acc_mean)
                acc_m2 = np.where(take, np.where(acc_n == 0, bm2, new_m2), acc_m2)
                acc_n = np.where(take, tot, acc_n)
            for name, table, fn in (("max", mx, np.maximum), ("min", mn, np.minimum)):
                if name in res:
                    sel = nz & (k == j)
                    if sel.any():
                        res[name][sel] = fn(table[lo[sel]], table[hi[sel] - (1 << j)])
            pos = pos + (bit.astype(np.int64) << j)
            if j + 1 < top:
                step = 1 << j
                nxt = np.minimum(np.arange(n + 1) + step, n)
                if need_sum:
                    s = s + s[nxt]
                    s[n] = 0.0
                if need_mom:
                    bn = cnt[nxt]
                    tot = cnt + bn
                    with np.errstate(invalid="ignore", divide="ignore"):
                        delta = mean[nxt] - mean
                        mean2 = np.where(bn > 0, mean + delta * bn / tot, mean)
                        m2 = np.where(bn > 0, m2 + m2[nxt] + delta * delta * cnt * bn / tot, m2)
                    mean, cnt = mean2, tot
                    cnt[n], mean[n], m2[n] = 0.0, 0.0, 0.0
                mx = np.maximum(mx, mx[nxt])
                mn = np.minimum(mn, mn[nxt])
        if need_mom:
            with np.errstate(invalid="ignore"):
                res["std"] = np.where(
                    acc_n > 0, np.sqrt(np.maximum(acc_m2, 0.0) / np.maximum(acc_n, 1)), np.nan
                )
        return res


_NEEDS = {Op.SUM: "sum", Op.MEAN: "sum", Op.STD: "std", Op.MAX: "max", Op.MIN: "min"}


def window_features(
    fs: FeatureSet,
    entity: str,
    keys: np.ndarray,
    ts: np.ndarray,
    fields: dict[str, np.ndarray],
    q_keys: np.ndarray,
    q_t: np.ndarray,
) -> dict[str, np.ndarray]:
    """All of ``entity``'s features at query rows ``(q_keys, q_t)`` from its accepted
    events ``(keys, ts, fields)`` (any order)."""
    order = np.lexsort((ts, keys))
    keys, ts = keys[order], ts[order]
    fields = {k: np.asarray(v, dtype=np.float64)[order] for k, v in fields.items()}
    aggs = fs.for_entity(entity)
    windows = sorted({(a.window.length_ms, a.window.hop_ms) for a in aggs if a.window})
    bounds = [(q_t // h) * h - w for w, h in windows]
    *los, hi, life_lo = _ranges(
        keys, ts, q_keys, [*bounds, q_t, np.full_like(q_t, np.iinfo(np.int64).min // 4)]
    )
    out: dict[str, np.ndarray] = {}
    for (w, h), lo in zip(windows, los, strict=True):
        group = [a for a in aggs if a.window and (a.window.length_ms, a.window.hop_ms) == (w, h)]
        count = hi - lo
        by_field: dict[str, dict[str, np.ndarray]] = {}
        for f in {a.field for a in group if a.field}:
            want = {_NEEDS[a.op] for a in group if a.field == f}
            by_field[f] = _Fold(fields[f], want).run(lo, hi)
        for a in group:
            if a.op is Op.COUNT:
                out[a.name] = count.astype(np.int64)
                continue
            assert a.field is not None
            r = by_field[a.field]
            with np.errstate(invalid="ignore", divide="ignore"):
                if a.op is Op.SUM:
                    out[a.name] = r["sum"]
                elif a.op is Op.MEAN:
                    out[a.name] = np.where(count > 0, r["sum"] / np.maximum(count, 1), np.nan)
                else:
                    out[a.name] = r[_NEEDS[a.op]]
    for a in aggs:
        if a.op is Op.SINCE_LAST:
            has = hi > life_lo
            last = ts[np.maximum(hi - 1, 0)] if len(ts) else np.zeros(len(q_t), dtype=np.int64)
            out[a.name] = np.where(has, (q_t - last) / MS_PER_SECOND, np.nan)
    return {a.name: out[a.name] for a in aggs}
