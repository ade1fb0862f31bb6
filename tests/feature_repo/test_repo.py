"""`feast apply` works in feature_repo/ and registers exactly what features/ defines."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from feast import FeatureStore
from feast.types import Bytes, Float64, Int64

from features.definitions import Op
from features.feast_objects import bootstrap_field, state_field, view_name
from features.reference import REFERENCE

ROOT = Path(__file__).resolve().parents[2]


def test_feast_apply_registers_the_generated_objects(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "feature_repo", repo)
    feast = str(Path(sys.executable).parent / "feast")
    yaml = str(repo / "embedded" / "feature_store.yaml")
    env = {  # this checkout's code first, as in the test process
        "PATH": str(Path(sys.executable).parent),
        "PYTHONPATH": str(ROOT),
        "SKEWLESS_FEAST_DATA": str(tmp_path / "data"),
    }
    done = subprocess.run(
        [feast, "-f", yaml, "apply"], cwd=repo, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    store = FeatureStore(repo_path=str(repo), fs_yaml_file=Path(yaml))
    assert sorted(e.name for e in store.list_entities()) == ["card", "merchant"]
    assert {e.name: e.join_key for e in store.list_entities()} == {
        "card": "card_id",
        "merchant": "merchant_id",
    }
    views = {v.name: v for v in store.list_feature_views()}
    assert sorted(views) == [
        "card_features_as_of_last_event",
        "merchant_features_as_of_last_event",
    ]
    for entity in REFERENCE.entities:
        view = views[view_name(entity)]
        want = {
            a.name: Int64 if a.op is Op.COUNT else Float64 for a in REFERENCE.for_entity(entity)
        }
        want[state_field(entity)] = Bytes
        want[bootstrap_field(entity)] = Bytes
        assert {f.name: f.dtype for f in view.features} == want
        assert view.entities == [entity.name]
        assert view.tags["fingerprint"] == REFERENCE.fingerprint()
        assert view.batch_source.path == str((tmp_path / "data" / f"{view.name}.parquet").resolve())
