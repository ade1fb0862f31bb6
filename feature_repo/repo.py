"""The Feast repo, built from ``features/`` (never by hand): ``feast apply`` here registers
an entity, a Parquet source, a push source and a feature view per entity of the reference
feature set. Offline tables come from ``skewless backfill --out DIR`` (``DIR/feast``); point
``SKEWLESS_FEAST_DATA`` at that folder before ``feast materialize``."""

import os
from pathlib import Path

from features.feast_objects import build_feast_objects
from features.reference import REFERENCE

_DATA = Path(os.environ.get("SKEWLESS_FEAST_DATA", Path(__file__).parent / "data")).resolve()
_OBJECTS = build_feast_objects(REFERENCE, _DATA)

# Feast discovers objects among this module's globals.
for _obj in _OBJECTS.all():
    globals()[f"{type(_obj).__name__.lower()}_{_obj.name}"] = _obj
