"""The skew check: online state vs the backfill over the same events, per feature.

For every sampled entity it reads the state bytes from the online store, finalizes them
at query times the state can answer exactly (its newest event minus the exact horizon,
up to just after the newest event) and compares with the vectorized backfill at the same
``(entity, t)``. Counts, min and max must be equal; sums, means and std within a relative
1e-9. Anything else is a mismatch, reported per feature.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from features.backfill import window_features
from features.definitions import FeatureSet, Op
from features.native import NativeLayout
from features.plan import compile_plan
from features.store import OnlineStore
from flows.backfill import AcceptedEvents

REL_TOL = 1e-9
EXACT_OPS = (Op.COUNT, Op.MIN, Op.MAX)


@dataclass
class FeatureSkew:
    compared: int = 0
    mismatches: int = 0
    max_rel_error: float = 0.0
    examples: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class SkewReport:
    entities: dict[str, int] = field(default_factory=dict)
    missing_states: dict[str, int] = field(default_factory=dict)
    features: dict[str, FeatureSkew] = field(default_factory=dict)

    @property
    def mismatches(self) -> int:
        return sum(f.mismatches for f in self.features.values()) + sum(self.missing_states.values())

    @property
    def compared(self) -> int:
        return sum(f.compared for f in self.features.values())

    def to_json(self) -> str:
        body = asdict(self)
        body["mismatches"], body["compared"] = self.mismatches, self.compared
        return json.dumps(body, indent=2, sort_keys=True)


def values_agree(op: Op, got: float, want: float, scale: float) -> tuple[bool, float]:
    """(agree, relative error) under the contract's tolerances."""
    g_nan = isinstance(got, float) and math.isnan(got)
    w_nan = isinstance(want, float) and math.isnan(want)
    if g_nan or w_nan:
        return g_nan and w_nan, 0.0 if g_nan and w_nan else math.inf
    if op in EXACT_OPS:
        return got == want, 0.0 if got == want else math.inf
    err = abs(got - want) / max(abs(want), 1e-300)
    tol = 1e-9 * scale if op is Op.STD else 0.0
    return math.isclose(got, want, rel_tol=REL_TOL, abs_tol=tol), err


def check_online_states(
    fs: FeatureSet,
    store: OnlineStore,
    events: AcceptedEvents,
    sample_per_entity: int = 200,
    times_per_entity: int = 4,
    seed: int = 0,
) -> SkewReport:
    """Compare every feature of a sample of entities at several exact query times."""
    rng = np.random.default_rng(seed)
    report = SkewReport()
    scale = _scale(events)
    for entity in compile_plan(fs).entities:
        layout = entity.layout
        core = NativeLayout(layout)
        mine = events.by_entity[entity.name]
        ids = np.unique(mine.keys)
        if len(ids) > sample_per_entity:
            ids = np.sort(rng.choice(ids, sample_per_entity, replace=False))
        raw = store.read_states([(entity.name, int(i)) for i in ids])
        q_keys, q_t, finals = [], [], []
        missing = 0
        for entity_id, blob in zip(ids, raw, strict=True):
            if blob is None:
                missing += 1
                continue
            state = core.decode(blob, readonly=True)
            assert state.max_seen is not None
            lo, hi = state.max_seen - layout.horizon_ms, state.max_seen + 1
            times = [hi, *rng.integers(lo, hi + 1, size=times_per_entity - 1).tolist()]
            for t in times:
                q_keys.append(int(entity_id))
                q_t.append(int(t))
                finals.append(core.finalize(state, int(t)))
        report.entities[entity.name] = len(ids)
        report.missing_states[entity.name] = missing
        if not q_keys:
            continue
        bf = window_features(
            fs, entity.name, mine.keys, mine.ts, mine.fields,
            np.array(q_keys, dtype=np.int64), np.array(q_t, dtype=np.int64),
        )  # fmt: skip
        for pos, agg in enumerate(fs.for_entity(entity.name)):
            skew = report.features.setdefault(agg.name, FeatureSkew())
            col = bf[agg.name]
            for i, vals in enumerate(finals):
                want = int(col[i]) if agg.op is Op.COUNT else float(col[i])
                ok, err = values_agree(agg.op, vals[pos], want, scale)
                skew.compared += 1
                if not ok:
                    skew.mismatches += 1
                    if len(skew.examples) < 5:
                        skew.examples.append(
                            {"id": q_keys[i], "t": q_t[i], "online": vals[pos], "backfill": want}
                        )
                if math.isfinite(err):
                    skew.max_rel_error = max(skew.max_rel_error, err)
    return report


def _scale(events: AcceptedEvents) -> float:
    """The largest aggregated value: the absolute tolerance of std is relative to it."""
    tops = [
        float(np.abs(v).max())
        for e in events.by_entity.values()
        for v in e.fields.values()
        if len(v)
    ]
    return max(tops, default=1.0)


