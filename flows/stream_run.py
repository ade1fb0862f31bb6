"""``skewless stream``: run the flow in this process with Bytewax's runtime options."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import logging
import os
import signal
import threading
from collections.abc import Iterator
from datetime import timedelta
from types import FrameType

from features.loader import load_definitions
from features.settings import Settings, masked_url
from flows import stream_io
from flows.stream import build_flow, config_from_settings
from flows.stream_cluster import parse_addresses, wait_for_members
from flows.stream_shard import check_recovery, resolve_layout
from flows.stream_summary import print_summary, replay_rows, watch

log = logging.getLogger("skewless.stream")


def preflight(
    settings: Settings,
    timeout_s: float = 5.0,
    topic: str | None = None,
    create_topic: bool = False,
) -> None:
    """Fail fast, naming the service and how to start it, instead of a flow that retries
    a dead address forever. With ``topic``: refuse one that does not exist (a consumer's
    metadata request would have the broker auto-create it, with its defaults, while the
    stream waits on it), or create it with the broker's defaults when ``create_topic``."""
    if settings.kafka_bootstrap:
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap, "log_level": 0})
        try:
            topics = admin.list_topics(timeout=timeout_s).topics  # all: creates none
        except KafkaException as exc:
            raise ConnectionError(
                f"Kafka at {settings.kafka_bootstrap} is unreachable ({exc.args[0].str()}); "
                "start a broker with `scripts/services.sh kafka-start DIR` "
                "or fix SKEWLESS_KAFKA_BOOTSTRAP"
            ) from None
        if topic is not None and topic not in topics:
            if not create_topic:
                raise ValueError(
                    f"topic '{topic}' does not exist on {settings.kafka_bootstrap}: create it "
                    f"(kafka-topics.sh --create --topic {topic} --partitions N), pass "
                    "--create-topic (broker defaults), or fix SKEWLESS_TOPIC"
                )
            try:
                admin.create_topics([NewTopic(topic)])[topic].result(timeout_s * 6)
            except KafkaException as exc:
                if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                    raise ValueError(f"topic '{topic}': cannot create it ({exc})") from None
            log.info("created topic %s (broker defaults)", topic)
    if settings.redis_url:
        import redis

        from features.store.redis_cluster import is_cluster_url, parse_cluster_url

        url = settings.redis_url
        if is_cluster_url(url):  # one PONG from a seed is enough; the client finds the rest
            c = parse_cluster_url(url)
            urls = [c.node_url(s) for s in c.seeds]
            url = next((u for u in urls if _pong(u, timeout_s)), urls[0])
        client = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        try:
            client.ping()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise ConnectionError(
                f"Redis at {masked_url(settings.redis_url)} is unreachable ({exc}); start it with "
                "`scripts/services.sh redis-start DIR` or fix SKEWLESS_REDIS_URL"
            ) from None
        finally:
            client.close()
        from features.loader import load_definitions
        from features.store.layout import check_layout

        check_layout(settings.redis_url, load_definitions(settings.definitions))


def _pong(url: str, timeout_s: float) -> bool:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError):
        return False
    finally:
        client.close()


def run_stream(args: argparse.Namespace, settings: Settings) -> int:
    """Same flags as ``python -m bytewax.run`` (-w, -i, -a, -r, -s, -b); a recovery
    directory that does not exist yet is initialized first. A cluster member (-a, -i)
    waits at most ``--cluster-timeout`` seconds for the others before Bytewax starts."""
    if not settings.kafka_bootstrap and args.replay is None:
        raise ValueError(
            "input: set SKEWLESS_KAFKA_BOOTSTRAP (start a broker with "
            "`scripts/services.sh kafka-start DIR`) or pass --replay EVENTS.parquet"
        )
    members = parse_addresses(args.addresses, args.process_id)
    timeout_s = getattr(args, "cluster_timeout", 60.0)
    if timeout_s <= 0:
        raise ValueError(f"--cluster-timeout: {timeout_s:g} must be > 0 seconds")
    with _stop_on_signals():
        topic = settings.topic if args.replay is None else None
        preflight(settings, topic=topic, create_topic=getattr(args, "create_topic", False))
        _run(args, settings, members, timeout_s)
    return 0


