"""`skewless feast-repo` writes a Feast repo for the user's definitions: `feast apply` and
`feast materialize` work there, and Feast reads the backfill's end state (R4) under the
definitions' own project."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from features.loader import load_definitions
from features.store import StoreConfig, open_store
from flows.backfill import run_backfill
from skewless.cli import main

ROOT = Path(__file__).resolve().parents[2]
CLICKS = ROOT / "examples" / "clickstream" / "definitions.py"


def test_feast_apply_and_materialize_in_a_generated_repo(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "examples" / "clickstream"))
    try:
        from generate import generate
    finally:
        sys.path.pop(0)
    import pyarrow.parquet as pq

    fs = load_definitions(CLICKS)
    pq.write_table(generate(events=2000, seed=4), tmp_path / "clicks.parquet")
    run_backfill(fs, tmp_path / "clicks.parquet", tmp_path / "bf")
    repo = tmp_path / "repo"
    assert main(["--definitions", str(CLICKS), "feast-repo", "--out", str(repo)]) == 0
    assert "project: clickstream" in (repo / "feature_store.yaml").read_text()
    feast = str(Path(sys.executable).parent / "feast")
    env = {
        "PATH": str(Path(sys.executable).parent),
        "SKEWLESS_FEAST_DATA": str(tmp_path / "bf" / "feast"),
    }
    for cmd in (["apply"], ["materialize", "2000-01-01T00:00:00", "2100-01-01T00:00:00"]):
        done = subprocess.run(
            [feast, *cmd], cwd=repo, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stdout + done.stderr
    # the materialized state is what the stream starts from, read under the user's project
    store = open_store(StoreConfig(workdir=repo), fs)
    users = sorted(set(pq.read_table(tmp_path / "bf" / "feast" / "user_features.parquet")
                       .column("user_id").to_pylist()))[:20]  # fmt: skip
    states = store.read_states([("user", u) for u in users], bootstrap=True)
    assert users and all(s is not None for s in states)
    # a plain Feast reader gets request-time values from the on-demand views
    import warnings

    from feast import FeatureStore

    from features.feast_request import REQUEST_TIME

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        feast_sdk = FeatureStore(repo_path=str(repo))
        views = sorted(v.name for v in feast_sdk.list_on_demand_feature_views())
        assert views == ["item_features_at_request", "user_features_at_request"]
        name = next(a.name for a in fs.for_entity("user") if a.op.value == "count")
        t = max(int(x) for x in pq.read_table(tmp_path / "bf" / "feast" / "user_features.parquet")
                .column("event_timestamp").cast("int64").to_pylist()) + 1  # fmt: skip
        got = feast_sdk.get_online_features(
            features=[f"user_features_at_request:{name}"],
            entity_rows=[{"user_id": u, REQUEST_TIME: t} for u in users],
        ).to_dict()[name]
    assert len(got) == len(users) and all(isinstance(v, int) for v in got)
