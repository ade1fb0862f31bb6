"""The command line adds a subcommand's options only when it is chosen (skewless/cli_lazy.py)."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from skewless.cli import _parser
from skewless.cli_lazy import ELSEWHERE, chosen


def _helps(p: argparse.ArgumentParser) -> dict[str, str | None]:
    [sub] = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
    return {a.dest: a.help for a in sub._choices_actions}


def test_placeholders_say_what_the_real_subcommands_say() -> None:
    real, lazy = _helps(_parser()), _helps(_parser(["backfill"]))
    assert set(real) == set(lazy) and set(ELSEWHERE) <= set(real)
    for name in ELSEWHERE:
        assert lazy[name] == real[name], name


@pytest.mark.parametrize(
    ("argv", "name"),
    [
        (["train", "--features", "f"], "train"),
        (["--data-dir", "d", "serve"], "serve"),
        (["--defin", "x.py", "--log-level=DEBUG", "models", "list"], "models"),
        (["--help"], None),
    ],
)
def test_the_chosen_subcommand(argv: list[str], name: str | None) -> None:
    assert chosen(argv) == name


def test_a_command_imports_no_other_commands_module() -> None:
    code = (
        "import sys\nfrom skewless.cli import _parser\n"
        "_parser(['backfill']).parse_args(['backfill', '--events', 'e', '--out', 'o'])\n"
        f"print(sorted(m for m in {sorted({m for m, _ in ELSEWHERE.values()})!r} "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    args = _parser(["train", "--features", "f.parquet"]).parse_args(["train", "--features", "f"])
    assert args.command == "train" and not getattr(args, "placeholder", False)
