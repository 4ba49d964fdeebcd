"""`modelregistry serve --metrics-listen` serves Prometheus text at /metrics: scraped here."""

from __future__ import annotations

import queue
import re
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelregistry.v1 import model_service_pb2 as pb
from modelregistry.v1 import models_pb2, telemetry_service_pb2
from support import uploads
from support.registry import Client
from support.serve import ServeProcess, run_cli
from support.services import free_port
from support.status import expect_error

CREATE = "/modelregistry.v1.ModelService/CreateModel"
GET = "/modelregistry.v1.ModelService/GetModel"
REPORT = "/modelregistry.v1.TelemetryService/ReportInferenceSessions"


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics as {(name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServeProcess, int, Client]]:
    cwd: Path = tmp_path_factory.mktemp("metrics")
    db = f"sqlite:///{cwd / 'r.db'}"
    run_cli(cwd, "migrate", "--database-url", db)
    run_cli(cwd, "orgs", "create", "acme", "--database-url", db)
    token = run_cli(cwd, "keys", "create", "--org", "acme", "--database-url", db).strip()
    metrics_port = free_port()
    extra = ["--database-url", db, "--object-store", str(cwd / "blobs")]
    extra += ["--metrics-listen", f"127.0.0.1:{metrics_port}"]
    with ServeProcess(cwd, extra) as server:
        channel = grpc.insecure_channel(server.address)
        try:
            yield server, metrics_port, Client(channel, token, "acme")
        finally:
            channel.close()


def test_requests_by_method_and_code_and_latency(
    served: tuple[ServeProcess, int, Client],
) -> None:
    _, port, c = served
    before = scrape(port)
    c.models.CreateModel(
        pb.CreateModelRequest(model_id="m1", model=models_pb2.Model(framework="onnx"))
    )
    for _ in range(2):
        expect_error(
            grpc.StatusCode.NOT_FOUND, c.models.GetModel, pb.GetModelRequest(name="models/nope")
        )
    after = scrape(port)
    name = "modelregistry_rpc_requests_total"

    def delta(metric: str, **labels: str) -> float:
        return value(after, metric, **labels) - value(before, metric, **labels)

    assert delta(name, method=CREATE, code="OK") == 1
    assert delta(name, method=GET, code="NOT_FOUND") == 2
    assert delta(name, method=GET, code="OK") == 0
    hist = "modelregistry_rpc_duration_seconds"
    assert delta(f"{hist}_count", method=GET) == 2
    assert delta(f"{hist}_bucket", method=GET, le="+Inf") == 2
    assert value(after, f"{hist}_sum", method=GET) > 0


def test_in_flight_streams_rise_and_fall(served: tuple[ServeProcess, int, Client]) -> None:
    _, port, c = served
    events: queue.Queue[telemetry_service_pb2.ReportInferenceSessionsRequest | None] = queue.Queue()

    def requests() -> Iterator[telemetry_service_pb2.ReportInferenceSessionsRequest]:
        while (item := events.get()) is not None:
            yield item

    # A client stream the client keeps open: the server sits in it until we close it.
    call = c.telemetry.ReportInferenceSessions.future(requests())
    try:
        deadline = time.monotonic() + 15
        while value(scrape(port), "modelregistry_streams_in_flight", method=REPORT) != 1:
            assert time.monotonic() < deadline, "the open stream never showed up as in flight"
            time.sleep(0.1)
    finally:
        events.put(None)
    call.result(timeout=15)
    deadline = time.monotonic() + 15
    while value(scrape(port), "modelregistry_streams_in_flight", method=REPORT) != 0:
        assert time.monotonic() < deadline, "the closed stream is still counted"
        time.sleep(0.1)


def test_bytes_uploaded_and_downloaded(served: tuple[ServeProcess, int, Client]) -> None:
    _, port, c = served
    data = uploads.random_bytes(3 * uploads.MiB + 123)
    before = scrape(port)
    done = uploads.upload(c, "models/bytes/versions/1", uploads.F("w.onnx", data))
    resource = done.packages[0].resources[0].name
    _, got, _ = uploads.download(c, resource)
    _, part, _ = uploads.download(c, resource, offset=1000, limit=5000)
    assert got == data and part == data[1000:6000]
    after = scrape(port)
    up = "modelregistry_bytes_uploaded_total"
    down = "modelregistry_bytes_downloaded_total"
    assert value(after, up) - value(before, up) == len(data)
    assert value(after, down) - value(before, down) == len(data) + 5000


def test_bytes_pool_and_conversion_jobs_are_exported(
    served: tuple[ServeProcess, int, Client],
) -> None:
    server, port, _ = served
    samples = scrape(port)
    names = {name for name, _ in samples}
    assert {"modelregistry_bytes_uploaded_total", "modelregistry_bytes_downloaded_total"} <= names
    # The server's SQLAlchemy pool (32 worker threads -> pool_size 32 on SQLite files).
    assert value(samples, "modelregistry_db_pool_size") == 32
    assert value(samples, "modelregistry_db_pool_checked_out") >= 0
    assert "modelregistry_db_pool_overflow" in names
    # Conversion jobs by state, counted in the database at scrape time.
    assert value(samples, "modelregistry_conversion_jobs_scrape_ok") == 1
    states = {
        dict(labels)["state"] for name, labels in samples if name == "modelregistry_conversion_jobs"
    }
    assert states >= {"queued", "running", "succeeded", "failed", "cancelled"}
    _insert_conversion_jobs(server, ["queued", "queued", "failed"])
    samples = scrape(port)
    assert value(samples, "modelregistry_conversion_jobs", state="queued") == 2
    assert value(samples, "modelregistry_conversion_jobs", state="failed") == 1
    assert value(samples, "modelregistry_conversion_jobs", state="running") == 0


