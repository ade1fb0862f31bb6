"""``skewless verify`` says what it could not check instead of reporting mismatches: a
missing or empty online store (it used to create an empty SQLite store and report every
sampled entity as a mismatch), events with nothing valid, and a prediction log that is
missing, empty or not flushed yet (it used to skip it silently)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.reference import REFERENCE
from features.store import StoreConfig, open_store
from flows.simulate import SimulationConfig, simulate, write_events
from skewless.cli import main


@pytest.fixture(autouse=True)
def _no_skewless_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("SKEWLESS_")]:
        monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def streamed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(events, data dir whose embedded store the stream filled from them)."""
    d = tmp_path_factory.mktemp("verify")
    events = d / "ev.parquet"
    write_events(simulate(SimulationConfig(events=600, cards=20, merchants=5, days=1.0)), events)
    saved = {n: os.environ.pop(n) for n in list(os.environ) if n.startswith("SKEWLESS_")}
    try:
        argv = ["--data-dir", str(d / "data"), "stream", "--replay", str(events), "--no-tail"]
        assert main(argv) == 0
    finally:
        os.environ.update(saved)
    return events, d / "data"


def _verify(capsys: pytest.CaptureFixture[str], data: Path, *argv: str) -> tuple[int, str, str]:
    code = main(["--data-dir", str(data), "verify", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_missing_store_is_named_and_not_created(
    streamed: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events, _ = streamed
    code, out, err = _verify(capsys, tmp_path / "elsewhere", "--events", str(events))
    assert code == 2 and out == ""
    db = tmp_path / "elsewhere" / "feast" / "online.db"
    assert err.startswith(f"skewless verify: no online store at {db} ")
    assert "skewless stream --replay EVENTS --no-tail" in err
    assert not (tmp_path / "elsewhere").exists()


def test_an_empty_store_is_said_empty_not_a_mismatch_list(
    streamed: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events, _ = streamed
    open_store(StoreConfig(workdir=tmp_path / "empty" / "feast"), REFERENCE).close()
    code, out, err = _verify(capsys, tmp_path / "empty", "--events", str(events))
    assert code == 2 and out == ""
    db = tmp_path / "empty" / "feast" / "online.db"
    assert err == (
        f"skewless verify: online store {db} holds no state for any of the 25 entities sampled "
        f"from {events}: it is empty, or not the store the stream wrote (fill it with "
        "`skewless stream`, or `feast materialize` after a backfill; or point --data-dir / "
        "SKEWLESS_REDIS_URL at the one it wrote)\n"
    )


def test_events_with_nothing_valid_are_refused(
    streamed: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events, data = streamed
    empty = tmp_path / "none.parquet"
    pq.write_table(pq.read_table(events).slice(0, 0), empty)
    code, out, err = _verify(capsys, data, "--events", str(empty))
    assert code == 2 and out == ""
    assert err == f"skewless verify: {empty}: no valid events (0 rows): nothing to verify\n"


def test_a_missing_or_unflushed_prediction_log_is_said_not_skipped(
    streamed: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    events, data = streamed
    log = data / "predictions"
    assert not log.exists()
    code, out, err = _verify(capsys, data, "--events", str(events))
    assert code == 0, err
    assert json.loads(out)["predictions"] == {"skipped": f"no prediction log at {log}"}
    assert err == f"skewless verify: no prediction log at {log}; predictions not checked\n"

    log.mkdir()  # what a running server has before its first flush
    try:
        code, out, err = _verify(capsys, data, "--events", str(events))
        assert code == 0, err
        note = json.loads(out)["predictions"]["skipped"]
        assert note.startswith(f"the prediction log {log} is empty (0 files, 0 rows): nothing ")
        assert (
            "flushed yet" in note and err == f"skewless verify: {note}; predictions not checked\n"
        )
        # a flushed file with no rows is empty too
        schema = pa.schema([("transaction_id", pa.string()), ("score", pa.float64())])
        pq.write_table(schema.empty_table(), log / "predictions-000000.parquet")
        code, out, err = _verify(capsys, data, "--events", str(events))
        assert json.loads(out)["predictions"]["skipped"].startswith(
            f"the prediction log {log} is empty (1 files, 0 rows)"
        )
        # named explicitly, a log that is not there or empty is an error
        code, out, err = _verify(capsys, data, "--events", str(events), "--predictions", str(log))
        assert code == 2 and out == "" and err.startswith("skewless verify: --predictions: the ")
        gone = data / "no-such-log"
        code, out, err = _verify(capsys, data, "--events", str(events), "--predictions", str(gone))
        assert code == 2 and err == f"skewless verify: --predictions: no prediction log at {gone}\n"
    finally:
        for f in log.iterdir():
            f.unlink()
        log.rmdir()


def test_a_log_checked_without_a_registry_says_the_score_impact_is_not_computed(
    streamed: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A prediction log whose served vectors are the backfill's: 0 mismatches; without a
    registry the score impact is said to be skipped (it read as 0.0 before)."""
    from flows.backfill import BackfillReport, compute_features, load_events

    events, data = streamed
    table = pq.read_table(events)
    _, accepted, _, _ = load_events(REFERENCE, table, BackfillReport())
    spine = table.slice(100, 20)
    want = compute_features(REFERENCE, spine, accepted)
    log = spine.append_column("model_version", pa.array(["1"] * 20)).append_column(
        "score", pa.array([0.5] * 20)
    )
    for name in REFERENCE.feature_names:
        log = log.append_column(f"f_{name}", want.column(name).cast(pa.float64()))
    logdir = tmp_path / "log"
    logdir.mkdir()
    pq.write_table(log, logdir / "predictions-000000.parquet")
    monkeypatch.setenv("SKEWLESS_REGISTRY_DIR", str(tmp_path / "no-registry"))
    argv = ["--events", str(events), "--predictions", str(logdir)]
    code, out, err = _verify(capsys, data, *argv)
    assert code == 0, out + err
    body = json.loads(out)
    assert body["predictions"]["rows"] == 20 and body["predictions"]["mismatches"] == 0
    assert err == (
        f"skewless verify: no model registry at {tmp_path / 'no-registry'}: the predictions' score "
        "impact (max_score_delta, max_logged_score_error) is not computed; pass --registry\n"
    )
    code, out, err = _verify(capsys, data, *argv, "--registry", str(tmp_path / "nope"))
    assert (
        code == 2 and err == f"skewless verify: --registry: no such folder: {tmp_path / 'nope'}\n"
    )
