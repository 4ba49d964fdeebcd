"""TLS and mutual TLS on the gRPC port, and plaintext only on loopback (unless --insecure).

Every test makes its own CA and certificates (tests/support/certs.py) and runs the real
`modelregistry serve` command.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from modelregistry.v1 import model_service_pb2 as pb
from support.certs import CertificateAuthority, Issued
from support.registry import Client
from support.serve import ServeProcess, run_cli

SERVING = health_pb2.HealthCheckResponse.SERVING


def serving(channel: grpc.Channel) -> bool:
    try:
        status = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.UNAVAILABLE, err  # handshake refused
        return False
    return bool(status.status == SERVING)


def tls_channel(
    address: str, ca: CertificateAuthority, client: Issued | None = None
) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca.cert_pem(),
        private_key=client.key_pem() if client else None,
        certificate_chain=client.cert_pem() if client else None,
    )
    return grpc.secure_channel(address, creds)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    d = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority(d, "test CA")
    rogue = CertificateAuthority(d, "rogue CA")
    return {
        "ca": ca,
        "rogue": rogue,
        "server": ca.issue("registry", server=True),
        "client": ca.issue("device-agent", client=True),
        "rogue_client": rogue.issue("intruder", client=True),
        "rogue_server": rogue.issue("impostor", server=True),
    }


def _db_args(cwd: Path) -> list[str]:
    return ["--database-url", f"sqlite:///{cwd / 'r.db'}", "--object-store", str(cwd / "blobs")]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A migrated database with an org and a key, shared by the servers of this module."""
    cwd = tmp_path_factory.mktemp("tls")
    db = _db_args(cwd)[:2]
    run_cli(cwd, "migrate", *db)
    run_cli(cwd, "orgs", "create", "acme", *db)
    return cwd, run_cli(cwd, "keys", "create", "--org", "acme", *db).strip()


@pytest.fixture(scope="module")
def tls_server(workdir: tuple[Path, str], pki: dict[str, object]) -> Iterator[ServeProcess]:
    cwd, _ = workdir
    server: Issued = pki["server"]  # type: ignore[assignment]
    tls = ["--tls-cert", str(server.cert), "--tls-key", str(server.key)]
    with ServeProcess(cwd, [*_db_args(cwd), *tls]) as srv:
        yield srv


@pytest.fixture(scope="module")
def mtls_server(workdir: tuple[Path, str], pki: dict[str, object]) -> Iterator[ServeProcess]:
    cwd, _ = workdir
    server: Issued = pki["server"]  # type: ignore[assignment]
    ca: CertificateAuthority = pki["ca"]  # type: ignore[assignment]
    tls = ["--tls-cert", str(server.cert), "--tls-key", str(server.key)]
    tls += ["--tls-client-ca", str(ca.cert)]
    with ServeProcess(cwd, [*_db_args(cwd), *tls]) as srv:
        yield srv


def test_tls_serves_clients_that_trust_the_ca(
    tls_server: ServeProcess, pki: dict[str, object], workdir: tuple[Path, str]
) -> None:
    ca: CertificateAuthority = pki["ca"]  # type: ignore[assignment]
    assert '(TLS)"' in tls_server.log()
    with tls_channel(tls_server.address, ca) as channel:
        assert serving(channel)
        c = Client(channel, workdir[1], "acme")
        assert c.models.ListModels(pb.ListModelsRequest()).total_size == 0


def test_tls_refuses_plaintext_and_untrusted_clients(
    tls_server: ServeProcess, pki: dict[str, object]
) -> None:
    rogue: CertificateAuthority = pki["rogue"]  # type: ignore[assignment]
    with grpc.insecure_channel(tls_server.address) as plain:
        assert not serving(plain)
    with tls_channel(tls_server.address, rogue) as wrong_ca:
        assert not serving(wrong_ca)  # the server's certificate is not from this CA


def test_mutual_tls_needs_a_client_certificate_from_the_client_ca(
    mtls_server: ServeProcess, pki: dict[str, object], workdir: tuple[Path, str]
) -> None:
    ca: CertificateAuthority = pki["ca"]  # type: ignore[assignment]
    client: Issued = pki["client"]  # type: ignore[assignment]
    rogue_client: Issued = pki["rogue_client"]  # type: ignore[assignment]
    assert '(mutual TLS)"' in mtls_server.log()
    with tls_channel(mtls_server.address, ca, client) as channel:
        assert serving(channel)
        c = Client(channel, workdir[1], "acme")
        assert c.models.ListModels(pb.ListModelsRequest()).total_size == 0
    with tls_channel(mtls_server.address, ca) as no_cert:
        assert not serving(no_cert)
    with tls_channel(mtls_server.address, ca, rogue_client) as wrong_cert:
        assert not serving(wrong_cert)
    with grpc.insecure_channel(mtls_server.address) as plain:
        assert not serving(plain)


def test_plaintext_is_refused_on_a_non_loopback_address(workdir: tuple[Path, str]) -> None:
    cwd, _ = workdir
    srv = ServeProcess(cwd, _db_args(cwd), host="0.0.0.0", wait_ready=False).start()
    try:
        assert srv.wait_exit(60) == 2
        assert "refusing to serve plaintext on non-loopback address 0.0.0.0:" in srv.log()
        assert "--insecure" in srv.log()
    finally:
        srv.stop()


def test_insecure_allows_plaintext_on_a_non_loopback_address(workdir: tuple[Path, str]) -> None:
    cwd, _ = workdir
    with ServeProcess(cwd, [*_db_args(cwd), "--insecure"], host="0.0.0.0") as srv:
        assert '(plaintext)"' in srv.log()
        with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
            assert serving(channel)


def test_tls_on_a_non_loopback_address_needs_no_insecure_flag(
    workdir: tuple[Path, str], pki: dict[str, object]
) -> None:
    cwd, _ = workdir
    server: Issued = pki["server"]  # type: ignore[assignment]
    ca: CertificateAuthority = pki["ca"]  # type: ignore[assignment]
    tls = ["--tls-cert", str(server.cert), "--tls-key", str(server.key)]
    with (
        ServeProcess(cwd, [*_db_args(cwd), *tls], host="0.0.0.0") as srv,
        tls_channel(f"127.0.0.1:{srv.port}", ca) as channel,
    ):
        assert serving(channel)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tls-cert", "{server_cert}"], "--tls-cert and --tls-key go together"),
        (["--tls-key", "{server_key}"], "--tls-cert and --tls-key go together"),
        (["--tls-client-ca", "{ca}"], "--tls-client-ca (mutual TLS) needs --tls-cert"),
        (["--tls-cert", "/nonexistent.crt", "--tls-key", "{server_key}"], "no such file"),
    ],
)
def test_incomplete_tls_flags_fail_at_start(
    workdir: tuple[Path, str], pki: dict[str, object], flags: list[str], message: str
) -> None:
    cwd, _ = workdir
    server: Issued = pki["server"]  # type: ignore[assignment]
    ca: CertificateAuthority = pki["ca"]  # type: ignore[assignment]
    paths = {"server_cert": server.cert, "server_key": server.key, "ca": ca.cert}
    args = [f.format(**paths) for f in flags]
    srv = ServeProcess(cwd, [*_db_args(cwd), *args], wait_ready=False).start()
    try:
        assert srv.wait_exit(60) == 2
        assert message in srv.log()
    finally:
        srv.stop()
