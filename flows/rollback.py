"""``skewless models rollback``: move an alias back along its history
(:mod:`flows.alias_history`), refusing a target that serving would refuse.

>>> import tempfile
>>> from flows.alias_history import history
>>> from flows.registry import publish
>>> root = Path(tempfile.mkdtemp())
>>> for _ in range(3):
...     set_alias(root, "production", publish(root, lambda d: None, {"feature_names": []}))
>>> rollback(root, "production"), rollback(root, "production")
(('v0003', 'v0002'), ('v0002', 'v0001'))
>>> rollback(root, "production")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
flows.registry.RegistryError: alias: 'production' has no earlier version recorded in ...
>>> [h["action"] for h in history(root, "production")]
['set', 'set', 'set', 'rollback', 'rollback']
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flows.alias_history import history_path, stack
from flows.registry import RegistryError, aliases, set_alias


def rollback(root: Path, alias: str, check: Callable[[Path], Any] | None = None) -> tuple[str, str]:
    """Move ``alias`` to the version before its current one; returns (from, to).
    ``check(version_dir)`` may refuse the target (raising) before anything moves."""
    current = aliases(root).get(alias)
    if current is None:
        raise RegistryError(f"alias: {alias!r} is not set in {root}")
    versions = stack(root, alias)
    if not versions or versions[-1] != current:  # moved outside set_alias: trust the file
        versions.append(current)
    if len(versions) < 2:
        raise RegistryError(
            f"alias: {alias!r} has no earlier version recorded in {history_path(root, alias)}; "
            "use `skewless models promote VERSION`"
        )
    target = versions[-2]
    if check is not None:
        check(root / "versions" / target)
    set_alias(root, alias, target, action="rollback")
    return current, target


Handler = Callable[[argparse.Namespace, Any], int]


def add_cli(
    sub: argparse._SubParsersAction,
    command: Callable[[str], Callable[[Handler], Handler]],
    models: Handler,
) -> None:
    """Add ``skewless models rollback`` beside the actions ``models`` (its handler)
    already has.

    >>> p = argparse.ArgumentParser(prog="skewless"); sub = p.add_subparsers(dest="command")
    >>> from flows.train import add_cli as add_train
    >>> add_train(sub, lambda name: lambda fn: fn)
    >>> add_cli(sub, lambda name: lambda fn: fn, lambda a, s: 0)
    >>> a = p.parse_args(["models", "rollback", "--alias", "canary"]); (a.models_command, a.alias)
    ('rollback', 'canary')
    """
    parser = sub.choices["models"]
    actions = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    rb = actions.add_parser("rollback", help="move an alias back to its previous version")
    rb.add_argument("--alias", help="default: SKEWLESS_MODEL_ALIAS (production)")
    rb.add_argument("--registry", type=Path, help="default: SKEWLESS_REGISTRY_DIR")

    def handler(args: argparse.Namespace, settings: Any) -> int:
        if args.models_command != "rollback":
            return models(args, settings)
        from features.loader import load_definitions
        from flows.artifacts import read_artifacts

        fingerprint = load_definitions(settings.definitions).fingerprint()
        alias = args.alias or settings.model_alias
        before, after = rollback(
            args.registry or settings.registry_dir, alias,
            check=lambda d: read_artifacts(d, fingerprint),  # refuse what serving would
        )  # fmt: skip
        print(f"{alias}: {before} -> {after} (rollback)")
        return 0

    command("models")(handler)
