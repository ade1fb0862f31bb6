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
    env = {  # this checkout's code first, as in the test process
        "PATH": str(Path(sys.executable).parent),
        "PYTHONPATH": str(ROOT),
        "SKEWLESS_FEAST_DATA": str(tmp_path / "bf" / "feast"),
    }
    for cmd in (["apply"], ["materialize", "2000-01-01T00:00:00", "2100-01-01T00:00:00"]):
        done = subprocess.run(
            [feast, *cmd], cwd=repo, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stdout + done.stderr
    # the materialized state is what the stream starts from, read under the user's project
    store = open_store(StoreConfig(workdir=repo), fs)
    users = sorted(set(pq.read_table(tmp_path / "bf" / "feast" / "user_features_as_of_last_event.parquet")
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
        # per entity, the view of the values as of the last event, under a name that says so
        plain = sorted(v.name for v in feast_sdk.list_batch_feature_views())
        assert plain == ["item_features_as_of_last_event", "user_features_as_of_last_event"]
        name = next(a.name for a in fs.for_entity("user") if a.op.value == "count")
        t = max(int(x) for x in pq.read_table(tmp_path / "bf" / "feast" / "user_features_as_of_last_event.parquet")
                .column("event_timestamp").cast("int64").to_pylist()) + 1  # fmt: skip
        got = feast_sdk.get_online_features(
            features=[f"user_features_at_request:{name}"],
            entity_rows=[{"user_id": u, REQUEST_TIME: t} for u in users],
        ).to_dict()[name]
    assert len(got) == len(users) and all(isinstance(v, int) for v in got)


def test_the_two_views_say_what_they_hold_and_the_plain_one_reads_the_stream(
    tmp_path: Path,
) -> None:
    """A generated repo holds, per entity, the view of the values as of the last event and
    the request-time one, under names that say so; the plain view returns the as-of-last
    values the stream wrote (finalized from its own state bytes). Applied in this process
    with what the generated ``repo.py`` registers (the ``feast`` CLI's ``apply`` on a
    generated repo: the test above), listed as ``feast feature-views list`` and ``feast
    on-demand-feature-views list`` list (batch views + on-demand views)."""
    import math
    import warnings

    import pyarrow.parquet as pq
    from bytewax.testing import run_main
    from feast import FeatureStore

    from features.feast_objects import build_feast_objects, view_name
    from features.feast_request import request_time_views
    from features.reference_codec import StateCodec
    from features.reference_engine import Engine
    from flows.stream import StreamConfig, build_flow

    sys.path.insert(0, str(ROOT / "examples" / "clickstream"))
    try:
        from generate import generate
    finally:
        sys.path.pop(0)
    fs = load_definitions(CLICKS)
    table = generate(events=1500, seed=7)
    pq.write_table(table, tmp_path / "clicks.parquet")
    repo = tmp_path / "repo"
    assert main(["--definitions", str(CLICKS), "feast-repo", "--out", str(repo)]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sdk = FeatureStore(repo_path=str(repo))  # the generated feature_store.yaml
        objects = build_feast_objects(fs, tmp_path)
        sdk.apply([*objects.all(), *request_time_views(str(CLICKS), objects)])
        batch = {v.name for v in sdk.list_batch_feature_views()}
        on_demand = {v.name for v in sdk.list_on_demand_feature_views()}
    at_request = {"user_features_at_request", "item_features_at_request"}
    assert on_demand == at_request
    assert batch == {"user_features_as_of_last_event", "item_features_as_of_last_event"}
    assert [view_name(e) for e in fs.entities] == [
        f"{e.name}_features_as_of_last_event" for e in fs.entities
    ]
    # the embedded stream writes into the repo's online store, the Feast SDK reads it back
    cfg = StreamConfig(
        store=StoreConfig(workdir=repo), replay_path=tmp_path / "clicks.parquet",
        out_dir=tmp_path / "stream", tail=False,
    )  # fmt: skip
    run_main(build_flow(fs, cfg))
    store = open_store(StoreConfig(workdir=repo), fs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sdk = FeatureStore(repo_path=str(repo))
        for entity in fs.entities:
            layout = Engine(fs).layout(entity.name)
            codec = StateCodec(layout)
            ids = sorted(set(table.column(entity.join_key).drop_null().to_pylist()))[:30]
            got = sdk.get_online_features(
                features=[f"{view_name(entity)}:{n}" for n in layout.names],
                entity_rows=[{entity.join_key: i} for i in ids],
            ).to_dict()
            states = store.read_states([(entity.name, i) for i in ids])
            assert ids and sum(s is not None for s in states) > len(ids) // 2
            for row, (i, blob) in enumerate(zip(ids, states, strict=True)):
                if blob is None:  # every click of this id was a dead letter
                    assert all(got[n][row] is None for n in layout.names), i
                    continue
                want = layout.as_of_last(codec.decode(blob, readonly=True))
                for name, w in zip(layout.names, want, strict=True):
                    nan = isinstance(w, float) and math.isnan(w)
                    assert got[name][row] == (None if nan else w), (entity.name, i, name)
