"""scripts/devnull.sh: cargo's rustc probe compiles /dev/null, so a /dev/null turned into a
regular file (holding an earlier probe's error text) failed CI's clippy with E0554 in a crate
named `___`. Lint and install check the device first and, as root, recreate it."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "devnull.sh"


def _run(path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SKEWLESS_DEVNULL": str(path)}
    return subprocess.run([str(SCRIPT)], env=env, capture_output=True, text=True, check=False)


def test_the_real_null_device_passes_silently() -> None:
    done = subprocess.run([str(SCRIPT)], capture_output=True, text=True, check=False)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_a_regular_file_in_its_place_is_named_and_replaced_by_the_device(tmp_path: Path) -> None:
    fake = tmp_path / "null"
    fake.write_text("error[E0554]: `#![feature]` may not be used on the stable release channel\n")
    done = _run(fake)
    assert "is not the null device (regular file" in done.stderr
    if os.geteuid() != 0:  # it cannot recreate the device: it stops, naming the fix
        assert done.returncode == 1
        assert f"mknod -m 666 {fake} c 1 3" in done.stderr
        assert fake.read_text().startswith("error[E0554]")
        return
    assert done.returncode == 0, done.stderr
    st = fake.stat()
    assert stat.S_ISCHR(st.st_mode)
    assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (1, 3)
    assert stat.S_IMODE(st.st_mode) == 0o666
    assert _run(fake).returncode == 0


def test_lint_and_install_check_it_before_cargo_runs() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert makefile.index("scripts/devnull.sh") < makefile.index("cargo clippy")
    install = (ROOT / "scripts" / "install.sh").read_text()
    assert install.index("scripts/devnull.sh") < install.index("pip wheel --no-deps")
