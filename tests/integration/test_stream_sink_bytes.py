"""The stream's rows in Redis are the same bytes whether the sink encodes a batch in one
native call (``HsetRows``) or row by row (``HsetEncoder.command``, a core built before it),
and Feast reads them."""

from __future__ import annotations

import warnings
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import redis
from bytewax.testing import run_main

from features.reference import REFERENCE
from features.store import StoreConfig, open_feature_store
from features.store.redis import RedisStore
from flows import stream_io
from flows.simulate import SimulationConfig, simulate
from flows.stream import StreamConfig, build_flow

pytestmark = pytest.mark.integration


def _contents(url: str) -> dict[bytes, dict[bytes, bytes]]:
    r = redis.Redis.from_url(url)
    try:
        keys = [k for k in r.scan_iter() if not k.startswith(b"skewless:stream:")]
        return {k: r.hgetall(k) for k in keys}
    finally:
        r.close()


def test_batch_encoding_writes_the_row_encoders_bytes(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = simulate(SimulationConfig(events=3000, cards=120, merchants=15, days=3.0, seed=4))
    pq.write_table(table, tmp_path / "ev.parquet")
    base = redis_url.rsplit("/", 1)[0]
    urls = {"batch": f"{base}/5", "per_row": f"{base}/6"}
    for url in urls.values():
        redis.Redis.from_url(url).flushdb()
    # a store is opened once per process and config (``stream_io.store_for``): an earlier
    # test on the same Redis database would hand back its store, built without this test's
    # encoder choice
    monkeypatch.setattr(stream_io, "_stores", {})
    init = RedisStore.__init__
    encodings: dict[str, object] = {}
    for name, url in urls.items():

        def made(self: RedisStore, *args: object, _name: str = name, **kw: object) -> None:
            init(self, *args, **kw)  # type: ignore[arg-type]
            if _name == "per_row":
                self._hset_rows = None
            encodings[_name] = self._hset_rows

        monkeypatch.setattr(RedisStore, "__init__", made)
        cfg = StreamConfig(store=StoreConfig(redis_url=url), replay_path=tmp_path / "ev.parquet",
                           out_dir=tmp_path / name, tail=False)  # fmt: skip
        run_main(build_flow(REFERENCE, cfg))
    monkeypatch.setattr(RedisStore, "__init__", init)
    assert encodings["batch"] is not None and encodings["per_row"] is None
    batch, per_row = _contents(urls["batch"]), _contents(urls["per_row"])
    assert len(batch) > 100  # ~every card and merchant of the table
    assert batch == per_row
    cards = sorted({int(c) for c in table.column("card_id").to_pylist()})[:20]
    with warnings.catch_warnings():  # the bytes are equal: Feast reads the batch-encoded ones
        warnings.simplefilter("ignore")
        feast = open_feature_store(
            StoreConfig(redis_url=urls["batch"], workdir=tmp_path / "feast"), REFERENCE
        )
        got = feast.get_online_features(
            features=["card_features_as_of_last_event:card_txn_count_24h"],
            entity_rows=[{"card_id": c} for c in cards],
        ).to_dict()
    assert got["card_id"] == cards
    assert all(n is not None and n >= 1 for n in got["card_txn_count_24h"])
