"""Feast imported without typeguard's import-time instrumentation, in skewless's commands.

Feast decorates its public classes (``Entity``, ``FeatureView``, ``OnDemandFeatureView``,
``DataSource``, ...) with typeguard's ``@typechecked``. typeguard 4 instruments when a class
is defined: for each of its methods it reads the module's source, parses it and compiles the
whole module again (typeguard issue #468). On the reference machine ``import feast`` took
8.9-9.2 CPU-s with it and 2.4-2.5 with Feast's decorators passed through (3 alternated
rounds; docs/perf-plan.md, "Feast's import"), and every skewless process that touches
Feast paid it: the demo, ``verify``, ``feast-repo``, a stream or backfill on the embedded
(SQLite) store.

What Feast loses: the run-time checks of argument types on its own classes. In a skewless
command Feast objects are made only by the generator from definitions already validated
(:mod:`features.feast_objects`), so those checks had nothing left to find. Anything else
decorated with ``@typechecked`` (a user's definitions module, say) is instrumented as
before. Only processes started by ``skewless`` do this; a program importing skewless as a
library, and Feast's own ``feast`` command, keep Feast as it is.
"""

from __future__ import annotations

import functools
import sys
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any


def _from_feast(target: Any) -> bool:
    module = getattr(target, "__module__", None) or getattr(
        getattr(target, "__func__", None), "__module__", None
    )
    return isinstance(module, str) and (module == "feast" or module.startswith("feast."))


def _feast_passes(real: Any) -> Any:
    """typeguard's ``typechecked``, returning Feast's own targets undecorated."""

    @functools.wraps(real)
    def typechecked(target: Any = None, **options: Any) -> Any:
        if target is None:  # @typechecked(option=...)
            return functools.partial(typechecked, **options)
        if _from_feast(target):
            return target
        return real(target, **options)

    typechecked.__skewless_feast_passes__ = True  # type: ignore[attr-defined]
    return typechecked


def _patch_typeguard() -> bool:
    try:
        import typeguard
    except ImportError:  # a Feast without typeguard: nothing to skip
        return False
    if getattr(typeguard.typechecked, "__skewless_feast_passes__", False):
        return False
    typeguard.typechecked = _feast_passes(typeguard.typechecked)
    return True


class _BeforeFeast:
    """A meta path finder that patches typeguard when ``feast`` is first looked for (Feast's
    modules take ``typechecked`` from typeguard as they load), and finds nothing itself."""

    done = False

    @classmethod
    def find_spec(
        cls, name: str, path: object = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if name == "feast" and not cls.done:
            cls.done = True
            _patch_typeguard()
        return None


def feast_unchecked() -> bool:
    """Make this process's first ``import feast`` skip typeguard's instrumentation of Feast's
    classes; True when set up here (False when Feast is loaded already or it is set)."""
    if "feast" in sys.modules or _BeforeFeast in sys.meta_path:
        return False
    sys.meta_path.insert(0, _BeforeFeast)
    return True
