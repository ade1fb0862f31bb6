"""The Feast repo, built from the definitions (never by hand): ``feast apply`` here registers
an entity, a Parquet source, a push source and a feature view per entity of the definitions
selected by ``SKEWLESS_DEFINITIONS`` (a module or a ``.py`` file; default: the reference
fraud set). Its Feast project must be the one named in ``feature_store.yaml`` (for your
own definitions, ``skewless feast-repo`` writes a repo under their project). Offline tables
come from ``skewless backfill --out DIR`` (``DIR/feast``); point ``SKEWLESS_FEAST_DATA`` at
that folder before ``feast materialize``."""

import os
from pathlib import Path

from features.feast_objects import build_feast_objects
from features.feast_request import request_time_views
from features.loader import DEFAULT, load_definitions

_DATA = Path(os.environ.get("SKEWLESS_FEAST_DATA", Path(__file__).parent / "data")).resolve()
_SPEC = os.environ.get("SKEWLESS_DEFINITIONS") or DEFAULT
_OBJECTS = build_feast_objects(load_definitions(_SPEC), _DATA)

# Feast discovers objects among this module's globals; the on-demand views give request-time
# values (pass request_time_ms in each entity row), the feature views as of the last event.
for _obj in [*_OBJECTS.all(), *request_time_views(_SPEC, _OBJECTS)]:
    globals()[f"{type(_obj).__name__.lower()}_{_obj.name}"] = _obj
