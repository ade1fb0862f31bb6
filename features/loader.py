"""Load the user's definitions module: ``--definitions MODULE_OR_FILE`` /
``SKEWLESS_DEFINITIONS``. The default is the reference fraud set.

A definitions module (a Python file or an importable module, outside the skewless source)
binds ``DEFINITIONS`` to a :class:`features.definitions.FeatureSet`. Anything it names that
its schema lacks is refused when it loads, with a message naming it.

>>> load_definitions(None).project
'skewless'
>>> load_definitions("no_such_module_xyz")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
features.loader.DefinitionsError: definitions: cannot import 'no_such_module_xyz' (No module ...)
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from features.definitions import FeatureSet

#: the definitions module used when none is given
DEFAULT = "features.reference"


class DefinitionsError(ValueError):
    """A definitions module cannot be loaded or is not valid; the message says why."""


def _import_file(path: Path) -> ModuleType:
    path = path.resolve()
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    name = f"skewless_definitions_{path.stem}_{digest}"
    module = sys.modules.get(name)
    if module is not None:
        return module
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise DefinitionsError(f"definitions: {path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before exec: dataclasses and pickle look it up by name
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def load_definitions(spec: str | Path | None) -> FeatureSet:
    """The ``DEFINITIONS`` of a module name or a ``.py`` file (None: the reference set)."""
    spec = str(spec) if spec else DEFAULT
    as_path = Path(spec)
    try:
        if spec.endswith(".py") or as_path.is_file():
            if not as_path.is_file():
                raise DefinitionsError(f"definitions: {spec} does not exist")
            module = _import_file(as_path)
        else:
            module = importlib.import_module(spec)
    except DefinitionsError:
        raise
    except ImportError as exc:
        raise DefinitionsError(f"definitions: cannot import {spec!r} ({exc})") from None
    except ValueError as exc:  # a definition type refused a field, a key, an input
        raise DefinitionsError(f"definitions: {spec}: {exc}") from None
    fs = getattr(module, "DEFINITIONS", None)
    if not isinstance(fs, FeatureSet):
        raise DefinitionsError(
            f"definitions: {spec} must bind DEFINITIONS to a features.definitions.FeatureSet "
            f"(found {type(fs).__name__})"
        )
    return fs
