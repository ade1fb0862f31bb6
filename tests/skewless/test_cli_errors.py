"""The first hour's wrong arguments get one line naming what is wrong, never a traceback:
a missing input file for every command that reads one, an output path that is a file,
``score`` with no server, and ``skewless --version``."""

from __future__ import annotations

import socket
from importlib.metadata import version
from pathlib import Path

import pytest

from flows.simulate import SimulationConfig, simulate, write_events
from skewless.cli import main


@pytest.fixture(autouse=True)
def _no_skewless_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in [n for n in os.environ if n.startswith("SKEWLESS_")]:
        monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ev") / "ev.parquet"
    write_events(simulate(SimulationConfig(events=200, cards=10, merchants=3, days=1.0)), path)
    return path


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "what"),
    [
        (["backfill", "--events", "{missing}", "--out", "{tmp}/bf"], "events"),
        (
            ["backfill", "--events", "{events}", "--out", "{tmp}/bf", "--spine", "{missing}"],
            "spine",
        ),
        (["train", "--features", "{missing}", "--registry", "{tmp}/reg"], "features"),
        (["produce", "--events", "{missing}"], "--events"),
        (["stream", "--replay", "{missing}", "--no-tail"], "--replay"),
        (["verify", "--events", "{missing}"], "--events"),
        (["score", "--file", "{missing}"], "--file"),
    ],
)
def test_a_missing_input_is_no_such_file(
    argv: list[str], what: str, events: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope" / "events.parquet"
    args = [a.format(missing=missing, tmp=tmp_path, events=events) for a in argv]
    code, err = _run(capsys, "--data-dir", str(tmp_path / "data"), *args)
    assert code == 2
    assert err == f"skewless {argv[0]}: {what}: no such file: {missing}\n"


@pytest.mark.parametrize("command", ["backfill", "stream", "verify"])
def test_a_file_that_is_not_parquet_says_so(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "junk.parquet"
    junk.write_text("transaction_id,card_id\n")
    flag = {"backfill": "--events", "stream": "--replay", "verify": "--events"}[command]
    argv = [command, flag, str(junk)] + (["--out", str(tmp_path / "bf")] * (command == "backfill"))
    code, err = _run(capsys, "--data-dir", str(tmp_path / "data"), *argv)
    assert code == 2
    assert err.startswith(f"skewless {command}: ") and f"cannot read {junk} as Parquet" in err
    assert err.count("\n") == 1


def test_an_output_path_that_is_a_file_is_one_line(
    events: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "taken"
    out.write_text("")
    code, err = _run(capsys, "backfill", "--events", str(events), "--out", str(out))
    assert code == 2
    assert err == f"skewless backfill: {out}: File exists\n"


def test_score_without_a_server_names_the_address_and_how_to_start_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with socket.socket() as s:  # bound then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    code, err = _run(capsys, "score", "--address", address, "--card-id", "7", "--amount", "12.5")
    assert code == 2
    assert err.startswith(f"skewless score: no skewless server at {address} (connection refused)")
    assert f"`skewless serve --address {address}`" in err and err.count("\n") == 1


def test_score_json_that_is_not_json_names_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(capsys, "score", "--json", "{")
    assert code == 2 and err.startswith("skewless score: --json: not JSON (")


def test_version_comes_from_the_package_metadata(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"skewless {version('skewless')}\n"


def test_an_unknown_log_level_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(capsys, "--log-level", "LOUD", "models", "list", "--registry", "nowhere")
    assert code == 2
    assert err == (
        "skewless: --log-level: 'LOUD' is not one of DEBUG, INFO, WARNING, ERROR "
        "(SKEWLESS_LOG_LEVEL)\n"
    )


def test_a_definitions_file_with_a_syntax_error_names_file_and_line(
    events: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "mine.py"
    bad.write_text("from features.definitions import FeatureSet\nDEFINITIONS = (\n")
    argv = ["--definitions", str(bad), "backfill", "--events", str(events), "--out", "bf"]
    code, err = _run(capsys, *argv)
    assert code == 2
    assert err == f"skewless backfill: definitions: {bad}, line 2: '(' was never closed\n"


def test_an_unknown_bench_suite_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["bench", "backfil"])
    assert done.value.code == 2
    assert "argument suites: 'backfil' is not one of backfill, stream, serve" in (
        capsys.readouterr().err
    )


def test_verify_from_a_topic_on_a_dead_broker_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        bootstrap = f"127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("SKEWLESS_KAFKA_BOOTSTRAP", bootstrap)
    code, err = _run(capsys, "--data-dir", str(tmp_path), "verify", "--topic", "transactions")
    assert code == 2
    assert err.startswith(f"skewless verify: Kafka at {bootstrap} is unreachable (")
    assert "scripts/services.sh kafka-start DIR" in err and err.count("\n") == 1


def test_score_to_a_host_that_does_not_resolve_says_so(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["score", "--address", "no-such-host.invalid:50051", "--card-id", "7", "--amount", "1"]
    code, err = _run(capsys, *argv)
    assert code == 2
    assert err.startswith("skewless score: cannot reach a skewless server at no-such-host.invalid")
    assert "`skewless serve --address no-such-host.invalid:50051`" in err


def test_ctrl_c_ends_a_command_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from skewless import cli

    def interrupted(args: object, settings: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setitem(cli._COMMANDS, "simulate", interrupted)
    code, err = _run(capsys, "simulate", "--out", "x.parquet")
    assert code == 130 and err == "\nskewless simulate: interrupted\n"
