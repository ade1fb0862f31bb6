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