def _run(
    args: argparse.Namespace, settings: Settings, members: list[str] | None, timeout_s: float
) -> None:
    from bytewax._bytewax import RecoveryConfig, cli_main, init_db_dir

    fs = load_definitions(settings.definitions)
    evict = getattr(args, "evict_after", 0.0) or 0.0
    if evict < 0:
        raise ValueError(f"--evict-after: {evict:g} must be >= 0 seconds (0: never)")
    batch = getattr(args, "batch_size", 5000)
    if batch < 1:
        raise ValueError(f"--batch-size: {batch} must be >= 1")
    cfg = config_from_settings(settings, args.replay, tail=not args.no_tail, evict_after_s=evict)
    thin = getattr(args, "kafka_source", "thin") == "thin"
    snapshots = args.recovery_directory is not None
    layout = resolve_layout(
        getattr(args, "state_layout", None) or "auto",
        args.recovery_directory,
        [e.name for e in fs.entities],
    )
    cfg = dataclasses.replace(
        cfg, batch_size=batch, thin_source=thin, snapshots=snapshots, state_layout=layout
    )
    if args.recovery_directory is not None and args.recovery_directory.exists():
        check_recovery(args.recovery_directory, [e.name for e in fs.entities], layout)
    flow = build_flow(fs, cfg)
    recovery = None
    epoch = timedelta(seconds=args.snapshot_interval)
    if args.recovery_directory is not None:
        if not args.recovery_directory.exists():
            args.recovery_directory.mkdir(parents=True)
            init_db_dir(args.recovery_directory, 1)
        recovery = RecoveryConfig(args.recovery_directory, timedelta(seconds=args.backup_interval))
    me = args.process_id or 0
    if members is not None and not wait_for_members(
        members, me, timeout_s, stream_io.stop_requested
    ):
        return  # Ctrl-C while waiting for the others
    with _tuned_gc(), watch(replay_rows(args.replay)) as before:  # progress, then the summary
        cli_main(
            flow,
            workers_per_process=args.workers_per_process,
            process_id=None if members is None else me,
            addresses=members,
            epoch_interval=epoch,
            recovery_config=recovery,
        )
    print_summary(before, fs, cfg)
    if cfg.evict_after_s:
        m = stream_io.METRICS
        log.info(
            "idle eviction: %d entities evicted, %d read back, %d held at the end",
            m.evicted._value.get(), m.returned._value.get(), m.held._value.get(),
        )  # fmt: skip


@contextlib.contextmanager
def _tuned_gc() -> Iterator[None]:
    """The flow makes a few short-lived objects per event and holds every entity's
    logic: with CPython's default thresholds the cyclic GC took ~12% of a drain's samples
    (py-spy), rescanning the held logics. What exists now is frozen out of the scans, and
    the youngest generation is collected every 50,000 allocations instead of 700. Undone
    after the run (a caller in the same process gets its GC back)."""
    if os.environ.get("SKEWLESS_STREAM_GC") == "default":
        yield
        return
    before = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    """Ctrl-C or SIGTERM ends the input at its next batch: the flow writes what it holds
    and ``run_stream`` returns 0 (a KeyboardInterrupt would surface inside a Bytewax
    callback as a Rust panic and a traceback). A second signal exits at once."""
    stream_io.clear_stop()
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread
        return

    def stop(signum: int, _frame: FrameType | None) -> None:
        if stream_io.stop_requested():
            os._exit(128 + signum)
        log.warning("%s: stopping after the current batch", signal.Signals(signum).name)
        stream_io.request_stop()

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:  # a caller in the same process (a test, the demo) gets its handlers back
        for s, handler in previous.items():
            signal.signal(s, handler)
