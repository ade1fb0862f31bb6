"""The ``skewless`` console script: one entry point, subcommands, settings built here once."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from features.settings import Settings, tune_grpc
from skewless.cli_lazy import ELSEWHERE, add_elsewhere, chosen
from skewless.feast_start import feast_unchecked

log = logging.getLogger("skewless")

Command = Callable[[argparse.Namespace, Settings], int]
_COMMANDS: dict[str, Command] = {}


def command(name: str) -> Callable[[Command], Command]:
    def register(fn: Command) -> Command:
        _COMMANDS[name] = fn
        return fn

    return register


def version() -> str:
    """The installed distribution's version (package metadata, so it cannot drift from
    ``pyproject.toml``)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("skewless")
    except PackageNotFoundError:  # a source tree on PYTHONPATH without `pip install -e .`
        return "unknown (not installed)"


#: `skewless bench` suites (bench/suite.py runs them; detection only on request)
BENCH_SUITES = ("backfill", "stream", "serve", "monitor", "memory", "detection")


def _suite(name: str) -> str:
    # a type, not choices: argparse checks choices against the [] default of nargs="*" too
    if name not in BENCH_SUITES:
        raise argparse.ArgumentTypeError(f"{name!r} is not one of {', '.join(BENCH_SUITES)}")
    return name


def _parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="skewless",
        description="Unified streaming feature and inference pipeline: zero training/serving skew.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {version()}")
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
    s.add_argument("--drift-day", type=float, help="drift scenarios start on this day")
    s.add_argument("--drift-amount", type=float, default=1.0, help="amounts x this from the day")
    s.add_argument("--drift-country", help="a new country (2 letters) appears from the day")
    s.add_argument("--drift-country-share", type=float, default=0.1, help="its traffic share")
    s.add_argument("--drift-fraud", type=float, default=0.0, help="new fraud pattern share")
    s.add_argument(
        "--labels", type=Path, help="labels file with chargeback delays (default: "
        "<out>.labels.parquet beside --out; 'none' to skip)",
    )  # fmt: skip

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
    st.add_argument(
        "--cluster-timeout", type=float, default=60.0, help="seconds to wait for the members"
    )
    st.add_argument(
        "--batch-size", type=int, default=5000,
        help="messages per batch and partition at most (while tailing, fewer: a poll's CPU budget)",
    )  # fmt: skip
    st.add_argument(
        "--kafka-source", choices=("thin", "bytewax"), default="thin",
        help="thin: one item per poll (default); bytewax: Bytewax's KafkaSource, one per message",
    )  # fmt: skip
    st.add_argument(
        "--evict-after",
        type=float,
        default=os.environ.get("SKEWLESS_STREAM_EVICT_AFTER") or "0",  # argparse converts
        help="drop entities idle this many seconds (wall clock), read back when they return "
        "(default 0: never; env SKEWLESS_STREAM_EVICT_AFTER)",
    )
    st.add_argument(
        "--state-layout", choices=("auto", "entity", "sharded"),
        default=os.environ.get("SKEWLESS_STREAM_STATE_LAYOUT") or "auto",
        help="entity: one Bytewax key per entity; sharded: one per key shard, one item per "
        "shard and poll; auto (default): sharded, but with -r the layout the recovery "
        "directory holds, entity for a new one (env SKEWLESS_STREAM_STATE_LAYOUT)",
    )  # fmt: skip
    st.add_argument("-r", "--recovery-directory", type=Path)
    st.add_argument("-s", "--snapshot-interval", type=float, default=5.0, help="seconds")
    st.add_argument("-b", "--backup-interval", type=float, default=0.0, help="seconds")

    pr = sub.add_parser("produce", help="replay an events (or labels) Parquet into Kafka")
    pr.add_argument("--events", type=Path)
    pr.add_argument("--labels", type=Path, help="a labels Parquet, to <topic>.labels")
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
        "suites",
        nargs="*",
        default=[],
        type=_suite,
        help="backfill, stream, serve, monitor, memory (default: all); detection on request",
    )
    bench.add_argument("--events", type=int, default=1_000_000)
    bench.add_argument("--out", type=Path, help="also write the JSON here")

    d = sub.add_parser("demo", help="the whole loop on embedded defaults")
    d.add_argument("--events", type=int, default=200_000)
    d.add_argument("--out", type=Path, help="demo folder, a data root (default: the data dir)")
    d.add_argument("--score", type=int, default=1000, help="events scored over gRPC")
    d.add_argument("--kafka", action="store_true", help="stream through SKEWLESS_KAFKA_BOOTSTRAP")
    d.add_argument("--redis", action="store_true", help="online store on SKEWLESS_REDIS_URL")
    reset = "with --redis: first delete the project's keys an earlier run left there"
    d.add_argument("--reset-redis", action="store_true", help=reset)
    # the chosen command's own module adds its options (None: every module's)
    add_elsewhere(sub, command, ELSEWHERE if argv is None else [chosen(argv) or ""])
    return p


