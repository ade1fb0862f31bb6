"""``skewless serve`` and ``skewless score``, added to the main CLI by :func:`add_cli`.

``serve`` runs the gRPC scoring service until SIGTERM/SIGINT. ``score`` is a small client:
one event from flags or ``--json``, or a file of events (Parquet or JSON lines) sent in
``ScoreBatch`` chunks; it prints one JSON object per response.

>>> import argparse
>>> p = argparse.ArgumentParser(prog="skewless"); sub = p.add_subparsers(dest="command")
>>> add_cli(sub, lambda name: lambda fn: fn)
>>> a = p.parse_args(["score", "--card-id", "7", "--amount", "12.5"]); (a.card_id, a.amount)
(7, 12.5)
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

Handler = Callable[[argparse.Namespace, Any], int]


def add_cli(
    sub: argparse._SubParsersAction, command: Callable[[str], Callable[[Handler], Handler]]
) -> None:
    """Add the ``serve`` and ``score`` subcommands; handlers get ``(args, settings)``."""
    s = sub.add_parser("serve", help="the gRPC scoring service (features at request time + model)")
    s.add_argument("--address", help="host:port to bind (SKEWLESS_GRPC_ADDRESS)")
    s.add_argument("--registry", type=Path, help="model registry (SKEWLESS_REGISTRY_DIR)")
    s.add_argument("--alias", help="registry alias to serve and follow (SKEWLESS_MODEL_ALIAS)")
    s.add_argument("--redis-url", help="online store; empty: embedded SQLite (SKEWLESS_REDIS_URL)")
    s.add_argument(
        "--metrics-port", type=int, help="Prometheus /metrics port (SKEWLESS_METRICS_PORT)"
    )
    s.add_argument("--max-batch-size", type=int, default=1_000)
    s.add_argument("--grace", type=float, default=5.0, help="seconds in-flight calls get on stop")
    s.add_argument(
        "--prediction-log", type=Path,
        help="Parquet prediction log directory (default <data-dir>/predictions; "
        "a Kafka topic <topic>.predictions when SKEWLESS_KAFKA_BOOTSTRAP is set)",
    )  # fmt: skip
    s.add_argument("--no-prediction-log", action="store_true")
    s.add_argument(
        "--workers", type=int, default=1,
        help="server processes sharing the port (SO_REUSEPORT); each logs to its own shard",
    )  # fmt: skip
    s.add_argument(
        "--tls-cert", type=Path, help="TLS: the server certificate chain (PEM; SKEWLESS_TLS_CERT)"
    )
    s.add_argument(
        "--tls-key", type=Path, help="TLS: the server private key (PEM; SKEWLESS_TLS_KEY)"
    )
    s.add_argument(
        "--tls-client-ca", type=Path,
        help="mutual TLS: client certificates must chain to this CA (SKEWLESS_TLS_CLIENT_CA)",
    )  # fmt: skip
    s.add_argument(
        "--open-reflection", action="store_true",
        help="server reflection without the auth token (health never needs it)",
    )  # fmt: skip
    s.add_argument(
        "--shadow-alias", default="",
        help="also score every request with this alias's model, off the response path "
        "(both scores in the prediction log)",
    )  # fmt: skip
    s.add_argument(
        "--canary-alias", default="",
        help="let this alias's model decide --canary-fraction of the cards (hash of the key)",
    )  # fmt: skip
    s.add_argument("--canary-fraction", type=_fraction, default=None, help="in [0, 1]")
    command("serve")(_serve)

    c = sub.add_parser("score", help="score events against a running `skewless serve`")
    c.add_argument("--address", help="server host:port (SKEWLESS_GRPC_ADDRESS)")
    src = c.add_mutually_exclusive_group()
    src.add_argument("--json", help="one event as a JSON object")
    src.add_argument("--file", type=Path, help="events as Parquet or JSON lines (.jsonl)")
    c.add_argument("--transaction-id")
    c.add_argument("--card-id", type=int)
    c.add_argument("--merchant-id", type=int, default=0)
    c.add_argument("--amount", type=float)
    c.add_argument("--currency", default="EUR")
    c.add_argument("--country", default="FR")
    c.add_argument("--mcc", type=int, default=5411)
    c.add_argument("--event-time", help="RFC 3339 with offset or epoch ms (default: now)")
    c.add_argument("--include-features", action="store_true")
    c.add_argument("--batch-size", type=int, default=500)
    c.add_argument("--timeout", type=float, default=10.0, help="deadline per call, seconds")
    c.add_argument(
        "--tls-ca",
        type=Path,
        help="TLS: the CA that signed the server's certificate (SKEWLESS_TLS_CA)",
    )
    c.add_argument(
        "--tls-cert",
        type=Path,
        help="mutual TLS: the client certificate (PEM; SKEWLESS_TLS_CLIENT_CERT)",
    )
    c.add_argument(
        "--tls-key",
        type=Path,
        help="mutual TLS: the client private key (PEM; SKEWLESS_TLS_CLIENT_KEY)",
    )
    command("score")(_score)


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text!r}")
    return value


def _serve(args: argparse.Namespace, settings: Any) -> int:
    import logging

    from serving.server import BindError, ServerConfig, serve
    from serving.workers import serve_workers

    if bool(args.canary_alias) != (args.canary_fraction is not None):
        print("skewless serve: --canary-alias and --canary-fraction go together", file=sys.stderr)
        return 2
    log_dir = (
        None if args.no_prediction_log else args.prediction_log or settings.data_dir / "predictions"
    )
    config = ServerConfig(
        registry_dir=args.registry or settings.registry_dir,
        model_alias=args.alias or settings.model_alias,
        address=args.address or settings.grpc_address,
        redis_url=settings.redis_url if args.redis_url is None else args.redis_url,
        feast_dir=settings.data_dir / "feast",
        auth_token=settings.auth_token,
        metrics_port=settings.metrics_port if args.metrics_port is None else args.metrics_port,
        max_batch_size=args.max_batch_size,
        grace_s=args.grace,
        prediction_log_dir=log_dir,
        kafka_bootstrap="" if args.no_prediction_log else settings.kafka_bootstrap,
        topic=settings.topic,
        definitions=settings.definitions,
        tls_cert=args.tls_cert or _path(settings.tls_cert),
        tls_key=args.tls_key or _path(settings.tls_key),
        tls_client_ca=args.tls_client_ca or _path(settings.tls_client_ca),
        open_reflection=args.open_reflection,
        shadow_alias=args.shadow_alias,
        canary_alias=args.canary_alias,
        canary_fraction=args.canary_fraction or 0.0,
    )

    def started(port: int) -> None:
        # logged once bound, so a busy port is the one line below and nothing else
        logging.getLogger("skewless.serving").info("serving: %r", config)
        print(f"listening on port {port}", flush=True)

    try:
        if args.workers != 1:
            return serve_workers(config, args.workers, started, settings.log_level)
        return serve(config, on_started=started)
    except BindError as exc:
        print(f"skewless serve: {exc}", file=sys.stderr)
        return 2


def _single_event(args: argparse.Namespace) -> dict[str, Any]:
    if args.json:
        try:
            obj = json.loads(args.json)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--json: not JSON ({exc})") from None
        if not isinstance(obj, dict):
            raise ValueError("--json: must be a JSON object")
        return obj
    missing = [f"--{n}" for n in ("card_id", "amount") if getattr(args, n) is None]
    if missing:
        raise ValueError(f"{', '.join(missing)}: required without --json or --file")
    et: Any = args.event_time or int(time.time() * 1000)
    if isinstance(et, str) and et.isdigit():
        et = int(et)
    return {
        "transaction_id": args.transaction_id or f"cli-{uuid.uuid4().hex[:16]}",
        "card_id": args.card_id, "merchant_id": args.merchant_id, "amount": args.amount,
        "currency": args.currency, "country": args.country, "mcc": args.mcc, "event_time": et,
    }  # fmt: skip


def read_events(path: Path, plan: Any) -> Iterator[Any]:
    """Validated events from Parquet or JSON lines; invalid rows are reported on stderr
    and skipped (the same rules as the stream: the definitions' schema)."""
    from features.schema import FieldType, InvalidEventError

    if path.suffix in (".jsonl", ".json", ".ndjson"):
        with path.open() as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield plan.validator.validate(json.loads(line))
                except (InvalidEventError, json.JSONDecodeError) as exc:
                    print(f"{path}:{n}: skipped: {exc}", file=sys.stderr)
        return
    import pyarrow.compute as pc

    from flows.inputs import read_parquet

    valid, rejects = plan.validator.validate_table(read_parquet(path, "--file"))
    rows, reasons = rejects.column("row").to_pylist(), rejects.column("reason").to_pylist()
    for row, reason in zip(rows, reasons, strict=True):
        print(f"{path}: row {row}: skipped: {reason}", file=sys.stderr)
    cols = []
    for f in plan.schema.fields:
        if f.name not in valid.column_names:
            cols.append([None] * valid.num_rows)
        elif f.type is FieldType.TIMESTAMP:
            cols.append(pc.cast(valid.column(f.name), "int64").to_pylist())
        else:
            cols.append(valid.column(f.name).to_pylist())
    for values in zip(*cols, strict=True):
        yield plan.record._make(values)


def _path(setting: str) -> Path | None:
    """A ``SKEWLESS_TLS_*`` path setting; empty means not set."""
    return Path(setting) if setting else None


def _score(args: argparse.Namespace, settings: Any) -> int:
    import grpc

    from features.loader import load_definitions
    from features.plan import compile_plan
    from flows.inputs import require_file
    from serving._proto.skewless.v1 import scorer_pb2 as pb
    from serving._proto.skewless.v1 import scorer_pb2_grpc as pb_grpc
    from serving.convert import event_message, response_dict
    from serving.tls import client_channel

    plan = compile_plan(load_definitions(settings.definitions))
    if args.file is not None:  # before connecting: a typo is not a server problem
        require_file(args.file, "--file")
    address = args.address or settings.grpc_address
    metadata = [("authorization", f"Bearer {settings.auth_token}")] if settings.auth_token else []
    ca = args.tls_ca or _path(settings.tls_ca)
    cert = args.tls_cert or _path(settings.tls_client_cert)
    key = args.tls_key or _path(settings.tls_client_key)
    with client_channel(address, ca, cert, key) as channel:
        stub = pb_grpc.ScorerStub(channel)
        try:
            if args.file is None:
                req = pb.ScoreRequest(
                    event=event_message(_single_event(args), plan),
                    include_features=args.include_features,
                )
                resp = stub.Score(req, timeout=args.timeout, metadata=metadata)
                print(json.dumps(response_dict(resp)))
                return 0
            chunk: list[Any] = []
            events = read_events(args.file, plan)
            while True:
                chunk = [event_message(e, plan) for e in itertools.islice(events, args.batch_size)]
                if not chunk:
                    return 0
                batch = pb.ScoreBatchRequest(events=chunk, include_features=args.include_features)
                out = stub.ScoreBatch(batch, timeout=args.timeout, metadata=metadata)
                for r in out.responses:
                    print(json.dumps(response_dict(r)))
        except grpc.RpcError as exc:
            unreachable = not_connected(exc.code(), exc.details() or "", address)
            if unreachable:
                print(f"skewless score: {unreachable}", file=sys.stderr)
                return 2
            print(f"skewless score: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1


def not_connected(code: Any, details: str, address: str) -> str | None:
    """The one-line message for a call that never reached a server, else None (an
    ``UNAVAILABLE`` the server itself sent, e.g. no model yet, is reported as it is).

    >>> import grpc
    >>> not_connected(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; "
    ...     "last error: UNKNOWN: ipv4:127.0.0.1:1: Failed to connect to remote host: "
    ...     "connect: Connection refused (111)", "127.0.0.1:1")[:57]
    'no skewless server at 127.0.0.1:1 (connection refused); s'
    >>> not_connected(grpc.StatusCode.UNAVAILABLE, "no model is served yet", "h:1") is None
    True
    """
    import grpc

    if code is not grpc.StatusCode.UNAVAILABLE:
        return None
    how = (
        f"start one with `skewless serve --address {address}`, or point --address "
        "(SKEWLESS_GRPC_ADDRESS) at a running one"
    )
    if "failed to connect to all addresses" in details and "Connection refused" in details:
        return f"no skewless server at {address} (connection refused); {how}"
    if "Socket closed" in details or "handshake" in details.lower():
        # something listens but ends the connection: most often a TLS server, plaintext call
        return (
            f"the server at {address} closed the connection; if it serves TLS, pass --tls-ca "
            "(and --tls-cert/--tls-key when it asks for a client certificate)"
        )
    never_reached = ("failed to connect to all", "DNS resolution", "errors resolving")
    if any(s in details for s in never_reached):
        reason = details.split("last error: ", 1)[-1]
        return f"cannot reach a skewless server at {address} ({reason}); {how}"
    return None
