"""Memory and start-up settings for a backfill process, applied before Arrow is loaded.

Arrow's default pool (mimalloc 3) reserves a 1 GiB arena and asks the kernel for
transparent huge pages on it (its ``allow_thp`` option). In a new process every page
of the job's working set (~1.5 GB for 2M events) is touched for the first time, and on
the reference machine (a VM whose freed memory goes back to the host) a first-touch
2 MiB fault, zeroed whole, cost more than the 4 KiB faults it saves: the command's
system CPU was 2.8-4.4 s with huge pages and 1.8-3.3 s without, every one of 3
alternated rounds lower by ~1 s, user CPU unchanged (docs/perf-plan.md, "Session 7:
the command's start"). numpy's huge pages are off for the job for the same reason
(:func:`flows.backfill.small_pages`).

mimalloc reads its options once, when Arrow's library is loaded, so this must run
before the first ``import pyarrow``; a setting the user made stays theirs.

>>> env = {"MIMALLOC_ALLOW_THP": "1"}
>>> arrow_small_pages(env, arrow_loaded=False), env["MIMALLOC_ALLOW_THP"]
(False, '1')
>>> env = {}
>>> arrow_small_pages(env, arrow_loaded=False), env
(True, {'MIMALLOC_ALLOW_THP': '0'})
>>> arrow_small_pages({}, arrow_loaded=True)
False
"""

from __future__ import annotations

import sys
from collections.abc import MutableMapping
from importlib.machinery import ModuleSpec
from types import ModuleType

#: mimalloc's option for transparent huge pages (read from the environment at load)
THP_OPTION = "MIMALLOC_ALLOW_THP"


def arrow_small_pages(environ: MutableMapping[str, str], arrow_loaded: bool | None = None) -> bool:
    """Turn mimalloc's huge pages off in ``environ`` (``os.environ`` for this process) if
    Arrow is not loaded yet and the user has not chosen; True when it was set here."""
    if arrow_loaded is None:
        arrow_loaded = "pyarrow" in sys.modules
    if arrow_loaded or THP_OPTION in environ:
        return False
    environ[THP_OPTION] = "0"
    return True


class _HidePandas:
    """A meta path finder that fails ``import pandas`` (and its submodules)."""

    @staticmethod
    def find_spec(
        name: str, path: object = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if name == "pandas" or name.startswith("pandas."):
            raise ImportError("pandas hidden while pyarrow loads (flows.backfill_memory)")
        return None


def arrow_without_pandas() -> bool:
    """Load pyarrow (and its dataset and Parquet modules) telling it pandas is absent, so
    the single-process job never imports pandas; True when done here.

    pyarrow imports pandas on its first conversion of any kind, only to ask whether an
    input is a pandas object: ~0.3 s of the command's ~0.5 s start (a third of its CPU on
    a small file), for a job that has none. Its shim remembers "absent" for those
    questions, but retries the import where pandas is really needed (``to_pandas``), and
    ``import pandas`` works as usual afterwards: the finder is in place only while pyarrow
    loads. Not done when pandas is already loaded (a user's definitions imported it)."""
    if "pandas" in sys.modules or "pyarrow.dataset" in sys.modules:
        return False
    sys.meta_path.insert(0, _HidePandas)
    try:
        import pyarrow.dataset  # its module init asks the shim too
        import pyarrow.lib
        import pyarrow.parquet

        pyarrow.lib._pandas_api.have_pandas  # noqa: B018  (decided here: absent)
    finally:
        sys.meta_path.remove(_HidePandas)
    return True
