"""``skewless stream``: run the flow in this process with Bytewax's runtime options."""

from __future__ import annotations

import argparse
from datetime import timedelta

from features.reference import REFERENCE
from flows.stream import build_flow, config_from_settings
from skewless.settings import Settings


def run_stream(args: argparse.Namespace, settings: Settings) -> int:
    """Same flags as ``python -m bytewax.run`` (-w, -i, -a, -r, -s, -b); a recovery
    directory that does not exist yet is initialized first."""
    from bytewax._bytewax import RecoveryConfig, cli_main, init_db_dir

    if not settings.kafka_bootstrap and args.replay is None:
        raise ValueError(
            "input: set SKEWLESS_KAFKA_BOOTSTRAP (start a broker with "
            "`scripts/services.sh kafka-start DIR`) or pass --replay EVENTS.parquet"
        )
    flow = build_flow(REFERENCE, config_from_settings(settings, args.replay, tail=not args.no_tail))
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
