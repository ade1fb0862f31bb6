"""Subcommands whose options live beside their code (``add_cli`` in their module), added
to the parser only when chosen.

Building every subcommand's options imported every module behind them (``flows.train``
alone brings XGBoost: ~0.3 s), so each command paid for all the others at start. Now the
command line's chosen subcommand imports its own module; the others get a placeholder
with the same one-line help, so ``skewless --help`` still lists them all. When the chosen
name cannot be told from the arguments before parsing (an abbreviated global option),
:func:`skewless.cli.main` parses again with every module loaded.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Sequence
from importlib import import_module
from typing import Any

#: subcommand -> (the module whose ``add_cli`` adds it, its help: a test holds them equal)
ELSEWHERE: dict[str, tuple[str, str]] = {
    "train": ("flows.train", "XGBoost model from backfilled features, registered with lineage"),
    "models": ("flows.models_cli", "list registered model versions, move aliases"),
    "store": ("skewless.store_cli", "the Redis online store's layout"),
    "monitor": (
        "flows.monitor_cli",
        "drift and quality over the prediction log and labels: JSON + HTML",
    ),
    "predict": ("flows.predict", "batch prediction with the backfill's point-in-time features"),
    "retrain": ("flows.retrain", "challenger vs champion, gated promotion, decision record"),
    "serve": ("serving.cli", "the gRPC scoring service (features at request time + model)"),
    "score": ("serving.cli", "score events against a running `skewless serve`"),
}
#: the global options that take a value (``--data-dir DIR``): skipped to find the command
_VALUED = ("--data-dir", "--log-level", "--definitions")


def chosen(argv: Sequence[str]) -> str | None:
    """The subcommand's name in ``argv`` (the first word that is no option or value)."""
    words = iter(argv)
    for word in words:
        if len(word) > 2 and any(v.startswith(word) for v in _VALUED):  # argparse's prefixes
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def add_elsewhere(
    sub: argparse._SubParsersAction,
    command: Callable[[str], Any],
    names: Iterable[str],
) -> None:
    """The real options of ``names``' modules, a placeholder for every other name."""
    modules = dict.fromkeys(ELSEWHERE[n][0] for n in names if n in ELSEWHERE)
    for module in modules:
        import_module(module).add_cli(sub, command)
    for name, (module, help_text) in ELSEWHERE.items():
        if module not in modules:
            sub.add_parser(name, help=help_text).set_defaults(placeholder=True)
