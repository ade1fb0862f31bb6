"""Where an alias has pointed, and moving it back: ``skewless models rollback``.

Every :func:`flows.registry.set_alias` appends one JSON line to
``<registry>/alias-history/<alias>.jsonl``: ``{at, alias, version, previous, action}``. The
versions an alias was promoted through form a stack: a ``set`` pushes, a ``rollback``
pops, so two rollbacks go back two promotions and a promotion after a rollback starts from
where the rollback left.

>>> import tempfile
>>> from flows.registry import publish, resolve, set_alias
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
import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HISTORY_DIR = "alias-history"


def _path(root: Path, alias: str) -> Path:
    return root / HISTORY_DIR / f"{alias}.jsonl"


def record(root: Path, alias: str, version: str, previous: str | None, action: str) -> None:
    """Append one move (one ``write`` of a whole line, so concurrent writers interleave
    lines, never bytes of lines)."""
    path = _path(root, alias)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({
        "at": datetime.now(UTC).isoformat(timespec="milliseconds"), "alias": alias,
        "version": version, "previous": previous, "action": action,
    }, sort_keys=True)  # fmt: skip
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def history(root: Path, alias: str) -> list[dict[str, Any]]:
    """Every recorded move of ``alias``, oldest first."""
    path = _path(root, alias)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def stack(root: Path, alias: str) -> list[str]:
    """The versions the alias was promoted through, the current one last."""
    out: list[str] = []
    for h in history(root, alias):
        if h["action"] == "rollback":
            if out:
                out.pop()
        elif not out or out[-1] != h["version"]:
            out.append(h["version"])
    return out


def rollback(root: Path, alias: str, check: Callable[[Path], Any] | None = None) -> tuple[str, str]:
    """Move ``alias`` to the version before its current one; returns (from, to).
    ``check(version_dir)`` may refuse the target (raising) before anything moves."""
    from flows.registry import RegistryError, aliases, set_alias

    current = aliases(root).get(alias)
    if current is None:
        raise RegistryError(f"alias: {alias!r} is not set in {root}")
    versions = stack(root, alias)
    if not versions or versions[-1] != current:  # moved outside set_alias: trust the file
        versions.append(current)
    if len(versions) < 2:
        raise RegistryError(
            f"alias: {alias!r} has no earlier version recorded in {_path(root, alias)}; "
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
