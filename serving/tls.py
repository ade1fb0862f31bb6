"""TLS for the scoring service: server credentials (optionally mutual) and client channels.

The PEM files are read and checked with :mod:`ssl` before gRPC sees them: gRPC accepts
unreadable or mismatched material silently and only fails each handshake later, with a
C-core log line. Here a bad file is one :class:`TLSConfigError` naming the setting and
the path (``skewless serve``/``score`` print it as one line and exit 2).

>>> server_credentials(None, None, None) is None   # plaintext
True
>>> server_credentials(Path("/nonexistent.pem"), Path("/k.pem"), None)
Traceback (most recent call last):
serving.tls.TLSConfigError: tls_cert: cannot read /nonexistent.pem: No such file or directory
>>> server_credentials(None, None, Path("ca.pem"))
Traceback (most recent call last):
serving.tls.TLSConfigError: tls_client_ca: needs tls_cert and tls_key (mutual TLS is TLS first)
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import grpc


class TLSConfigError(ValueError):
    """A TLS setting that cannot be used; the message starts with the setting's name."""


def _read(setting: str, path: Path) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TLSConfigError(f"{setting}: cannot read {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data:
        raise TLSConfigError(f"{setting}: {path} is not a PEM file")
    return data


def _both(cert_setting: str, cert: Path | None, key_setting: str, key: Path | None) -> None:
    if (cert is None) != (key is None):
        names = (cert_setting, key_setting)
        missing, given = names if cert is None else names[::-1]
        raise TLSConfigError(f"{missing}: required with {given}")


def _check_pair(cert_setting: str, cert: Path, key_setting: str, key: Path) -> tuple[bytes, bytes]:
    """Both files readable, and the key is the certificate's."""
    cert_pem, key_pem = _read(cert_setting, cert), _read(key_setting, key)
    try:
        ssl.create_default_context().load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise TLSConfigError(
            f"{key_setting}: {key} does not match {cert_setting} {cert} ({exc.reason or exc})"
        ) from None
    return cert_pem, key_pem


def _check_ca(setting: str, path: Path) -> bytes:
    pem = _read(setting, path)
    try:
        ssl.create_default_context().load_verify_locations(cafile=str(path))
    except ssl.SSLError as exc:
        raise TLSConfigError(
            f"{setting}: {path} holds no usable CA certificate ({exc.reason or exc})"
        ) from None
    return pem


def server_credentials(
    cert: Path | None, key: Path | None, client_ca: Path | None
) -> grpc.ServerCredentials | None:
    """TLS server credentials, or None for plaintext. With ``client_ca``, clients must
    present a certificate signed by it (mutual TLS)."""
    _both("tls_cert", cert, "tls_key", key)
    if cert is None or key is None:
        if client_ca is not None:
            raise TLSConfigError(
                "tls_client_ca: needs tls_cert and tls_key (mutual TLS is TLS first)"
            )
        return None
    cert_pem, key_pem = _check_pair("tls_cert", cert, "tls_key", key)
    ca_pem = None if client_ca is None else _check_ca("tls_client_ca", client_ca)
    return grpc.ssl_server_credentials(
        [(key_pem, cert_pem)], root_certificates=ca_pem, require_client_auth=ca_pem is not None
    )


def client_channel(
    address: str,
    ca: Path | None = None,
    cert: Path | None = None,
    key: Path | None = None,
    options: list[tuple[str, Any]] | None = None,
) -> grpc.Channel:
    """A channel to ``address``: plaintext without any TLS setting; TLS when ``ca`` (the
    server's CA; the system's trust store when only a client certificate is given) or a
    client certificate (``cert`` + ``key``, for mutual TLS) is set."""
    if ca is None and cert is None and key is None:
        return grpc.insecure_channel(address, options=options)
    _both("--tls-cert", cert, "--tls-key", key)
    ca_pem = None if ca is None else _check_ca("--tls-ca", ca)
    cert_pem = key_pem = None
    if cert is not None and key is not None:
        cert_pem, key_pem = _check_pair("--tls-cert", cert, "--tls-key", key)
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca_pem, private_key=key_pem, certificate_chain=cert_pem
    )
    return grpc.secure_channel(address, creds, options=options)
