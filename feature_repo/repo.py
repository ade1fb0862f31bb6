"""The Feast repo, built from the definitions (never by hand): ``feast apply`` here registers
an entity, a Parquet source, a push source and a feature view per entity of the definitions
selected by ``SKEWLESS_DEFINITIONS`` (a module or a ``.py`` file; default: the reference
fraud set). Its Feast project must be the one named in ``feature_store.yaml`` (for your
own definitions, ``skewless feast-repo`` writes a repo under their project). Offline tables
come from ``skewless backfill --out DIR`` (``DIR/feast``); point ``SKEWLESS_FEAST_DATA`` at
that folder before ``feast apply`` and ``feast materialize``."""

import os
import sys
from pathlib import Path

from features.feast_objects import build_feast_objects, offline_table_name
from features.feast_request import request_time_views
from features.loader import DEFAULT, load_definitions


def _from_caller(raw: str) -> Path:
    """A path from the environment, absolute. Feast imports this module after changing into
    the repo folder, so a relative path is taken from the folder ``feast`` was started in
    (the shell's ``$PWD``), as the user typed it, not from ``feature_repo/``."""
    path = Path(raw).expanduser()
    if not path.is_absolute():
        caller = os.environ.get("PWD", "")
        path = (Path(caller) if caller and Path(caller).is_dir() else Path.cwd()) / path
    return path.resolve()


def _data_dir() -> Path:
    raw = os.environ.get("SKEWLESS_FEAST_DATA", "")
    if not raw:
        return (Path(__file__).parent / "data").resolve()
    return _from_caller(raw)


_DATA = _data_dir()
_SPEC = os.environ.get("SKEWLESS_DEFINITIONS") or DEFAULT
if _SPEC.endswith(".py"):  # a file, not a module name: the same rule as the data folder
    _SPEC = str(_from_caller(_SPEC))
try:
    _FS = load_definitions(_SPEC)
except ValueError as exc:  # one line, not the traceback the Feast CLI prints for the rest
    raise SystemExit(f"feature_repo: {exc} (SKEWLESS_DEFINITIONS)") from None
_OBJECTS = build_feast_objects(_FS, _DATA)
_MISSING = [n for n in map(offline_table_name, _FS.entities) if not (_DATA / n).is_file()]
if _MISSING:  # said now: `feast materialize` would fail on it with a dask traceback
    print(
        f"feature_repo: note: {_DATA} has no {', '.join(_MISSING)} (yet); `feast materialize` "
        "reads them: run `skewless backfill --out DIR` and set SKEWLESS_FEAST_DATA=DIR/feast",
        file=sys.stderr,
    )

# Feast discovers objects among this module's globals; the on-demand views give request-time
# values (pass request_time_ms in each entity row), the feature views as of the last event.
for _obj in [*_OBJECTS.all(), *request_time_views(_SPEC, _OBJECTS)]:
    globals()[f"{type(_obj).__name__.lower()}_{_obj.name}"] = _obj
