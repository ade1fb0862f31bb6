"""A skewless command imports Feast without typeguard's instrumentation of Feast's classes,
and nothing else loses its checks (skewless.feast_start)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from skewless.feast_start import _from_feast

# typeguard 4 rewrites an instrumented method to call its argument checks
PROBE = textwrap.dedent(
    """
    import json, sys
    {setup}
    import feast
    import typeguard
    from feast import Entity, FeatureView, Field

    def instrumented(fn):
        return "check_argument_types_internal" in fn.__code__.co_names

    @typeguard.typechecked
    class Mine:
        def take(self, x: int) -> int:
            return x

    try:
        Mine().take("not an int")
        mine_checked = False
    except typeguard.TypeCheckError:
        mine_checked = True
    print(json.dumps({{
        "feast": [instrumented(c.__init__) for c in (Entity, FeatureView, Field)],
        "mine": instrumented(Mine.take),
        "mine_checked": mine_checked,
    }}))
    """
)

MAIN = """
from skewless.cli import main
try:
    main(["--help"])
except SystemExit:
    pass
"""


def _probe(setup: str, tmp_path: Path) -> dict[str, object]:
    script = tmp_path / "probe.py"  # a file: typeguard reads the source it instruments
    script.write_text(PROBE.format(setup=setup))
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_skewless_command_imports_feast_unchecked_and_leaves_other_code_checked(tmp_path):
    got = _probe(MAIN, tmp_path)
    assert got == {"feast": [False, False, False], "mine": True, "mine_checked": True}


def test_without_it_feast_is_instrumented_as_usual(tmp_path):
    # the control: the probe sees typeguard's instrumentation where it is in place
    got = _probe("", tmp_path)
    assert got == {"feast": [True, True, True], "mine": True, "mine_checked": True}


def test_only_feast_modules_are_told_apart():
    def f() -> None: ...

    f.__module__ = "feast.entity"
    assert _from_feast(f)
    assert _from_feast(classmethod(f))
    f.__module__ = "feastly"
    assert not _from_feast(f)
    f.__module__ = "features.feast_objects"
    assert not _from_feast(f)
