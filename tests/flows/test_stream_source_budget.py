"""The thin source's poll size (``PollBudget``): a CPU budget at the measured cost per
message, per worker thread, between the floor and the batch size."""

from __future__ import annotations

import threading

import pytest

from flows.stream_source import BUDGET_ENV, SAMPLE_MIN, PollBudget, poll_budget_s


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_cheap_messages_grow_the_poll_up_to_the_batch_size() -> None:
    clock = Clock()
    b = PollBudget(0.1, floor=500, cost_s=100e-6, clock=clock)
    assert b.size(5_000) == 1_000  # 0.1 s at the assumed 100 us
    sizes = []
    for _ in range(8):  # each poll's messages cost 10 us each on the thread
        n = b.size(5_000)
        sizes.append(n)
        b.took(n)
        clock.now += n * 10e-6
    assert sizes[0] == 1_000 and sizes == sorted(sizes)
    assert sizes[-1] == 5_000  # 0.1 s / 10 us, capped by the batch size
    assert b.size(3_000) == 3_000


def test_dear_messages_shrink_it_to_the_floor_and_idle_time_is_not_counted() -> None:
    clock = Clock()
    b = PollBudget(0.1, floor=500, cost_s=20e-6, clock=clock)
    assert b.size(5_000) == 5_000
    for _ in range(6):
        n = b.size(5_000)
        b.took(n)
        clock.now += n * 1e-3  # 1 ms per message: 100 fit in the budget
        clock.now += 5.0  # idle, empty polls: no message's cost
        b.size(5_000)
        b.took(0)
    assert b.size(5_000) == 500  # the floor
    b = PollBudget(0.1, floor=500, cost_s=20e-6, clock=clock)
    b.took(SAMPLE_MIN - 1)  # too few to measure: the estimate stays
    clock.now += 10.0
    assert b.size(5_000) == 5_000


def test_each_worker_thread_measures_its_own() -> None:
    clock = Clock()
    b = PollBudget(0.1, floor=10, cost_s=100e-6, clock=clock)
    b.took(1_000)
    clock.now += 1.0  # 1 ms per message on this thread
    assert b.size(5_000) == 181  # halfway from 100 us to 1 ms: 0.1 s / 550 us
    got: list[int] = []
    t = threading.Thread(target=lambda: got.append(b.size(5_000)))
    t.start()
    t.join()
    assert got == [1_000]  # the other thread still at the assumed cost


@pytest.mark.parametrize(("raw", "seconds"), [(None, 0.1), ("250", 0.25), ("1", 0.001)])
def test_the_budget_setting(raw: str | None, seconds: float) -> None:
    assert poll_budget_s({} if raw is None else {BUDGET_ENV: raw}) == seconds


@pytest.mark.parametrize("raw", ["0", "soon", "-5", "60001"])
def test_a_bad_budget_setting_is_refused_naming_it(raw: str) -> None:
    with pytest.raises(ValueError, match=f"^{BUDGET_ENV}: "):
        poll_budget_s({BUDGET_ENV: raw})
