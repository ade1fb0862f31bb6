"""The README's "Define your own features" file, run as a user would: loaded from a file
outside the package, then simulate -> backfill -> train -> stream -> verify through the
command line, and the served features (``GetFeatures``'s path) equal the backfill's. Its
``card_mcc_max_24h`` aggregates a field other than ``amount``: every path reads ``mcc``."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from features.feast_objects import build_feast_objects, view_name
from features.loader import DefinitionsError, load_definitions
from features.store import StoreConfig, open_store
from flows.backfill import BackfillReport, compute_features, load_events
from serving.scorer import Scorer
from skewless.cli import main
from skewless.verify import values_agree

README = Path(__file__).resolve().parents[2] / "README.md"


def _snippet() -> str:
    text = README.read_text()
    m = re.search(r"<!-- definitions-example -->\n```python\n(.*?)```", text, re.S)
    assert m, "README lost its definitions example"
    return m.group(1)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("mine")
    (d / "my_features.py").write_text(_snippet())
    base = ["--definitions", str(d / "my_features.py"), "--data-dir", str(d / "data")]
    assert main(["simulate", "--out", str(d / "ev.parquet"), "--events", "6000",
                 "--cards", "300", "--merchants", "40", "--days", "6"]) == 0  # fmt: skip
    assert main([*base, "backfill", "--events", str(d / "ev.parquet"),
                 "--out", str(d / "bf")]) == 0  # fmt: skip
    assert main([*base, "train", "--features", str(d / "bf" / "features.parquet"),
                 "--registry", str(d / "registry")]) == 0  # fmt: skip
    assert main([*base, "stream", "--replay", str(d / "ev.parquet"), "--no-tail"]) == 0
    assert main([*base, "verify", "--events", str(d / "ev.parquet")]) == 0
    return d


def test_definitions_load_from_a_file_and_refuse_what_the_schema_lacks(tmp_path: Path) -> None:
    fs = load_definitions(_write(tmp_path, _snippet()))
    assert fs.project == "my_fraud"
    assert fs.feature_names == (
        "card_txn_count_1h", "card_mcc_max_24h", "card_amount_mean_24h", "amount_vs_day",
    )  # fmt: skip
    bad = _snippet().replace('"mcc"),  # card_mcc_max_24h', '"merchant_id"),')
    with pytest.raises(DefinitionsError, match="'merchant_id' is not a field of the event schema"):
        load_definitions(_write(tmp_path, bad, "bad.py"))
    bad = _snippet().replace('("amount", "card_amount_mean_24h")', '("amount", "nope")')
    with pytest.raises(DefinitionsError, match="reads 'nope', which is neither a field"):
        load_definitions(_write(tmp_path, bad, "bad2.py"))


def _write(d: Path, text: str, name: str = "defs.py") -> Path:
    (d / name).write_text(text)
    return d / name


def test_stream_backfill_feast_and_serving_agree_on_the_mcc_aggregation(run: Path) -> None:
    fs = load_definitions(run / "my_features.py")
    objs = build_feast_objects(fs, run / "bf" / "feast")
    assert "card_mcc_max_24h" in {f.name for f in objs.view(view_name(fs.entity("card"))).schema}
    events = pq.read_table(run / "ev.parquet")
    _, accepted, _, _ = load_events(fs, events, BackfillReport())
    store = open_store(StoreConfig(workdir=run / "data" / "feast"), fs)
    scorer = Scorer(fs, store)
    ts = pc.cast(events.column("event_time"), "int64").to_numpy()
    newest = int(ts.max())
    cards = np.unique(events.column("card_id").to_numpy())[:60]
    rows = [{"card_id": int(c), "event_time": newest + 1} for c in cards]
    spine = pa.Table.from_pylist(
        rows, pa.schema([("card_id", pa.int64()), ("event_time", pa.int64())])
    )
    want = compute_features(fs, spine, accepted)
    checked = 0
    for i, c in enumerate(cards):
        f = scorer.entity_features("card", int(c), newest + 1)
        if not f.state.found:
            continue
        got = dict(zip(f.names, f.values, strict=True))
        for agg in fs.aggregations:  # count, min, max exact; means within 1e-9 (DESIGN.md)
            g, w = got[agg.name], want.column(agg.name)[i].as_py()
            ok, _ = values_agree(agg.op, g, math.nan if w is None else w, 1.0)
            assert ok, (c, agg.name, g, w)
        # the served max is an mcc the card used, never an amount
        mccs = set(events.filter(pc.equal(events.column("card_id"), c)).column("mcc").to_pylist())
        assert math.isnan(got["card_mcc_max_24h"]) or got["card_mcc_max_24h"] in mccs
        checked += not math.isnan(got["card_mcc_max_24h"])
    assert checked > 10
    assert (run / "registry").exists()
