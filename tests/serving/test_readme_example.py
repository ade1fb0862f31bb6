"""The README's Python client example runs against a real server."""

from __future__ import annotations

import re
from pathlib import Path

from tests.serving.conftest import NOW, RunningServer

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_client_example_scores(server: RunningServer) -> None:
    text = README.read_text()
    block = re.search(r"<!-- client-example -->\n```python\n(.*?)```", text, re.S)
    assert block is not None, "the README lost its client example"
    scope = {"ADDRESS": server.address, "EVENT_TIME_MS": NOW}
    exec(compile(block.group(1), "README.md", "exec"), scope)
    assert scope["resp"].transaction_id == "t-42"
    assert scope["resp"].model_version == "v0001"
    assert scope["features"]["card_txn_count_1h"] == 8.0  # card 1's history in the fixture
