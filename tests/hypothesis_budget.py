"""How many examples a property runs. ``make test`` runs each property's CI count: the
count where it still finds the bugs planted in its code (docs/perf-plan.md, "The test
suite's time (session 10)"); ``SKEWLESS_HYPOTHESIS=thorough`` runs the larger count it
had before, for a deeper search (minutes longer).

>>> examples(ci=500, thorough=3000) in (500, 3000)
True
"""

from __future__ import annotations

import os

THOROUGH = os.environ.get("SKEWLESS_HYPOTHESIS", "ci") == "thorough"


def examples(*, ci: int, thorough: int) -> int:
    """``thorough`` under ``SKEWLESS_HYPOTHESIS=thorough``, else ``ci``."""
    return thorough if THOROUGH else ci
