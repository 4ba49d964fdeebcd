"""grpc_health_probe, as Kubernetes liveness/readiness probes run it, against a real
`modelregistry serve`: it passes while the server serves and fails while its database is
down (and passes again when the database is back). The probe is built pinned by
.ci/tools.sh (`go install github.com/grpc-ecosystem/grpc-health-probe`, binary
`grpc-health-probe` in the tools directory)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.certs import CertificateAuthority
from support.serve import ServeProcess
from support.services import PostgresServer, tools_bin_dir

# grpc_health_probe's exit codes (its README).
OK, CONNECTION_FAILURE, RPC_FAILURE, UNHEALTHY = 0, 2, 3, 4


def probe(address: str, *args: str) -> tuple[int, str]:
    exe = tools_bin_dir() / "grpc-health-probe"
    if not exe.exists():
        pytest.fail(f"{exe} not found: run `make tools`")
    done = subprocess.run(
        [str(exe), f"-addr={address}", "-connect-timeout=3s", "-rpc-timeout=3s", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return done.returncode, done.stdout + done.stderr


def probe_until(address: str, want: int, *args: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        code, out = probe(address, *args)
        if code == want:
            return out
        assert time.monotonic() < deadline, f"probe exit {code}, wanted {want}: {out}"
        time.sleep(0.3)


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL of this test's own, so stopping it disturbs no other test."""
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()


def test_probe_passes_while_serving_and_fails_while_the_database_is_down(
    own_postgres: PostgresServer, tmp_path: Path
) -> None:
    extra = ["--migrate", "--database-url", own_postgres.new_database()]
    extra += ["--object-store", str(tmp_path / "blobs")]
    with ServeProcess(tmp_path, extra) as server:
        code, out = probe(server.address)
        assert code == OK and "status: SERVING" in out, out
        code, out = probe(server.address, "-service=modelregistry.v1.ModelService")
        assert code == OK, out
        own_postgres.stop_temporarily()
        out = probe_until(server.address, UNHEALTHY)
        assert "NOT_SERVING" in out
        own_postgres.start()
        probe_until(server.address, OK)
    # Nothing listens any more: a connection failure, not a hang.
    code, _ = probe(server.address)
    assert code == CONNECTION_FAILURE


def test_probe_with_tls_and_mutual_tls(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path / "pki")
    cert = ca.issue("registry", server=True)
    client = ca.issue("kubelet", client=True)
    base = ["--migrate", "--database-url", f"sqlite:///{tmp_path / 'r.db'}"]
    base += ["--object-store", str(tmp_path / "blobs")]
    base += ["--tls-cert", str(cert.cert), "--tls-key", str(cert.key)]
    with ServeProcess(tmp_path, [*base, "--tls-client-ca", str(ca.cert)]) as server:
        tls = ["-tls", f"-tls-ca-cert={ca.cert}"]
        mtls = [*tls, f"-tls-client-cert={client.cert}", f"-tls-client-key={client.key}"]
        code, out = probe(server.address, *mtls)
        assert code == OK and "status: SERVING" in out, out
        code, out = probe(server.address, *tls)  # no client certificate
        assert code != OK, out
        code, out = probe(server.address)  # plaintext
        assert code != OK, out
