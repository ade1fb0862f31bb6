"""Redis Cluster over TLS with an ACL user: 3 masters + 3 replicas serving TLS only (the
cluster bus and replication too; self-signed CA, the default user off), started by
scripts/services.sh with SKEWLESS_REDIS_TLS=1. The stream writes, `verify` and Feast's own
cluster client read, values are exact; a wrong password is one line without the password."""

from __future__ import annotations

import os
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from bytewax.testing import run_main

from features.reference import REFERENCE
from features.reference_codec import StateCodec
from features.reference_engine import Engine
from features.store import StoreConfig, open_feature_store, open_store
from features.store.redis import RedisSetupError
from flows.backfill import BackfillReport, load_events
from flows.simulate import SimulationConfig, simulate
from flows.stream import StreamConfig, build_flow
from skewless.verify import check_online_states

pytestmark = pytest.mark.integration
SERVICES_SH = Path(__file__).resolve().parents[2] / "scripts" / "services.sh"


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    d = tmp_path_factory.mktemp("redis-cluster-tls")
    env = {**os.environ, "SKEWLESS_REDIS_TLS": "1"}
    done = subprocess.run([str(SERVICES_SH), "redis-cluster-start", str(d)], env=env,
                          capture_output=True, text=True, timeout=180)  # fmt: skip
    try:
        assert done.returncode == 0, done.stderr
        yield (d / "redis.url").read_text().strip(), d
    finally:
        subprocess.run([str(SERVICES_SH), "redis-cluster-stop", str(d)], capture_output=True,
                       timeout=120)  # fmt: skip


def test_stream_writes_and_verify_and_feast_read_a_tls_cluster(
    tls_cluster: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, d = tls_cluster
    assert url.startswith("rediss+cluster://skewless:")
    table = simulate(SimulationConfig(events=3000, cards=150, merchants=15, days=3.0, seed=19))
    pq.write_table(table, tmp_path / "ev.parquet")
    cfg = StreamConfig(store=StoreConfig(redis_url=url), replay_path=tmp_path / "ev.parquet",
                       out_dir=tmp_path / "stream", tail=False)  # fmt: skip
    run_main(build_flow(REFERENCE, cfg))
    store = open_store(StoreConfig(redis_url=url), REFERENCE)
    _, accepted, _, _ = load_events(REFERENCE, table, BackfillReport())
    report = check_online_states(REFERENCE, store, accepted, sample_per_entity=1000)
    assert report.missing_states == {"card": 0, "merchant": 0}
    assert report.compared > 1000 and report.mismatches == 0, report.to_json()
    # Feast's own cluster client (redis-py RedisCluster) over the same TLS and ACL user
    monkeypatch.setenv("SSL_CERT_FILE", str(d / "ca.crt"))
    cards = sorted(set(table.column("card_id").to_pylist()))[:30]
    layout = Engine(REFERENCE).layout("card")
    codec = StateCodec(layout)
    name = "card_txn_count_24h"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        feast = open_feature_store(StoreConfig(redis_url=url, workdir=tmp_path / "feast"),
                                   REFERENCE)  # fmt: skip
        got = feast.get_online_features(
            features=[f"card_features_as_of_last_event:{name}"],
            entity_rows=[{"card_id": c} for c in cards],
        ).to_dict()[name]
    want = [
        layout.as_of_last(codec.decode(b, readonly=True))[layout.names.index(name)]
        for b in store.read_states([("card", c) for c in cards])
    ]
    assert got == want and all(v >= 1 for v in got)


def test_a_wrong_password_is_one_line_without_it(tls_cluster: tuple[str, Path]) -> None:
    url, _ = tls_cluster
    password = url.split("@")[0].rsplit(":", 1)[1]
    bad = url.replace(f":{password}@", ":not-it@")
    with pytest.raises(RedisSetupError, match="refused the connection setup") as info:
        open_store(StoreConfig(redis_url=bad), REFERENCE).read_states([("card", 1)])
    assert "WRONGPASS" in str(info.value) and "\n" not in str(info.value)
    assert "not-it" not in str(info.value) and password not in str(info.value)
