"""The commands ``skewless demo`` ends with: ``serve``, ``score``, ``verify`` and ``models``
on the demo's own folder, exactly as they can be pasted into a shell (a test runs them).

The demo's folder is a data root, so ``--data-dir`` alone points every command at its
registry, online store and prediction log.

>>> lines = commands(Path("out/demo"), "skewless", Settings(), {"card_id": 7,
...     "merchant_id": 3, "amount": 12.5, "event_time": 1700000000000})
>>> print("\\n".join(lines))  # doctest: +NORMALIZE_WHITESPACE
skewless --data-dir out/demo serve
skewless --data-dir out/demo score --card-id 7 --merchant-id 3 --amount 12.5
    --event-time 1700000000000 --include-features
skewless --data-dir out/demo verify --events out/demo/events.parquet
skewless --data-dir out/demo models list
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa

from features.settings import Settings


def shown_path(path: Path, cwd: Path | None = None) -> str:
    """``path`` relative to the working directory when it lies below it, else absolute.

    >>> shown_path(Path("/a/b/c"), Path("/a")), shown_path(Path("/x/y"), Path("/a"))
    ('b/c', '/x/y')
    """
    full = Path(os.path.abspath(path))  # symlinks kept: .venv may be one
    try:
        return str(full.relative_to(cwd or Path.cwd()))
    except ValueError:
        return str(full)


def executable() -> str:
    """How to call ``skewless`` from here: the console script beside this Python (e.g.
    ``.venv/bin/skewless``), else the module."""
    script = Path(sys.executable).with_name("skewless")
    if script.is_file():
        return shown_path(script)
    return f"{shown_path(Path(sys.executable))} -m skewless"


def commands(
    out: Path, exe: str, settings: Settings, event: dict[str, Any], redis: bool = False
) -> list[str]:
    """serve, score, verify, models list: in that order, one line each."""
    data = shlex.quote(str(out))
    env = ""
    if settings.redis_url and not redis:  # the demo used SQLite; so must these
        env = "SKEWLESS_REDIS_URL= "
    base = f"{env}{exe} --data-dir {data}"
    if settings.definitions:  # the demo ran the reference set, whatever the environment says
        base += " --definitions features.reference"
    registry = ""
    if settings.registry_dir != settings.data_dir / "registry":  # SKEWLESS_REGISTRY_DIR is set
        registry = f" --registry {shlex.quote(str(out / 'registry'))}"
    score = (
        f"--card-id {event['card_id']} --merchant-id {event['merchant_id']} "
        f"--amount {event['amount']} --event-time {event['event_time']} --include-features"
    )
    events = shlex.quote(str(out / "events.parquet"))
    return [
        f"{base} serve{registry}",
        f"{base} score {score}",
        f"{base} verify --events {events}{registry}",
        f"{base} models list{registry}",
    ]


def print_commands(
    out: Path, settings: Settings, scored: pa.Table, kafka: bool = False, redis: bool = False
) -> None:
    row = scored.slice(scored.num_rows - 1).to_pylist()[0]
    event = {
        "card_id": row["card_id"], "merchant_id": row["merchant_id"], "amount": row["amount"],
        "event_time": int(row["event_time"].timestamp() * 1000),
    }  # fmt: skip
    serve, score, verify, models = commands(
        Path(shown_path(out)), executable(), settings, event, redis
    )
    print()
    print("next, on this demo's folder (a data root: registry, online store, prediction log):")
    print(f"  {serve}   # {settings.grpc_address}; ready once it logs 'is now served'")
    print(f"  {score}   # in a 2nd terminal")
    print(f"  {verify}")
    print(f"  {models}")
    if kafka:
        print("  (serve logs predictions to Kafka while SKEWLESS_KAFKA_BOOTSTRAP is set)")
