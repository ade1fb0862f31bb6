"""The naive scoring servicer the benchmark measures ours against, in the same run.

What a first version typically looks like: the same API and the same ``grpc.aio`` server,
but features come from the Feast SDK's ``FeatureStore.get_online_features`` (the window
columns *as of each entity's last event*, so also subtly wrong: R2 is not met) and the
model is the XGBoost Booster called through a fresh ``DMatrix`` per request. Only the
feature/model path differs, so the ratio measures exactly that path.

Run as a process: ``python -m bench.serve_naive CONFIG_JSON`` prints ``listening on port N``.
"""

from __future__ import annotations

import asyncio
import json
import math
import signal
import sys
from pathlib import Path
from typing import Any

import numpy as np
from grpc import aio

from features.plan import compile_plan
from features.reference import REFERENCE
from serving._proto.skewless.v1 import scorer_pb2 as pb
from serving._proto.skewless.v1 import scorer_pb2_grpc as pb_grpc
from serving.convert import EventConverter
from serving.interceptors import interceptors

PLAN = compile_plan(REFERENCE)
CONVERT = EventConverter(PLAN)


class NaiveScorer:
    def __init__(self, redis_url: str, feast_dir: Path, version_dir: Path) -> None:
        import xgboost as xgb

        from features.feast_objects import view_name
        from features.store import StoreConfig, open_feature_store
        from flows.registry import read_metadata

        self.xgb = xgb
        self.store = open_feature_store(StoreConfig(redis_url, feast_dir), REFERENCE)
        self.refs = [
            f"{view_name(e)}:{a.name}" for e in REFERENCE.entities for a in REFERENCE.for_entity(e)
        ]
        meta = read_metadata(version_dir)
        self.names = list(meta["feature_names"])
        self.version, self.threshold = meta["version"], float(meta["threshold"])
        self.booster = xgb.Booster(model_file=str(version_dir / "model.json"))
        self.booster.set_param({"nthread": 1})

    def score(self, events: list[Any]) -> list[pb.ScoreResponse]:
        plan = PLAN
        rows = [{p.join_key: p.key(e) for p in plan.entities} for e in events]
        online = self.store.get_online_features(features=self.refs, entity_rows=rows).to_dict()
        X = np.empty((len(events), len(self.names)))
        for i, e in enumerate(events):
            window = [
                [math.nan if online[n][i] is None else online[n][i] for n in p.names]
                for p in plan.entities
            ]
            values = {n: v for p, w in zip(plan.entities, window, strict=True)
                      for n, v in zip(p.names, w, strict=True)}  # fmt: skip
            req = plan.request_one(e, window)
            values.update(zip(REFERENCE.request_features, req, strict=True))
            X[i] = [values[n] for n in self.names]
        p = self.booster.predict(self.xgb.DMatrix(X, feature_names=self.names))
        return [
            pb.ScoreResponse(
                transaction_id=PLAN.event_id(e),
                score=float(s),
                decision=bool(s >= self.threshold),
                threshold=self.threshold,
                model_version=self.version,
            )
            for e, s in zip(events, p, strict=True)
        ]


class NaiveServicer(pb_grpc.ScorerServicer):
    def __init__(self, scorer: NaiveScorer) -> None:
        self.scorer = scorer

    async def Score(self, request: pb.ScoreRequest, context: Any) -> pb.ScoreResponse:
        return self.scorer.score([CONVERT.request_event(request)])[0]

    async def ScoreBatch(
        self, request: pb.ScoreBatchRequest, context: Any
    ) -> pb.ScoreBatchResponse:
        events = CONVERT.batch_events(request, 10_000)
        return pb.ScoreBatchResponse(responses=self.scorer.score(events))


async def _main(config: dict[str, Any]) -> None:
    scorer = NaiveScorer(
        config["redis_url"], Path(config["feast_dir"]), Path(config["version_dir"])
    )
    server = aio.server(
        interceptors=interceptors("", None),
        options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)],
    )
    pb_grpc.add_ScorerServicer_to_server(NaiveServicer(scorer), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"listening on port {port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1.0)


if __name__ == "__main__":
    asyncio.run(_main(json.loads(sys.argv[1])))
