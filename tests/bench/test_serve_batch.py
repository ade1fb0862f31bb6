"""The ScoreBatch bench's parts run end to end on a real Redis (their numbers belong to the
bench run; here: the floor answers one response per event, the stage table times every
stage of the production path, the predictor figure checks its bits)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bench.serve_batch import FloorScoreBatch, predictor_rows_per_s, stage_table
from features.reference import REFERENCE
from features.store import StoreConfig, open_store
from flows.registry import resolve
from serving._proto.skewless.v1 import scorer_pb2 as pb
from serving.convert import event_transaction
from serving.score_batch import STAGES
from serving.testing import fold_states, publish_synthetic_model, write_states
from tests.integration.stream_support import fresh_db_url
from tests.serving.conftest import HISTORY, NOW


def test_floor_answers_one_fixed_response_per_event() -> None:
    txs = [event_transaction(e._replace(event_time=NOW)) for e in HISTORY[:3]]
    floor = FloorScoreBatch()
    data = pb.ScoreBatchRequest(transactions=txs).SerializeToString()
    out = pb.ScoreBatchResponse.FromString(asyncio.run(floor.score_batch_bytes(data, None)))
    assert len(out.responses) == 3 and out.responses[0].transaction_id == "floor-0000"


def test_stage_table_times_every_stage(redis_url: str, tmp_path: Path) -> None:
    url = fresh_db_url(redis_url, 13)
    store = open_store(StoreConfig(url, tmp_path / "feast"), REFERENCE)
    write_states(store, fold_states(HISTORY, REFERENCE), REFERENCE)
    store.close()
    registry = tmp_path / "registry"
    version = publish_synthetic_model(registry, fs=REFERENCE)
    events = [e._replace(transaction_id=f"q{i}", event_time=NOW + i) for i, e in enumerate(HISTORY)]
    raw = [
        pb.ScoreBatchRequest(
            transactions=[event_transaction(e) for e in events]
        ).SerializeToString()
    ]
    out = stage_table(
        url, tmp_path / "feast", resolve(registry, version), raw, tmp_path / "log", calls=3
    )
    stages = ("request_read", *STAGES, "response_encode")
    assert tuple(out["us_per_event"]) == tuple(out["cpu_us_per_event"]) == stages
    assert out["batch_size"] == len(events) and out["calls"] == 3
    assert all(v >= 0 for v in out["us_per_event"].values())
    assert out["us_per_event"]["predict"] > 0
    figure = predictor_rows_per_s(resolve(registry, version), 50, calls=3)
    assert figure["one_row_equals_batch"] is True and figure["rows"] == 50
    assert figure["predictor"] == "native" and figure["bits_equal_to_xgboost"] is True


def test_the_other_checkout_is_the_one_run(tmp_path: Path) -> None:
    """``--before TREE`` runs TREE's code, though the servers start in this repo (``python
    -c`` would put the working directory first on ``sys.path``)."""
    import subprocess

    from bench.serve_procs import REPO, other_checkout

    (tmp_path / "serving").mkdir()
    (tmp_path / "serving" / "__init__.py").write_text("WHERE = 'other'\n")
    code = "import serving; print(getattr(serving, 'WHERE', 'this'))"
    argv = [*other_checkout(tmp_path), "-c", code]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "other"
    plain = [a for a in argv if a != "-P"]  # what the benches ran before
    done = subprocess.run(plain, cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "this"
