"""scripts/services.sh formats Kafka's storage with an id that never begins with "-" (the
storage tool read such an id as an option, and `make test` failed 1 time in 64)."""

from __future__ import annotations

import importlib.util
import subprocess
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("cluster_id", ROOT / "scripts" / "cluster_id.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_an_id_beginning_with_a_dash_is_drawn_again() -> None:
    # 0xF8 as the first byte makes the base64 text begin with "-"
    dash = uuid.UUID(bytes=b"\xf8" + bytes(15))
    assert _module().base64.urlsafe_b64encode(dash.bytes).decode().startswith("-")
    draws = iter([dash, dash, uuid.UUID(bytes=b"\x01" * 16)])
    assert _module().cluster_id(lambda: next(draws)) == "AQEBAQEBAQEBAQEBAQEBAQ"


def test_services_sh_uses_it_and_it_prints_a_valid_id() -> None:
    assert 'python3 "$SCRIPT_DIR/cluster_id.py"' in (ROOT / "scripts" / "services.sh").read_text()
    ids = {_module().cluster_id() for _ in range(2000)}
    assert len(ids) == 2000 and not any(i.startswith("-") or len(i) != 22 for i in ids)
    out = subprocess.run(
        ["python3", str(ROOT / "scripts" / "cluster_id.py")], capture_output=True, text=True
    )
    assert out.returncode == 0 and len(out.stdout.strip()) == 22
