"""Where the suite starts the real ``feast`` CLI: only where the CLI is what is tested.

Each ``feast`` process pays Feast's import (typeguard instruments ~20 of its classes at
import, typeguard issue #468: ~6-9 CPU-s a process; ``skewless`` processes skip it through
``skewless/feast_start.py``, the ``feast`` command cannot). A test about something else (R4's
bootstrap, a Redis Cluster, the views of a generated repo) calls the Feast SDK in its own
process instead: ``FeatureStore.apply`` / ``.materialize``, the calls the CLI makes.
docs/perf-plan.md, "Session 11: the suite's time"."""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
FEAST_CLI = re.compile(r"""Path\(sys\.executable\)\.parent / "feast"\)""")


def _cli_sites() -> dict[str, int]:
    """Test file (relative to tests/) -> how many times it names the ``feast`` executable."""
    found = {}
    for path in sorted(TESTS.rglob("*.py")):
        if path == Path(__file__).resolve():
            continue
        n = len(FEAST_CLI.findall(path.read_text(encoding="utf-8")))
        if n:
            found[path.relative_to(TESTS).as_posix()] = n
    return found


def test_the_feast_cli_runs_only_where_it_is_tested() -> None:
    assert _cli_sites() == {
        "feature_repo/test_repo.py": 1,  # `feast apply` registers what features/ defines
        "feature_repo/test_repo_errors.py": 1,  # its errors, relative folders, a redis:// URL
        "skewless/test_feast_repo.py": 1,  # apply + materialize in a generated repo
    }


def test_a_real_feast_apply_and_materialize_stay() -> None:
    """At least one real ``feast apply`` and one real ``feast materialize`` in the suite."""
    text = {p: (TESTS / p).read_text(encoding="utf-8") for p in _cli_sites()}
    assert any('"apply"' in t for t in text.values())
    assert any('"materialize"' in t for t in text.values())