def _insert_conversion_jobs(server: ServeProcess, states: list[str]) -> None:
    from storage.db import create_engine_for, session_factory, transaction
    from storage.orm import ConversionJob
    from storage.repos import tenancy

    url = next(a for a in server.extra if a.startswith("sqlite:///"))
    engine = create_engine_for(url, pool_size=1)
    try:
        with transaction(session_factory(engine)) as s:
            org = tenancy.org_by_name(s, "acme")
            assert org is not None
            for state in states:
                s.add(ConversionJob(org_id=org.id, model_id="m1", version="1", state=state))
    finally:
        engine.dispose()


def test_metrics_endpoint_closes_with_the_server(tmp_path: Path) -> None:
    metrics_port = free_port()
    extra = ["--migrate", "--database-url", f"sqlite:///{tmp_path / 'r.db'}"]
    extra += [
        "--object-store",
        str(tmp_path / "blobs"),
        "--metrics-listen",
        f"127.0.0.1:{metrics_port}",
    ]
    server = ServeProcess(tmp_path, extra).start()
    try:
        assert "modelregistry_db_pool_size" in scrape(metrics_port).__repr__()
        assert re.search(r"metrics on http://127\.0\.0\.1:\d+/metrics", server.log())
    finally:
        server.stop()
    assert server.proc is not None and server.proc.returncode == 0
    with pytest.raises(OSError):
        scrape(metrics_port)


def test_bad_metrics_listen_fails_at_start(tmp_path: Path) -> None:
    extra = ["--migrate", "--database-url", f"sqlite:///{tmp_path / 'r.db'}"]
    extra += ["--object-store", str(tmp_path / "blobs"), "--metrics-listen", "nonsense"]
    server = ServeProcess(tmp_path, extra, wait_ready=False).start()
    try:
        assert server.wait_exit(60) != 0
        assert "host:port" in server.log()
    finally:
        server.stop()


def test_manifest_builds_by_source_and_trigger(served: tuple[ServeProcess, int, Client]) -> None:
    """Builds are timed by what started them: on this fresh database the server's first
    look at the blessed catalog builds the anonymous caller's manifest in the background
    (nothing stored: ManifestBuilds.watch_catalog); an org's first GetManifest is built
    once, from that manifest (a patch: the org has no rows of its own), then answered from
    memory; a write to another org gets that org's manifest built without any request."""
    server, port, _ = served
    hist = "modelregistry_manifest_build_seconds_count"

    def after_writes() -> float:
        scraped = scrape(port)
        return sum(value(scraped, hist, source=s, trigger="write") for s in ("index", "patch"))

    looks = "modelregistry_manifest_background_looks_total"

    def wait_for(what: str, done: Callable[[dict[Any, float]], bool]) -> None:
        deadline = time.monotonic() + 30
        while not done(scrape(port)):
            assert time.monotonic() < deadline, what
            time.sleep(0.2)

    wait_for(
        "the blessed manifest was not built at start",
        lambda m: (
            value(m, hist, source="index", trigger="write") >= 1
            and value(m, looks, outcome="built") >= 1
        ),
    )
    with grpc.insecure_channel(server.address) as channel:
        reader = new_org_client(server, channel)
        before = scrape(port)
        for _ in range(2):
            reader.models.GetManifest(pb.GetManifestRequest())
        after = scrape(port)

        def built_by_requests(source: str) -> float:
            return value(after, hist, source=source, trigger="request") - value(
                before, hist, source=source, trigger="request"
            )

        assert built_by_requests("patch") == 1 and built_by_requests("index") == 0
        writer = new_org_client(server, channel)
        built, looked = after_writes(), scrape(port)
        for model_id in ("manifest-metrics", "manifest-metrics-2"):
            writer.models.CreateModel(
                pb.CreateModelRequest(model_id=model_id, model=models_pb2.Model(framework="onnx"))
            )
            if model_id == "manifest-metrics":  # nothing stored for the org: built
                wait_for("no build followed the write", lambda m: after_writes() > built)
                wait_for(
                    "the look was not counted",
                    lambda m: (
                        value(m, looks, outcome="built")
                        == value(looked, looks, outcome="built") + 1
                    ),
                )
        # one name changed since the stored build: left to the next request
        wait_for(
            "the second look was not counted",
            lambda m: value(m, looks, outcome="small") == value(looked, looks, outcome="small") + 1,
        )


def new_org_client(server: ServeProcess, channel: grpc.Channel) -> Client:
    """A new org with a key, made with the CLI (no write through the server)."""
    db = server.extra[server.extra.index("--database-url") + 1]
    name = f"org-{uuid.uuid4().hex[:8]}"
    run_cli(server.cwd, "orgs", "create", name, "--database-url", db)
    token = run_cli(server.cwd, "keys", "create", "--org", name, "--database-url", db).strip()
    return Client(channel, token, name)