@dataclass
class PredictionSkew:
    rows: int = 0
    features: dict[str, FeatureSkew] = field(default_factory=dict)
    #: impact of the skew: |model(served vector) - model(backfill vector)|, same model version
    max_score_delta: float = 0.0
    #: |logged score - model(served vector)|: the log is consistent with what was served
    max_logged_score_error: float = 0.0
    rows_with_mismatch: int = 0

    @property
    def mismatches(self) -> int:
        return sum(f.mismatches for f in self.features.values())


def check_predictions(
    fs: FeatureSet, log: Any, events: AcceptedEvents, registry_dir: Any | None = None
) -> PredictionSkew:
    """Every logged prediction's features vs the backfill at the same event time, and
    what the difference does to the score (rescored with the logged model version)."""
    from flows.backfill import compute_features

    out = PredictionSkew(rows=log.num_rows)
    if not log.num_rows:
        return out
    spine = log.select([n for n in fs.schema.names if n in log.column_names])
    want = compute_features(fs, spine, events)
    ops = {a.name: a.op for a in fs.aggregations}
    scale = _scale(events)
    event_id = fs.schema.event_id
    bad_rows = np.zeros(log.num_rows, dtype=bool)
    X = np.empty((log.num_rows, len(fs.feature_names)))  # the backfill's vectors
    S = np.empty_like(X)  # the served ones
    for j, name in enumerate(fs.feature_names):
        got = log.column(f"f_{name}").to_numpy(zero_copy_only=False).astype(np.float64)
        exp = pc_fill(want.column(name))
        X[:, j], S[:, j] = exp, got
        skew = out.features.setdefault(name, FeatureSkew())
        for i in range(log.num_rows):
            ok, err = values_agree(ops.get(name, Op.SUM), float(got[i]), float(exp[i]), scale)
            skew.compared += 1
            if not ok:
                skew.mismatches += 1
                bad_rows[i] = True
                if len(skew.examples) < 5:
                    tx = log.column(event_id)[i].as_py()
                    skew.examples.append(
                        {event_id: tx, "served": float(got[i]), "backfill": float(exp[i])}
                    )
            if math.isfinite(err):
                skew.max_rel_error = max(skew.max_rel_error, err)
    out.rows_with_mismatch = int(bad_rows.sum())
    if registry_dir is not None:
        from flows.registry import resolve
        from serving.model import load_model

        scores = log.column("score").to_numpy()
        versions = log.column("model_version").to_pylist()
        for version in set(versions):
            model = load_model(resolve(registry_dir, version), fs.fingerprint())
            rows = np.array([v == version for v in versions])
            cols = [fs.feature_names.index(n) for n in model.feature_names]
            served = model.predict(S[rows][:, cols])
            delta = np.abs(served - model.predict(X[rows][:, cols]))
            out.max_score_delta = max(out.max_score_delta, float(delta.max()))
            logged = float(np.abs(served - scores[rows]).max())
            out.max_logged_score_error = max(out.max_logged_score_error, logged)
    return out


def pc_fill(col: Any) -> np.ndarray:
    """A feature column as float64 with nulls as NaN."""
    return np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)


def run_verify(args: Any, settings: Any) -> int:
    """``skewless verify``: print the skew report as JSON; exit 1 on any mismatch. An
    empty input, an empty or missing store and an explicitly named prediction log that is
    missing or empty are refused (exit 2, one line); a default one is reported and skipped."""
    import json as _json

    from features.loader import load_definitions
    from flows.backfill import BackfillReport, load_events
    from flows.inputs import read_parquet

    fs = load_definitions(settings.definitions)
    if args.registry is not None and not args.registry.is_dir():
        raise ValueError(f"--registry: no such folder: {args.registry}")
    if args.events is not None:
        source, table = str(args.events), read_parquet(args.events, "--events")
    else:
        topic = args.topic or settings.topic
        source = f"topic {topic}"
        if settings.kafka_bootstrap:  # a dead broker or a missing topic: one line, not a hang
            from flows.stream_run import preflight

            preflight(settings, topic=topic)
        table = read_topic(fs, settings.kafka_bootstrap, topic, args.to_offset)
    _, events, _, _ = load_events(fs, table, BackfillReport())
    if not any(len(e.keys) for e in events.by_entity.values()):
        raise ValueError(f"{source}: no valid events ({table.num_rows} rows): nothing to verify")
    store, where = _open_existing_store(settings, fs)
    state = check_online_states(fs, store, events, sample_per_entity=args.sample)
    if state.entities and state.missing_states == state.entities:
        raise ValueError(
            f"online store {where} holds no state for any of the {sum(state.entities.values())} "
            f"entities sampled from {source}: it is empty, or not the store the stream wrote "
            "(fill it with `skewless stream`, or `feast materialize` after a backfill; "
            "or point --data-dir / SKEWLESS_REDIS_URL at the one it wrote)"
        )
    body: dict[str, Any] = {"online_state": _json.loads(state.to_json())}
    total = state.mismatches
    log, note = _prediction_log(args, settings)
    if log is None:
        print(f"skewless verify: {note}; predictions not checked", file=sys.stderr)
        body["predictions"] = {"skipped": note}
    else:
        registry = args.registry or settings.registry_dir
        if not registry.is_dir():
            print(
                f"skewless verify: no model registry at {registry}: the predictions' score "
                "impact (max_score_delta, max_logged_score_error) is not computed; pass --registry",
                file=sys.stderr,
            )
        preds = check_predictions(fs, log, events, registry if registry.is_dir() else None)
        body["predictions"] = {**asdict(preds), "mismatches": preds.mismatches}
        total += preds.mismatches
        if registry.exists():  # predict == Score, bit for bit
            from skewless.verify_predict import check_predict

            same = check_predict(fs, log, events, registry)
            body["predict_equals_score"], total = same.to_dict(), total + same.mismatches
    body["mismatches"] = total
    print(_json.dumps(body, indent=2, sort_keys=True))
    return 1 if total else 0


