"""`feast apply` works in feature_repo/ and registers exactly what features/ defines; a
relative ``SKEWLESS_FEAST_DATA`` is taken from the folder feast runs in, and `feast
materialize` there fills the online store the SDK reads."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from feast import FeatureStore
from feast.types import Bytes, Float64, Int64

from features.definitions import Op
from features.feast_objects import bootstrap_field, state_field, view_name
from features.reference import REFERENCE
from flows.backfill import run_backfill
from flows.simulate import SimulationConfig, simulate, write_events
from tests.feature_repo.online import MATERIALIZE, assert_every_card_online

ROOT = Path(__file__).resolve().parents[2]


def test_feast_apply_registers_the_generated_objects_from_a_relative_folder(
    tmp_path: Path,
) -> None:
    """Applied before the backfill wrote its tables (said at apply, before materialize
    needs them), materialized after: both take the folder from where feast runs, and the
    registry holds exactly the objects features/ defines. (No note once the tables are
    there: ``test_apply_and_materialize_into_redis_from_a_url``.) One test, not two: each
    ``feast`` process pays Feast's import (~6-9 CPU-s)."""
    cfg = SimulationConfig(events=2_000, cards=40, merchants=8, days=2.0, seed=3)
    shutil.copytree(ROOT / "feature_repo", tmp_path / "repo")
    feast = str(Path(sys.executable).parent / "feast")
    yaml = "repo/embedded/feature_store.yaml"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKEWLESS_")}
    # this checkout's code first, as in the test process
    env.update(PYTHONPATH=str(ROOT), PWD=str(tmp_path), SKEWLESS_FEAST_DATA="bf/feast")
    done = subprocess.run(
        [feast, "-c", "repo", "-f", yaml, "apply"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    data = tmp_path.resolve() / "bf" / "feast"
    assert (
        f"feature_repo: note: {data} has no card_features_as_of_last_event.parquet, "
        "merchant_features_as_of_last_event.parquet (yet)"
    ) in done.stderr
    store = FeatureStore(repo_path=str(tmp_path / "repo"), fs_yaml_file=tmp_path / yaml)
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
        assert view.batch_source.path == str(data / f"{view.name}.parquet")

    write_events(simulate(cfg), tmp_path / "ev.parquet")
    run_backfill(REFERENCE, tmp_path / "ev.parquet", tmp_path / "bf")
    done = subprocess.run(
        [feast, "-c", "repo", "-f", yaml, *MATERIALIZE],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "note:" not in done.stderr
    store = FeatureStore(repo_path=str(tmp_path / "repo"), fs_yaml_file=tmp_path / yaml)
    assert_every_card_online(store, cfg)
