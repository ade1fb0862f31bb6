"""The native dedup scan and lateness pass decide as the numpy passes they replace.

The numpy code (:func:`features.dedup._fallback`, and :func:`features.backfill.accept`
without the native pass) stays as the reference: random ids (repeated, empty, long,
sliced) and random histories (out of order, ties, duplicates, large and negative keys)
go through both."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

import features.backfill as backfill
import features.dedup as dedup
from features.native import native


def _ids(rng: np.random.Generator, n: int) -> pa.Array:
    pool = [f"t{i}" * int(rng.integers(0, 5)) for i in range(max(n // 3, 1))]
    return pa.array([pool[int(i)] for i in rng.integers(0, len(pool), n)], pa.string())


@pytest.mark.parametrize("seed", range(6))
def test_native_scan_finds_every_repeated_id(seed: int) -> None:
    rng = np.random.default_rng(seed)
    ids = _ids(rng, int(rng.integers(1, 3000)))
    for arr in (ids, ids.slice(7), ids.cast(pa.large_string())):
        values = arr.to_pylist()
        exact = [i for i, v in enumerate(values) if values.count(v) > 1]
        got = dedup.maybe_repeated(arr)
        assert got.tolist() == exact  # no collisions at these sizes: exactly the repeats


def test_native_scan_without_repeats_is_empty() -> None:
    ids = pa.array([f"{i:012d}" for i in range(50_000)])
    assert len(dedup.maybe_repeated(ids)) == 0
    assert len(dedup._fallback(ids)) == 0


@pytest.mark.parametrize("seed", range(8))
def test_native_lateness_is_the_numpy_lateness(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 5000))
    spread = [5, 1_000, 10**15][seed % 3]  # dense keys, sparse ones, far beyond a table
    keys = rng.integers(0, spread, n) * (-1 if seed % 4 == 3 else 1)
    ts = rng.integers(0, 1000, n) * [1, 1000][seed % 2]  # ties; neighbours, or 1 s apart
    ids = _ids(rng, n)
    lateness = [0, 50, 5_000][seed // 3 % 3]
    got = backfill.accept(lateness, keys, ids, ts)
    monkeypatch.setattr(native, "late_rows", None, raising=False)
    monkeypatch.setattr(native, "repeated_rows", None, raising=False)
    want = backfill.accept(lateness, keys, ids, ts)
    for name in ("accepted", "duplicate", "late"):
        assert np.array_equal(getattr(got, name), getattr(want, name)), name
    if spread == 5 and lateness < 1000 and n > 20:  # few keys, random order: some late
        assert want.late.any()
