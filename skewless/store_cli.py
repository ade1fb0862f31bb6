"""``skewless store migrate``: rename a Redis online store's rows written before the
as-of-last view was renamed (``<entity>_features`` -> ``<entity>_features_as_of_last_event``)
in place, so that every reader (the stream, the server, ``verify``, Feast) finds them."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

Handler = Callable[[argparse.Namespace, Any], int]


def add_cli(
    sub: argparse._SubParsersAction, command: Callable[[str], Callable[[Handler], Handler]]
) -> None:
    """Add ``skewless store``; the handler is registered with ``command("store")``.

    >>> p = argparse.ArgumentParser(prog="skewless"); sub = p.add_subparsers(dest="command")
    >>> add_cli(sub, lambda name: lambda fn: fn)
    >>> p.parse_args(["store", "migrate"]).store_command
    'migrate'
    """
    s = sub.add_parser("store", help="the Redis online store's layout")
    actions = s.add_subparsers(dest="store_command", required=True, metavar="ACTION")
    actions.add_parser(
        "migrate", help="rename rows written with the old view names in place (SKEWLESS_REDIS_URL)"
    )
    command("store")(_store_command)


def _store_command(args: argparse.Namespace, settings: Any) -> int:
    from features.loader import load_definitions
    from features.settings import masked_url
    from features.store.layout import migrate

    if not settings.redis_url:
        raise ValueError(
            "store migrate: set SKEWLESS_REDIS_URL to the online store "
            "(the embedded SQLite store is rebuilt by `feast materialize`, not migrated)"
        )
    fs = load_definitions(settings.definitions)
    renamed, current = migrate(settings.redis_url, fs)
    print(
        f"{masked_url(settings.redis_url)}: project '{fs.project}': {renamed:,} rows renamed, "
        f"{current:,} already in the current layout"
    )
    return 0
