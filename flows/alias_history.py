"""Where an alias has pointed (what ``skewless models rollback`` follows).

Every :func:`flows.registry.set_alias` appends one JSON line to
``<registry>/alias-history/<alias>.jsonl``: ``{at, alias, version, previous, action}``. The
versions an alias was promoted through form a stack: a ``set`` pushes, a ``rollback``
pops, so two rollbacks go back two promotions and a promotion after a rollback starts from
where the rollback left.

>>> import tempfile
>>> root = Path(tempfile.mkdtemp())
>>> record(root, "production", "v0001", None, "set")
>>> record(root, "production", "v0002", "v0001", "set")
>>> record(root, "production", "v0001", "v0002", "rollback")
>>> stack(root, "production"), [h["action"] for h in history(root, "production")]
(['v0001'], ['set', 'set', 'rollback'])
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HISTORY_DIR = "alias-history"


def history_path(root: Path, alias: str) -> Path:
    return root / HISTORY_DIR / f"{alias}.jsonl"


def record(root: Path, alias: str, version: str, previous: str | None, action: str) -> None:
    """Append one move (one ``write`` of a whole line, so concurrent writers interleave
    lines, never bytes of lines)."""
    path = history_path(root, alias)
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
    path = history_path(root, alias)
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
