"""The simulator's drift scenarios: seeded, from day D only, and valid events."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from features.reference import REFERENCE
from features.validate import Validator
from flows.sim_drift import DriftScenario, apply_drift
from flows.simulate import SimulationConfig, simulate
from skewless.cli import main

CFG = SimulationConfig(events=30_000, cards=800, merchants=100, days=10.0)
DAY, HOUR = 86_400_000, 3_600_000
D_MS = 1767225600000 + 6 * DAY


@pytest.fixture(scope="module")
def base() -> pa.Table:
    return simulate(CFG)


def _ms(t: pa.Table) -> np.ndarray:
    return pc.cast(t.column("event_time"), pa.int64()).to_numpy()


def test_amount_shift_from_day_d_only(base: pa.Table) -> None:
    out = apply_drift(base, CFG, DriftScenario(day=6.0, amount_factor=2.0))
    after = _ms(base) >= D_MS
    a0, a1 = base.column("amount").to_numpy(), out.column("amount").to_numpy()
    assert np.array_equal(a1[~after], a0[~after])
    assert np.array_equal(a1[after], np.round(a0[after] * 2.0, 2))
    assert out.drop_columns(["amount"]).equals(base.drop_columns(["amount"]))


def test_new_country_takes_its_share_from_day_d(base: pa.Table) -> None:
    out = apply_drift(base, CFG, DriftScenario(day=6.0, new_country="KE", new_country_share=0.1))
    after = _ms(base) >= D_MS
    ke = pc.equal(out.column("country"), "KE").to_numpy(zero_copy_only=False)
    assert not ke[~after].any() and "KE" not in set(base.column("country").to_pylist())
    assert 0.08 < ke[after].mean() < 0.2
    moved = set(np.asarray(out.column("merchant_id"))[ke].tolist())
    merchant = np.asarray(out.column("merchant_id"))
    assert ke[after].sum() == np.isin(merchant[after], list(moved)).sum()  # whole merchants
    assert out.equals(apply_drift(base, CFG, DriftScenario(6.0, 1.0, "KE", 0.1)))


def test_new_fraud_pattern_is_night_bursts_of_mid_size_charges(base: pa.Table) -> None:
    s = DriftScenario(day=6.0, new_fraud_share=0.02)
    out = apply_drift(base, CFG, s)
    assert out.equals(apply_drift(base, CFG, s))
    added = out.num_rows - base.num_rows
    assert added == pytest.approx(0.02 * int((_ms(base) >= D_MS).sum()), abs=3)
    _, rejects = Validator(REFERENCE.schema).validate_table(out)
    assert rejects.num_rows == 0
    ids = out.column("transaction_id").to_pylist()
    assert len(set(ids)) == len(ids) and ids == sorted(ids)
    assert np.all(np.diff(_ms(out)) >= 0)
    # the base events are all still there, in the same order
    key = ["card_id", "merchant_id", "amount", "event_time"]
    base_rows = set(zip(*base.select(key).to_pydict().values(), strict=True))
    new = [r for r in zip(*out.select([*key, "is_fraud"]).to_pydict().values(), strict=True)
           if r[:4] not in base_rows]  # fmt: skip
    assert len(new) == added and all(r[4] for r in new)
    hours = np.array([r[3].hour + r[3].minute / 60 for r in new])
    assert hours.max() < 5.5
    assert min(r[3] for r in new).timestamp() * 1000 >= D_MS


def test_cli_simulate_with_drift(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ev.parquet"
    argv = ["simulate", "--out", str(out), "--events", "3000", "--cards", "100",
            "--merchants", "20", "--days", "4", "--labels", "none"]  # fmt: skip
    assert main([*argv, "--drift-day", "2", "--drift-country", "KE"]) == 0
    assert "KE" in set(pq.read_table(out).column("country").to_pylist())
    assert main([*argv, "--drift-fraud", "0.01"]) == 2
    assert "need --drift-day D" in capsys.readouterr().err
    assert main([*argv, "--drift-day", "2", "--drift-country", "kenya"]) == 2
    assert "new_country: 'kenya' is not 2 upper-case letters" in capsys.readouterr().err
