"""The native index sort builds the numpy index: the same order, sorted columns, groups
and inverse, for times in or out of file order, ties, sparse and huge keys."""

from __future__ import annotations

import numpy as np
import pytest

from features.backfill import EventIndex
from features.native import native


@pytest.mark.parametrize("seed", range(8))
def test_native_index_is_the_numpy_index(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 4000))
    keys = rng.integers(0, [3, 500, 2**40, 2**62][seed % 4], n)
    ts = rng.integers(0, 50, n) * 60_000  # many ties
    if seed % 2:
        ts = np.sort(ts)  # in file order: the counting sort's path
    fields = {"amount": rng.random(n)}
    got = EventIndex(keys, ts, fields)
    monkeypatch.setattr(native, "index_order", None, raising=False)
    want = EventIndex(keys, ts, fields)
    for name in ("order", "gid", "ts", "comp", "starts", "ends", "uniq"):
        assert np.array_equal(getattr(got, name), getattr(want, name)), name
        assert getattr(got, name).dtype == getattr(want, name).dtype, name
    assert np.array_equal(got.values["amount"], want.values["amount"])
    assert np.array_equal(got._inverse(), want._inverse())
