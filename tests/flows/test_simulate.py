"""The simulator's contract: DESIGN.md event rules, determinism, and detectable fraud."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from flows.simulate import EVENT_SCHEMA, SimulationConfig, simulate, write_events

REPO = Path(__file__).resolve().parents[2]
MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
EXPECTED_COLUMNS = [
    ("transaction_id", pa.string()),
    ("card_id", pa.int64()),
    ("merchant_id", pa.int64()),
    ("amount", pa.float64()),
    ("currency", pa.string()),
    ("country", pa.string()),
    ("mcc", pa.int32()),
    ("event_time", pa.timestamp("ms", tz="UTC")),
    ("is_fraud", pa.bool_()),
]
CONFIG = SimulationConfig(events=100_000)


@pytest.fixture(scope="module")
def table() -> pa.Table:
    return simulate(CONFIG)


@pytest.fixture(scope="module")
def cols(table: pa.Table) -> dict[str, np.ndarray]:
    out = {name: table.column(name).to_numpy() for name in table.column_names}
    out["t"] = out["event_time"].astype("datetime64[ms]").astype(np.int64)
    return out


def test_schema_is_exact_and_ordered(table: pa.Table) -> None:
    assert [(f.name, f.type) for f in table.schema] == EXPECTED_COLUMNS
    assert table.schema.equals(EVENT_SCHEMA)
    assert table.schema.metadata is None


@pytest.mark.parametrize(
    "config",
    [
        CONFIG,
        SimulationConfig(events=1, cards=1, merchants=1, days=0.01),
        SimulationConfig(events=7, cards=2, merchants=3, fraud_rate=0.5),
        SimulationConfig(events=3_001, cards=10, merchants=5, days=1.0, fraud_rate=0.02),
    ],
)
def test_row_count_is_exact(config: SimulationConfig, table: pa.Table) -> None:
    result = table if config == CONFIG else simulate(config)
    assert result.num_rows == config.events


def test_transaction_ids_are_unique_and_well_formed(table: pa.Table) -> None:
    ids = table.column("transaction_id")
    assert pc.count_distinct(ids).as_py() == table.num_rows
    assert pc.all(pc.match_substring_regex(ids, r"^t[0-9]{12}$")).as_py()
    assert ids[0].as_py() == "t000000000000"
    assert ids[-1].as_py() == f"t{table.num_rows - 1:012d}"


def test_values_follow_the_event_rules(table: pa.Table, cols: dict[str, np.ndarray]) -> None:
    assert all(table.column(name).null_count == 0 for name in table.column_names)
    amount = cols["amount"]
    assert np.all(np.isfinite(amount)) and amount.min() > 0 and amount.max() <= 10_000_000
    assert np.array_equal(amount, np.round(amount, 2))
    assert pc.all(pc.match_substring_regex(table.column("currency"), r"^[A-Z]{3}$")).as_py()
    assert pc.all(pc.match_substring_regex(table.column("country"), r"^[A-Z]{2}$")).as_py()
    assert cols["mcc"].min() >= 0 and cols["mcc"].max() <= 9999
    assert cols["card_id"].min() >= 0 and cols["card_id"].max() < CONFIG.cards
    assert cols["merchant_id"].min() >= 0 and cols["merchant_id"].max() < CONFIG.merchants
    start_ms = int(CONFIG.start.timestamp() * 1000)
    assert cols["t"].min() >= start_ms
    assert cols["t"].max() < start_ms + int(CONFIG.days * 86_400_000)


def test_sorted_by_event_time(cols: dict[str, np.ndarray]) -> None:
    assert np.all(np.diff(cols["t"]) >= 0)


def test_actors_are_consistent(table: pa.Table) -> None:
    """A card bills in one currency; a merchant has one country and one MCC."""
    by_card = table.group_by("card_id").aggregate([("currency", "count_distinct")])
    assert pc.max(by_card.column("currency_count_distinct")).as_py() == 1
    by_merchant = table.group_by("merchant_id").aggregate(
        [("country", "count_distinct"), ("mcc", "count_distinct")]
    )
    assert pc.max(by_merchant.column("country_count_distinct")).as_py() == 1
    assert pc.max(by_merchant.column("mcc_count_distinct")).as_py() == 1
    major = pc.sum(pc.is_in(table.column("currency"), pa.array(["USD", "EUR", "GBP"]))).as_py()
    assert major / table.num_rows > 0.85


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    config = SimulationConfig(events=5_000, cards=300, merchants=60, days=5.0, seed=11)
    paths = [tmp_path / f"{name}.parquet" for name in ("a", "b", "c")]
    write_events(simulate(config), paths[0])
    write_events(simulate(config), paths[1])
    write_events(simulate(SimulationConfig(**{**config.__dict__, "seed": 12})), paths[2])
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert paths[0].read_bytes() != paths[2].read_bytes()


def test_bytes_identical_across_processes(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from flows.simulate import SimulationConfig, simulate, write_events\n"
        "write_events(simulate(SimulationConfig(events=5_000, cards=300, merchants=60,"
        " days=5.0, seed=11)), sys.argv[1])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONHASHSEED": "12345"}
    child = tmp_path / "child.parquet"
    subprocess.run([sys.executable, "-c", code, str(child)], check=True, env=env, cwd=REPO)
    config = SimulationConfig(events=5_000, cards=300, merchants=60, days=5.0, seed=11)
    write_events(simulate(config), tmp_path / "here.parquet")
    assert child.read_bytes() == (tmp_path / "here.parquet").read_bytes()


def test_fraud_rate_near_target(cols: dict[str, np.ndarray]) -> None:
    assert 0.005 <= cols["is_fraud"].mean() <= 0.02


def _windows(key: np.ndarray, t: np.ndarray, size: int, span_ms: int) -> int:
    """How many runs of ``size`` consecutive same-key events fit within ``span_ms``."""
    order = np.lexsort((t, key))
    k, ts = key[order], t[order]
    if k.size < size:
        return 0
    same_key = k[size - 1 :] == k[: k.size - size + 1]
    return int(np.count_nonzero(same_key & (ts[size - 1 :] - ts[: k.size - size + 1] <= span_ms)))


def test_card_testing_bursts_present(cols: dict[str, np.ndarray]) -> None:
    small = cols["is_fraud"] & (cols["amount"] < 5.00)
    assert _windows(cols["card_id"][small], cols["t"][small], 5, 10 * MINUTE_MS) > 0
    testing_mccs = np.isin(cols["mcc"][small], [5999, 5734, 4816])
    assert testing_mccs.mean() > 0.9


def test_account_takeover_spikes_present(table: pa.Table, cols: dict[str, np.ndarray]) -> None:
    legit = ~cols["is_fraud"]
    medians = (
        table.filter(pa.array(legit))
        .group_by("card_id")
        .aggregate([("amount", "approximate_median")])
    )
    median_of = np.full(CONFIG.cards, np.inf)
    median_of[medians.column("card_id").to_numpy()] = medians.column("amount_approximate_median")
    spike = cols["is_fraud"] & (cols["amount"] > 5 * median_of[cols["card_id"]])
    spike &= np.isin(cols["mcc"], [5732, 5944])
    assert _windows(cols["card_id"][spike], cols["t"][spike], 3, 6 * HOUR_MS) > 0


def _merchant_hours(cols: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
    """Per row its (merchant, hour) cell; per cell count, fraud count, merchant median."""
    hours = int(CONFIG.days * 24)
    cell = cols["merchant_id"] * hours + (cols["t"] - cols["t"].min()) // HOUR_MS
    size = CONFIG.merchants * hours
    count = np.bincount(cell, minlength=size).reshape(CONFIG.merchants, hours)
    fraud = np.bincount(cell, weights=cols["is_fraud"], minlength=size).reshape(count.shape)
    return cell, count, fraud, np.median(count, axis=1, keepdims=True)


def test_compromised_merchant_surges_present(cols: dict[str, np.ndarray]) -> None:
    cell, count, fraud, median = _merchant_hours(cols)
    fraud_cell_cards = np.unique(np.stack([cell, cols["card_id"]])[:, cols["is_fraud"]], axis=1)
    cards = np.bincount(fraud_cell_cards[0], minlength=count.size).reshape(count.shape)
    surge = (count >= 3 * np.maximum(median, 1)) & (fraud >= 0.5 * count)
    assert np.count_nonzero(surge & (cards >= 5)) >= 3  # many different stolen cards at once


def test_legit_overlaps_fraud(cols: dict[str, np.ndarray]) -> None:
    """No single feature separates the classes: legit has small, large and bursty spend."""
    legit = ~cols["is_fraud"]
    amount = cols["amount"][legit]
    assert (amount < 5.00).mean() > 0.005
    assert (amount > 500.0).mean() > 0.002
    assert _windows(cols["card_id"][legit], cols["t"][legit], 4, 10 * MINUTE_MS) > 10
    _, count, fraud, median = _merchant_hours(cols)  # promotions: legit merchant surges
    assert np.any((count >= 3 * np.maximum(median, 1)) & (count >= 5) & (fraud == 0))


def test_diurnal_and_weekly_rhythm(cols: dict[str, np.ndarray]) -> None:
    legit = ~cols["is_fraud"]
    t = cols["t"][legit]
    by_hour = np.bincount((t // HOUR_MS) % 24, minlength=24)
    assert by_hour[12:14].sum() > 3 * by_hour[2:4].sum()
    by_weekday = np.bincount((t // (24 * HOUR_MS) + 3) % 7, minlength=7)  # Monday = 0
    assert by_weekday[5] > by_weekday[6] * 1.15


def test_heavy_tailed_activity(cols: dict[str, np.ndarray]) -> None:
    per_card = np.sort(np.bincount(cols["card_id"], minlength=CONFIG.cards))[::-1]
    assert per_card[: CONFIG.cards // 100].sum() > 0.05 * per_card.sum()
    per_merchant = np.sort(np.bincount(cols["merchant_id"], minlength=CONFIG.merchants))[::-1]
    assert per_merchant[: CONFIG.merchants // 10].sum() > 0.3 * per_merchant.sum()


def test_progress_bar_only_for_large_runs(capsys: pytest.CaptureFixture[str]) -> None:
    simulate(SimulationConfig(events=100_000, cards=500, merchants=50), progress=True)
    assert "simulate" not in capsys.readouterr().err
    simulate(SimulationConfig(events=100_001, cards=500, merchants=50), progress=True)
    assert "simulate" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("events", 0),
        ("events", 1.5),
        ("events", True),
        ("cards", 0),
        ("merchants", -1),
        ("days", 0.0),
        ("days", float("nan")),
        ("days", "30"),
        ("seed", -1),
        ("fraud_rate", 0.9),
        ("fraud_rate", -0.01),
        ("start", datetime(2026, 1, 1)),  # noqa: DTZ001 - naive on purpose
        ("start", datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=2)))),
    ],
)
def test_config_validation_names_the_field(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field):
        SimulationConfig(**{field: value})


def test_start_is_respected() -> None:
    start = datetime(2025, 6, 1, 12, tzinfo=UTC)
    result = simulate(SimulationConfig(events=500, cards=20, merchants=10, days=1.0, start=start))
    times = result.column("event_time")
    assert pc.min(times).as_py() >= start
    assert pc.max(times).as_py() < start + timedelta(days=1)
