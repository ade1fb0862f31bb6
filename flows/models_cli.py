"""``skewless models {list,promote,rollback}``: the registry's versions and the aliases that
point at them. Every move is checked first: a target that serving would refuse (corrupt,
or built for other definitions) is refused and the alias stays where it was."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

Handler = Callable[[argparse.Namespace, Any], int]


def add_cli(
    sub: argparse._SubParsersAction, command: Callable[[str], Callable[[Handler], Handler]]
) -> None:
    """Add ``skewless models``; the handler is registered with ``command("models")``.

    >>> p = argparse.ArgumentParser(prog="skewless"); sub = p.add_subparsers(dest="command")
    >>> add_cli(sub, lambda name: lambda fn: fn)
    >>> a = p.parse_args(["models", "promote", "v0002"]); (a.models_command, a.version, a.alias)
    ('promote', 'v0002', None)
    >>> a = p.parse_args(["models", "rollback", "--alias", "canary"]); (a.models_command, a.alias)
    ('rollback', 'canary')
    """
    registry_help = "registry directory (default: SKEWLESS_REGISTRY_DIR)"
    m = sub.add_parser("models", help="list registered model versions, move aliases")
    actions = m.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    ls = actions.add_parser("list", help="every version, its aliases, test metrics and integrity")
    ls.add_argument("--registry", type=Path, help=registry_help)
    pr = actions.add_parser("promote", help="point an alias at a version (checked first)")
    pr.add_argument("version")
    pr.add_argument("--alias", help="default: SKEWLESS_MODEL_ALIAS (production)")
    pr.add_argument("--registry", type=Path, help=registry_help)
    rb = actions.add_parser("rollback", help="move an alias back to its previous version")
    rb.add_argument("--alias", help="default: SKEWLESS_MODEL_ALIAS (production)")
    rb.add_argument("--registry", type=Path, help=registry_help)
    command("models")(_models_command)


def _models_command(args: argparse.Namespace, settings: Any) -> int:
    from features.loader import load_definitions
    from flows.artifacts import read_artifacts
    from flows.registry import aliases, resolve, set_alias
    from flows.rollback import rollback
    from flows.train_report import models_table

    fingerprint = load_definitions(settings.definitions).fingerprint()
    root = args.registry or settings.registry_dir
    if args.models_command == "list":
        print(models_table(root, fingerprint))
        return 0
    alias = args.alias or settings.model_alias
    if args.models_command == "rollback":
        before, after = rollback(root, alias, check=lambda d: read_artifacts(d, fingerprint))
        print(f"{alias}: {before} -> {after} (rollback)")
        return 0
    read_artifacts(resolve(root, args.version), fingerprint)  # refuse what serving would
    was = aliases(root).get(alias)
    set_alias(root, alias, args.version)
    print(f"{alias}: {was or '(unset)'} -> {args.version}")
    return 0
