"""``bench.serve_stages`` on a real Redis: every stage of the ``Score`` path in both
regimes, and the stages are parts of the whole (the scorer's single path costs at least
its Redis read plus its predict)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import serve_stages
from features.reference import REFERENCE
from serving._proto.skewless.v1 import scorer_pb2 as pb
from serving.convert import event_transaction
from serving.testing import publish_synthetic_model
from tests.serving.conftest import NOW, ev
from tests.serving.test_redis import OFFSET, populate

pytestmark = pytest.mark.integration


def test_stage_table(redis_url: str, tmp_path: Path) -> None:
    populate(redis_url)
    publish_synthetic_model(tmp_path / "registry", seed=1, fs=REFERENCE)
    reqs = [
        pb.ScoreRequest(transaction=event_transaction(ev(f"s{i}", OFFSET + 1, OFFSET + 10,
                                                         5.0 + i, NOW - i)))
        for i in range(40)
    ]  # fmt: skip
    out = serve_stages.run(tmp_path / "registry", redis_url, reqs, n=40)
    assert out["requests"] == 40
    for regime in ("warm", "lone"):
        stages = out[regime]
        assert len(stages) == 16 and all(v > 0 for v in stages.values()), stages
        whole = stages["score_one (read + compute, log off)"]
        assert whole >= stages["predict (native, 1 row)"]
        assert "redis read, awaited on the loop" in stages
        # the direct path's own stages (session 7): one native finalize, native response
        for name in ("finalize into the row (one native call, the direct path's)",
                     "response (native encoder, the direct path's)",
                     "score_read (compute only, states given)"):  # fmt: skip
            assert name in stages, name
