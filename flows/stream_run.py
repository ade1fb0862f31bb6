"""``skewless stream``: run the flow in this process with Bytewax's runtime options."""

from __future__ import annotations

import argparse
from datetime import timedelta

from features.loader import load_definitions
from features.settings import Settings
from flows.stream import build_flow, config_from_settings


def preflight(settings: Settings, timeout_s: float = 5.0) -> None:
    """Fail fast, naming the service and how to start it, instead of a flow that retries
    a dead address forever."""
    if settings.kafka_bootstrap:
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap, "log_level": 0})
        try:
            admin.list_topics(timeout=timeout_s)
        except KafkaException as exc:
            raise ConnectionError(
                f"Kafka at {settings.kafka_bootstrap} is unreachable ({exc.args[0].str()}); "
                "start a broker with `scripts/services.sh kafka-start DIR` "
                "or fix SKEWLESS_KAFKA_BOOTSTRAP"
            ) from None
    if settings.redis_url:
        import redis

        client = redis.Redis.from_url(
            settings.redis_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        try:
            client.ping()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise ConnectionError(
                f"Redis at {settings.redis_url} is unreachable ({exc}); start it with "
                "`scripts/services.sh redis-start DIR` or fix SKEWLESS_REDIS_URL"
            ) from None
        finally:
            client.close()


def run_stream(args: argparse.Namespace, settings: Settings) -> int:
    """Same flags as ``python -m bytewax.run`` (-w, -i, -a, -r, -s, -b); a recovery
    directory that does not exist yet is initialized first."""
    from bytewax._bytewax import RecoveryConfig, cli_main, init_db_dir

    if not settings.kafka_bootstrap and args.replay is None:
        raise ValueError(
            "input: set SKEWLESS_KAFKA_BOOTSTRAP (start a broker with "
            "`scripts/services.sh kafka-start DIR`) or pass --replay EVENTS.parquet"
        )
    preflight(settings)
    fs = load_definitions(settings.definitions)
    flow = build_flow(fs, config_from_settings(settings, args.replay, tail=not args.no_tail))
    recovery = None
    epoch = timedelta(seconds=args.snapshot_interval)
    if args.recovery_directory is not None:
        if not args.recovery_directory.exists():
            args.recovery_directory.mkdir(parents=True)
            init_db_dir(args.recovery_directory, 1)
        recovery = RecoveryConfig(args.recovery_directory, timedelta(seconds=args.backup_interval))
    addresses = args.addresses.split(";") if args.addresses else None
    cli_main(
        flow,
        workers_per_process=args.workers_per_process,
        process_id=args.process_id,
        addresses=addresses,
        epoch_interval=epoch,
        recovery_config=recovery,
    )
    return 0
