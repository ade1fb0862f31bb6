"""Shared fixtures: the real Kafka broker and Redis server (started by scripts/services.sh)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator

import pytest

pytest_plugins = ["tests.service_fixtures"]


def _is_null_device(path: str = os.devnull) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISCHR(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == (1, 3)


@pytest.fixture(autouse=True)
def _dev_null_stays_the_null_device() -> Iterator[None]:
    """CI's clippy once failed on a /dev/null that had become a regular file (see
    scripts/devnull.sh); if a test ever does that, it fails by name instead of a later
    cargo run failing with an error that names nothing of ours."""
    before = _is_null_device()
    yield
    if before and not _is_null_device():
        pytest.fail(f"{os.devnull} is no longer the null device after this test", pytrace=False)