def _open_existing_store(settings: Any, fs: FeatureSet) -> tuple[OnlineStore, str]:
    """The store the stream wrote, never a new one: opening Feast's SQLite store creates
    it, and an empty store would report every sampled entity as a mismatch."""
    from features.settings import masked_url
    from features.store import StoreConfig, open_store

    cfg = StoreConfig(settings.redis_url, settings.data_dir / "feast")
    if cfg.backend == "redis":
        return open_store(cfg, fs), masked_url(settings.redis_url)
    db = cfg.workdir / "online.db"
    if not db.is_file():
        raise ValueError(
            f"no online store at {db} (the embedded SQLite store under --data-dir "
            f"{settings.data_dir}): run `skewless stream --replay EVENTS --no-tail` (or "
            "`skewless demo`) first, or set --data-dir / SKEWLESS_REDIS_URL to the store "
            "the stream wrote"
        )
    return open_store(cfg, fs), str(db)


def _prediction_log(args: Any, settings: Any) -> tuple[Any, str]:
    """(the flushed prediction log as one table, "") or (None, why there is none). A log
    named by ``--predictions`` that is missing or empty is an error."""
    import pyarrow as pa

    from flows.inputs import read_parquet

    pred_dir = args.predictions or settings.data_dir / "predictions"
    files = sorted(pred_dir.glob("predictions-*.parquet")) if pred_dir.is_dir() else []
    tables = [read_parquet(f, "--predictions") for f in files]
    rows = sum(t.num_rows for t in tables)
    if rows:
        return pa.concat_tables(tables), ""
    if not pred_dir.is_dir():
        why = f"no prediction log at {pred_dir}"
        if settings.kafka_bootstrap:
            why += f" (with SKEWLESS_KAFKA_BOOTSTRAP set, the server logs to {settings.topic}"
            why += ".predictions, which verify does not read)"
    else:
        why = (
            f"the prediction log {pred_dir} is empty ({len(files)} files, 0 rows): nothing "
            "flushed yet (a running `skewless serve` writes it every 60 s and when it stops)"
        )
    if args.predictions is not None:
        raise ValueError(f"--predictions: {why}")
    return None, why


def read_topic(fs: FeatureSet, bootstrap: str, topic: str, to_offset: int | None = None) -> Any:
    """A topic's valid events as an events table, partition by partition in offset order
    (each card's order, which is what dedup and too-late routing depend on). Invalid
    messages are skipped, as the flow sends them to the DLQ. ``to_offset`` (exclusive)
    bounds every partition; default: up to the end at the time of the call."""
    import pyarrow as pa
    from confluent_kafka import Consumer, TopicPartition

    from features.schema import FieldType, InvalidEventError

    parse = compile_plan(fs).validator.parse
    if not bootstrap:
        raise ValueError("--topic: set SKEWLESS_KAFKA_BOOTSTRAP (the broker to read from)")
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"skewless-verify-{topic}",
                         "enable.auto.commit": False, "enable.partition.eof": True})  # fmt: skip
    meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
    if meta is None or meta.error is not None:
        raise ValueError(f"--topic: {topic} is not on {bootstrap}")
    rows: list[dict[str, Any]] = []
    for part in sorted(meta.partitions):
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, part), timeout=10)
        end = high if to_offset is None else min(high, to_offset)
        consumer.assign([TopicPartition(topic, part, 0)])
        offset = 0
        while offset < end:
            msg = consumer.poll(5.0)
            if msg is None:
                raise TimeoutError(f"--topic: {topic}[{part}] stalled at offset {offset} of {end}")
            if msg.error() is not None:
                continue  # partition EOF
            at = int(msg.offset() or 0)
            offset = at + 1
            if at >= end:
                break
            try:
                rows.append(parse(msg.value() or b""))
            except InvalidEventError:
                continue
    consumer.close()
    arrow = {FieldType.INT64: pa.int64(), FieldType.FLOAT64: pa.float64(),
             FieldType.STRING: pa.string(), FieldType.BOOL: pa.bool_(),
             FieldType.TIMESTAMP: pa.int64()}  # fmt: skip
    cols = list(zip(*rows, strict=True)) if rows else [() for _ in fs.schema.fields]
    return pa.table(
        {f.name: pa.array(c, arrow[f.type]) for f, c in zip(fs.schema.fields, cols, strict=True)}
    )
