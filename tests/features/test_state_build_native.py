"""The end states' buffer written natively (``interleave_items``) is the numpy scatter's:
the same bytes and offsets for any item sizes, entities without items, empty pieces; and
the real states of random histories are the same bytes either way."""

from __future__ import annotations

import numpy as np
import pytest

from features import state_build
from features.backfill import EventIndex
from features.layout import compile_layouts
from features.native import native
from features.reference import REFERENCE


def _pieces(rng: np.random.Generator, groups: int) -> list[tuple[np.ndarray, np.ndarray]]:
    pieces = [
        (
            rng.integers(0, 255, (groups, 44), np.uint8).view("V44").ravel(),
            np.ones(groups, np.int64),
        )
    ]
    for dtype in ("<u4", "<f8", "<u8", "<u4", "<f8"):
        counts = rng.integers(0, 5, groups) * (rng.random(groups) < 0.7)
        data = rng.integers(0, 2**31, int(counts.sum())).astype(dtype)
        pieces.append((data, counts.astype(np.int64)))
    return pieces


@pytest.mark.parametrize("seed", range(6))
def test_native_interleave_is_the_numpy_scatter(seed: int) -> None:
    rng = np.random.default_rng(seed)
    pieces = _pieces(rng, int(rng.integers(1, 300)))
    got, got_starts = state_build._interleave(pieces)
    want, want_starts = state_build._scatter(pieces)
    assert got.tobytes() == want.tobytes()
    assert got_starts.tolist() == want_starts.tolist()


def test_native_interleave_refuses_counts_that_do_not_match() -> None:
    data = np.arange(3, dtype="<u4").view(np.uint8)
    with pytest.raises(ValueError, match="interleave_items: one count per entity"):
        native.interleave_items(
            [(data, 4, np.array([1, 1]))], np.array([0, 4, 8]), np.empty(8, np.uint8)
        )


@pytest.mark.parametrize("seed", range(4))
def test_states_are_the_same_bytes_without_the_native_writer(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(seed)
    n = 3000
    keys = rng.integers(0, 40, n)
    ts = np.sort(rng.integers(0, 9 * 86_400_000, n) // 60_000 * 60_000)  # ties
    amount = np.round(rng.lognormal(3, 1, n), 2)
    txids = np.array([f"t{i % 2900}" for i in range(n)], dtype=object)
    for name in ("card", "merchant"):
        layout = compile_layouts(REFERENCE)[name]
        index = EventIndex(keys, ts, {"amount": amount})
        got = state_build.state_bytes(layout, index, txids)
        monkeypatch.setattr(native, "interleave_items", None, raising=False)
        want = state_build.state_bytes(layout, index, txids)
        monkeypatch.undo()
        assert got[0].tobytes() == want[0].tobytes()
        assert got[1].tolist() == want[1].tolist()
