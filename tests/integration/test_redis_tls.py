"""The online store over TLS with an ACL user: a real redis-server that serves TLS only
(self-signed CA and server certificate, the default user off), started by
scripts/services.sh with SKEWLESS_REDIS_TLS=1. The stream writes, the scorer and Feast read,
values are exact; wrong credentials are one clear line, and no message shows the password."""

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
from features.settings import Settings
from features.store import StoreConfig, open_feature_store, open_store
from features.store.redis import RedisSetupError
from flows.backfill import BackfillReport, load_events
from flows.simulate import SimulationConfig, simulate
from flows.stream import StreamConfig, build_flow
from serving.scorer import Scorer
from skewless.verify import check_online_states

pytestmark = pytest.mark.integration
SERVICES_SH = Path(__file__).resolve().parents[2] / "scripts" / "services.sh"


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    d = tmp_path_factory.mktemp("redis-tls")
    env = {**os.environ, "SKEWLESS_REDIS_TLS": "1"}
    done = subprocess.run([str(SERVICES_SH), "redis-start", str(d)], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    try:
        yield (d / "redis.url").read_text().strip(), d
    finally:
        subprocess.run([str(SERVICES_SH), "redis-stop", str(d)], capture_output=True, timeout=60)


def test_stream_writes_and_scorer_and_feast_read_over_tls(
    tls_redis: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, d = tls_redis
    assert url.startswith("rediss://skewless:")
    table = simulate(SimulationConfig(events=3000, cards=120, merchants=15, days=3.0, seed=9))
    pq.write_table(table, tmp_path / "ev.parquet")
    cfg = StreamConfig(store=StoreConfig(redis_url=url), replay_path=tmp_path / "ev.parquet",
                       out_dir=tmp_path / "stream", tail=False)  # fmt: skip
    run_main(build_flow(REFERENCE, cfg))
    store = open_store(StoreConfig(redis_url=url), REFERENCE)
    _, accepted, _, _ = load_events(REFERENCE, table, BackfillReport())
    report = check_online_states(REFERENCE, store, accepted, sample_per_entity=200)
    assert report.missing_states == {"card": 0, "merchant": 0}
    assert report.compared > 1000 and report.mismatches == 0, report.to_json()
    card = int(table.column("card_id")[0].as_py())
    newest = int(table.column("event_time").cast("int64").to_numpy().max())
    f = Scorer(REFERENCE, store).entity_features("card", card, newest + 1)
    assert f.state.found
    # Feast's own redis client over the same TLS (Feast passes no CA file: SSL_CERT_FILE)
    monkeypatch.setenv("SSL_CERT_FILE", str(d / "ca.crt"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        feast = open_feature_store(
            StoreConfig(redis_url=url, workdir=tmp_path / "feast"), REFERENCE
        )
        got = feast.get_online_features(
            features=["card_features_as_of_last_event:card_txn_count_24h"],
            entity_rows=[{"card_id": card}],
        ).to_dict()["card_txn_count_24h"]
    assert got[0] is not None and got[0] >= 1


def test_wrong_credentials_are_one_clear_line_without_the_password(
    tls_redis: tuple[str, Path],
) -> None:
    url, _ = tls_redis
    password = url.split(":")[2].split("@")[0]
    bad = url.replace(f":{password}@", ":not-it@")
    with pytest.raises(RedisSetupError, match=r"refused the connection setup .*WRONGPASS") as info:
        open_store(StoreConfig(redis_url=bad), REFERENCE).read_states([("card", 1)])
    assert "not-it" not in str(info.value) and password not in str(info.value)
    assert password not in repr(Settings.from_env({"SKEWLESS_REDIS_URL": url}))
    # a plain-text client on the TLS port is an outage with a message, not a hang
    plain = "redis://" + url.split("@", 1)[1].split("?")[0]
    with pytest.raises((ConnectionError, OSError)):
        open_store(StoreConfig(redis_url=plain, timeout_s=1.0), REFERENCE).read_states(
            [("card", 1)]
        )