@command("simulate")
def _simulate(args: argparse.Namespace, settings: Settings) -> int:
    from flows.simulate import SimulationConfig, simulate, write_events

    cfg = SimulationConfig(
        events=args.events, cards=args.cards, merchants=args.merchants, days=args.days,
        seed=args.seed, fraud_rate=args.fraud_rate,
    )  # fmt: skip
    table = simulate(cfg, progress=sys.stderr.isatty())
    if args.drift_day is not None:
        from flows.sim_drift import DriftScenario, apply_drift

        scenario = DriftScenario(
            day=args.drift_day, amount_factor=args.drift_amount, new_country=args.drift_country,
            new_country_share=args.drift_country_share, new_fraud_share=args.drift_fraud,
        )  # fmt: skip
        table = apply_drift(table, cfg, scenario)
    elif args.drift_amount != 1.0 or args.drift_country or args.drift_fraud:
        raise ValueError("--drift-amount, --drift-country, --drift-fraud: need --drift-day D")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_events(table, args.out)
    fraud = sum(table.column("is_fraud").to_pylist())
    share = fraud / max(table.num_rows, 1)
    print(f"wrote {table.num_rows:,} events ({share:.2%} fraud) to {args.out}")
    if str(args.labels) != "none":
        from features.loader import load_definitions
        from flows.labels import write_labels
        from flows.sim_labels import simulate_labels

        path = args.labels or args.out.with_name(args.out.stem + ".labels.parquet")
        labels = simulate_labels(table, load_definitions(None), seed=args.seed)
        write_labels(labels, path)
        print(f"wrote {labels.num_rows:,} labels to {path}")
    return 0


@command("backfill")
def _backfill(args: argparse.Namespace, settings: Settings) -> int:
    if args.engine != "dask" and not args.scheduler:
        from flows.backfill_memory import arrow_small_pages

        arrow_small_pages(os.environ)  # before Arrow loads: ~-1 s of system CPU on 2M events
    from features.loader import load_definitions
    from flows.backfill import run_backfill

    fs = load_definitions(settings.definitions)
    if args.engine != "dask" and not args.scheduler:
        from flows.backfill_memory import arrow_without_pandas

        arrow_without_pandas()  # a job without pandas: ~-0.3 s of the start
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

    if args.replay is not None:  # before the flow starts: inside it, a Bytewax traceback
        from flows.inputs import read_parquet_schema

        read_parquet_schema(args.replay, "--replay")
    return run_stream(args, settings)


@command("produce")
def _produce(args: argparse.Namespace, settings: Settings) -> int:
    from flows.inputs import read_parquet_schema
    from flows.produce import produce_file

    if not args.events and not args.labels:
        raise ValueError("give --events FILE, --labels FILE or both")
    if args.events:
        read_parquet_schema(args.events, "--events")
    if args.labels:
        read_parquet_schema(args.labels, "--labels")
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
    failed = 0
    if args.events:
        report = produce_file(
            fs, settings.kafka_bootstrap, topic, args.events, args.rate, sys.stderr.isatty()
        )
        print(report.to_json())
        failed += report.failed
    if args.labels:
        from flows.labels_kafka import produce_labels

        report = produce_labels(
            fs, settings.kafka_bootstrap, topic, args.labels, args.rate, sys.stderr.isatty()
        )
        print(report.to_json())
        failed += report.failed
    return 0 if failed == 0 else 1


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
    feast_unchecked()  # Feast's import without typeguard's ~6 CPU-s (skewless.feast_start)
    args = _parser(sys.argv[1:] if argv is None else argv).parse_args(argv)
    if getattr(args, "placeholder", False):  # the name was not told apart before parsing
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
    if not isinstance(logging.getLevelName(settings.log_level.upper()), int):
        print(
            f"skewless: --log-level: {settings.log_level!r} is not one of DEBUG, INFO, WARNING, "
            "ERROR (SKEWLESS_LOG_LEVEL)",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if settings.log_level.upper() != "DEBUG":  # Feast logs every registry refresh at INFO
        logging.getLogger("feast").setLevel(logging.WARNING)
    try:
        return _COMMANDS[args.command](args, settings)
    except BrokenPipeError:  # `skewless verify ... | head`: the reader left, nothing to say
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the flush at exit does not fail again
        return 1
    except KeyboardInterrupt:  # Ctrl-C: the stream stops itself; the others just end
        print(f"\nskewless {args.command}: interrupted", file=sys.stderr)
        return 130
    except (SchemaError, ValueError, FileNotFoundError, ConnectionError) as exc:
        print(f"skewless {args.command}: {exc}", file=sys.stderr)
        return 2
    except SyntaxError as exc:  # in the user's definitions file: where, not a traceback
        print(
            f"skewless {args.command}: definitions: {exc.filename}, line {exc.lineno}: {exc.msg}",
            file=sys.stderr,
        )
        return 2
    except OSError as exc:  # an output path that is a file, a folder without permission...
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"skewless {args.command}: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
