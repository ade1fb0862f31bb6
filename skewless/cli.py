"""The ``skewless`` console script: one entry point, subcommands, settings built here once."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from features.settings import Settings, tune_grpc

log = logging.getLogger("skewless")

Command = Callable[[argparse.Namespace, Settings], int]
_COMMANDS: dict[str, Command] = {}


def command(name: str) -> Callable[[Command], Command]:
    def register(fn: Command) -> Command:
        _COMMANDS[name] = fn
        return fn

    return register


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="skewless",
        description="Unified streaming feature and inference pipeline: zero training/serving skew.",
    )
    p.add_argument("--data-dir", type=Path, help="default output folder (SKEWLESS_DATA_DIR)")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING (SKEWLESS_LOG_LEVEL)")
    p.add_argument(
        "--definitions",
        metavar="MODULE_OR_FILE",
        help="your definitions module or .py file (SKEWLESS_DEFINITIONS; default: the "
        "reference fraud set, features.reference)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("simulate", help="seeded transactions with fraud labels, as Parquet")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--events", type=int, default=200_000)
    s.add_argument("--cards", type=int, default=5_000)
    s.add_argument("--merchants", type=int, default=500)
    s.add_argument("--days", type=float, default=30.0)
    s.add_argument("--seed", type=int, default=7)
    s.add_argument("--fraud-rate", type=float, default=0.01)

    b = sub.add_parser("backfill", help="point-in-time features for every spine row")
    b.add_argument("--events", type=Path, required=True)
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--spine", type=Path, help="rows to compute features for (default: the events)")
    b.add_argument(
        "--engine", choices=("single", "dask"), default="single",
        help="dask: partitions by entity key, one Dask task each (same output files)",
    )  # fmt: skip
    b.add_argument("--workers", type=int, default=2, help="dask: local worker processes")
    b.add_argument("--scheduler", metavar="ADDRESS", help="dask: a running scheduler, tcp://...")
    b.add_argument("--partitions", type=int, help="dask: per entity (default: by input size)")

    st = sub.add_parser(
        "stream", help="the Bytewax flow: Kafka (or --replay FILE) -> Feast online store"
    )
    st.add_argument("--replay", type=Path, help="embedded mode: replay this events Parquet")
    st.add_argument("--no-tail", action="store_true", help="stop at the end of the input")
    st.add_argument(
        "--create-topic", action="store_true", help="create SKEWLESS_TOPIC if it does not exist"
    )
    st.add_argument("-w", "--workers-per-process", type=int, default=1)
    st.add_argument("-i", "--process-id", type=int)
    st.add_argument("-a", "--addresses", help="cluster: host:port;host:port (one per process)")
    st.add_argument("-r", "--recovery-directory", type=Path)
    st.add_argument("-s", "--snapshot-interval", type=float, default=5.0, help="seconds")
    st.add_argument("-b", "--backup-interval", type=float, default=0.0, help="seconds")

    pr = sub.add_parser("produce", help="replay an events Parquet into Kafka")
    pr.add_argument("--events", type=Path, required=True)
    pr.add_argument("--rate", type=float, default=0.0, help="events/s (0 = as fast as possible)")
    pr.add_argument("--topic", help="default: SKEWLESS_TOPIC")

    v = sub.add_parser(
        "verify", help="skew report: online state and logged predictions vs backfill"
    )
    src = v.add_mutually_exclusive_group(required=True)
    src.add_argument("--events", type=Path, help="every event the stream saw (Parquet)")
    src.add_argument(
        "--topic", help="or read them from this Kafka topic (SKEWLESS_KAFKA_BOOTSTRAP)"
    )
    v.add_argument("--to-offset", type=int, help="with --topic: stop before this offset")
    v.add_argument(
        "--predictions", type=Path, help="prediction log dir (default <data-dir>/predictions)"
    )
    v.add_argument(
        "--registry", type=Path, help="to rescore mismatches (default SKEWLESS_REGISTRY_DIR)"
    )
    v.add_argument("--sample", type=int, default=1000, help="entities per entity type")

    fr = sub.add_parser(
        "feast-repo",
        help="write a Feast repo (feature_store.yaml + repo.py) for the definitions, for "
        "`feast apply` / `feast materialize`",
    )
    fr.add_argument("--out", type=Path, required=True)

    bench = sub.add_parser("bench", help="benchmarks, JSON results with same-run baselines")
    bench.add_argument(
        "suites", nargs="*", default=[], help="backfill, stream, serve (default: all)"
    )
    bench.add_argument("--events", type=int, default=1_000_000)
    bench.add_argument("--out", type=Path, help="also write the JSON here")

    d = sub.add_parser("demo", help="the whole loop on embedded defaults")
    d.add_argument("--events", type=int, default=200_000)
    d.add_argument("--out", type=Path, help="demo folder (default: <data-dir>/demo)")
    d.add_argument("--score", type=int, default=1000, help="events scored over gRPC")
    d.add_argument("--kafka", action="store_true", help="stream through SKEWLESS_KAFKA_BOOTSTRAP")
    d.add_argument("--redis", action="store_true", help="online store on SKEWLESS_REDIS_URL")
    from flows.train import add_cli as add_train_cli  # `train` and `models`

    add_train_cli(sub, command)
    from serving.cli import add_cli as add_serving_cli  # `serve` and `score`

    add_serving_cli(sub, command)
    return p


@command("simulate")
def _simulate(args: argparse.Namespace, settings: Settings) -> int:
    from flows.simulate import SimulationConfig, simulate, write_events

    cfg = SimulationConfig(
        events=args.events, cards=args.cards, merchants=args.merchants, days=args.days,
        seed=args.seed, fraud_rate=args.fraud_rate,
    )  # fmt: skip
    table = simulate(cfg, progress=sys.stderr.isatty())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_events(table, args.out)
    fraud = sum(table.column("is_fraud").to_pylist())
    share = fraud / max(table.num_rows, 1)
    print(f"wrote {table.num_rows:,} events ({share:.2%} fraud) to {args.out}")
    return 0


@command("backfill")
def _backfill(args: argparse.Namespace, settings: Settings) -> int:
    from features.loader import load_definitions
    from flows.backfill import run_backfill

    fs = load_definitions(settings.definitions)
    if args.engine == "dask" or args.scheduler:
        from flows.backfill_dask import run_backfill_dask

        report = run_backfill_dask(
            fs, args.events, args.out, args.spine, workers=args.workers,
            scheduler=args.scheduler, partitions=args.partitions,
        )  # fmt: skip
    else:
        report = run_backfill(fs, args.events, args.out, args.spine)
    print(report.to_json())
    return 0


@command("stream")
def _stream(args: argparse.Namespace, settings: Settings) -> int:
    from flows.stream_run import run_stream

    return run_stream(args, settings)


@command("produce")
def _produce(args: argparse.Namespace, settings: Settings) -> int:
    from flows.produce import produce_file

    if not settings.kafka_bootstrap:
        print(
            "skewless produce: Kafka is not configured; start a broker with "
            "`scripts/services.sh kafka-start DIR` and set SKEWLESS_KAFKA_BOOTSTRAP",
            file=sys.stderr,
        )
        return 2
    from flows.stream_run import preflight

    preflight(settings)
    topic = args.topic or settings.topic
    from features.loader import load_definitions

    fs = load_definitions(settings.definitions)
    report = produce_file(
        fs, settings.kafka_bootstrap, topic, args.events, args.rate, sys.stderr.isatty()
    )
    print(report.to_json())
    return 0 if report.failed == 0 else 1


@command("verify")
def _verify(args: argparse.Namespace, settings: Settings) -> int:
    from skewless.verify import run_verify

    return run_verify(args, settings)


@command("feast-repo")
def _feast_repo(args: argparse.Namespace, settings: Settings) -> int:
    from features.loader import DEFAULT, load_definitions
    from features.store import StoreConfig
    from features.store.feast import write_feast_repo

    spec = settings.definitions or DEFAULT
    if spec.endswith(".py") or Path(spec).is_file():
        spec = str(Path(spec).resolve())
    fs = load_definitions(spec)
    cfg = StoreConfig(settings.redis_url)
    for path in write_feast_repo(cfg, fs, spec, args.out):
        print(path)
    print(f"project {fs.project}: cd {args.out} && feast apply && feast materialize ...")
    return 0


@command("bench")
def _bench(args: argparse.Namespace, settings: Settings) -> int:
    from bench.suite import run_suites

    return run_suites(args, settings)


@command("demo")
def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from skewless.demo import run_demo

    return run_demo(args, settings)


def main(argv: Sequence[str] | None = None) -> int:
    tune_grpc()
    args = _parser().parse_args(argv)
    from features.schema import SchemaError

    try:
        settings = Settings.from_env(
            os.environ,
            data_dir=args.data_dir,
            log_level=args.log_level,
            definitions=args.definitions,
        )
    except ValueError as exc:
        print(f"skewless: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if settings.log_level.upper() != "DEBUG":  # Feast logs every registry refresh at INFO
        logging.getLogger("feast").setLevel(logging.WARNING)
    try:
        return _COMMANDS[args.command](args, settings)
    except (SchemaError, ValueError, FileNotFoundError, ConnectionError) as exc:
        print(f"skewless {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
