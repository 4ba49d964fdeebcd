"""Transport security: TLS and mutual TLS for the gRPC port, and the plaintext rule.

Plaintext is the default only on loopback: a server asked to listen on any other address
without a certificate refuses to start unless `--insecure` says plaintext is intended
(for example behind a TLS-terminating proxy or inside a service mesh).
"""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

import grpc

from server.settings import Settings


class TransportError(ValueError):
    """The TLS flags or the plaintext rule forbid serving as configured."""


def listen_host(listen: str) -> str:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise TransportError(f"--listen: expected host:port, got {listen!r}")
    return host.strip("[]")


def is_loopback(host: str) -> bool:
    """True when every address `host` stands for is a loopback address."""
    if host in ("", "*"):
        return False  # every interface
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def mode(settings: Settings) -> str:
    """ "mutual TLS", "TLS" or "plaintext"."""
    if settings.tls_cert:
        return "mutual TLS" if settings.tls_client_ca else "TLS"
    return "plaintext"


def check(settings: Settings) -> None:
    """Raise TransportError unless the TLS settings are complete and consistent."""
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise TransportError("--tls-cert and --tls-key go together: give both or neither")
    if settings.tls_client_ca and not settings.tls_cert:
        raise TransportError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
    for flag, path in (
        ("--tls-cert", settings.tls_cert),
        ("--tls-key", settings.tls_key),
        ("--tls-client-ca", settings.tls_client_ca),
    ):
        if path and not Path(path).is_file():
            raise TransportError(f"{flag}: no such file: {path}")
    host = listen_host(settings.listen)
    if not settings.tls_cert and not settings.insecure and not is_loopback(host):
        raise TransportError(
            f"refusing to serve plaintext on non-loopback address {settings.listen}: "
            "give --tls-cert and --tls-key, or --insecure if plaintext is intended"
        )


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """Credentials for add_secure_port, or None for plaintext (after check())."""
    check(settings)
    if not settings.tls_cert:
        return None
    cert = Path(settings.tls_cert).read_bytes()
    key = Path(settings.tls_key).read_bytes()
    client_ca = Path(settings.tls_client_ca).read_bytes() if settings.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )
