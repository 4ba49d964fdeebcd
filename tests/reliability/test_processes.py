"""Real server processes on one PostgreSQL and one MinIO.

- SIGKILL mid-upload, then a restart: the committed parts survive, the client resumes
  from QueryUploadStatus and the artifact reads back byte for byte.
- SIGKILL mid-conversion, then a restart: the job is taken up again and finishes; no job
  stays running.
- Two replicas driven concurrently: a name created at once on both exists once (one
  caller wins, the others get ALREADY_EXISTS), concurrent publishes and deprecations end
  in one consistent state, concurrent uploads to one version all land, each conversion
  job runs once.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from reliability.test_faults import Held, retry, wait_committed

from domain import keys
from modelregistry.v1 import catalog_pb2, conversion_pb2, models_pb2
from modelregistry.v1 import catalog_service_pb2 as cpb
from modelregistry.v1 import model_service_pb2 as mpb
from modelregistry.v1 import version_service_pb2 as vpb
from storage.db import create_engine_for, session_factory, transaction
from storage.migrate import upgrade
from support import onnx_models
from support.invariants import audit
from support.registry import Client
from support.serve import ServeProcess
from support.status import rich
from support.uploads import F, MiB, download, random_bytes, sha, upload

OK = grpc.StatusCode.OK
PART = 8 * MiB
Job = conversion_pb2.ConversionJob


class Backends:
    def __init__(self, pg_server: Any, minio_server: Any) -> None:
        self.db = pg_server.new_database()
        self.store = minio_server.new_bucket()
        upgrade(self.db)

    def args(self) -> list[str]:
        return ["--database-url", self.db, "--object-store", self.store]

    def new_org(self, channel: grpc.Channel) -> Client:
        engine = create_engine_for(self.db, pool_size=1)
        name = f"org-{uuid.uuid4().hex[:10]}"
        try:
            with transaction(session_factory(engine)) as s:
                keys.create_org(s, name, "team")
                token = keys.create_key(s, name).token
        finally:
            engine.dispose()
        return Client(channel, token, name)

    def check(self) -> None:
        result = audit(self.db, self.store)
        assert result.ok(), result


@pytest.fixture
def backends(pg_server, minio_server) -> Backends:  # type: ignore[no-untyped-def]
    return Backends(pg_server, minio_server)


ENV = {"MODELREGISTRY_CONVERSION_STALE_AFTER": "3"}


def serve(tmp_path: Path, backends: Backends, port: int | None = None) -> ServeProcess:
    return ServeProcess(tmp_path, backends.args(), port=port, env=ENV).start()


def kill9(srv: ServeProcess) -> None:
    assert srv.proc is not None
    srv.proc.kill()
    srv.proc.wait(timeout=30)
    srv.stop()


def test_sigkill_mid_upload_then_restart_and_resume(tmp_path: Path, backends: Backends) -> None:
    srv = serve(tmp_path, backends)
    channel = grpc.insecure_channel(srv.address)
    c = backends.new_org(channel)
    data = random_bytes(2 * PART + 4321)
    f = F("model.onnx", data, upload_id=str(uuid.uuid4()))
    held = Held(c, f, first=PART + MiB)
    wait_committed(c, f.upload_id, PART)
    kill9(srv)
    code, _ = held.result()
    assert code == grpc.StatusCode.UNAVAILABLE, code
    channel.close()
    srv = serve(tmp_path, backends, port=srv.port)
    try:
        channel = grpc.insecure_channel(srv.address)
        c = Client(channel, c.key, c.org)
        code, status = retry(
            c.versions.QueryUploadStatus, vpb.QueryUploadStatusRequest(upload_id=f.upload_id)
        )
        assert code == OK, status
        assert status.committed_size >= PART and not status.complete
        resumed = F("model.onnx", data, upload_id=f.upload_id, write_offset=status.committed_size)
        r = upload(c, "models/m/versions/1", resumed).packages[0].resources[0]
        assert (r.size_bytes, r.sha256) == (len(data), sha(data))
        assert download(c, r.name)[1] == data
        channel.close()
    finally:
        srv.stop()
    backends.check()


def test_sigkill_mid_conversion_then_restart(tmp_path: Path, backends: Backends) -> None:
    srv = serve(tmp_path, backends)
    channel = grpc.insecure_channel(srv.address)
    c = backends.new_org(channel)
    source = upload(c, "models/m/versions/1", F("m.onnx", onnx_models.cnn()))
    call = c.versions.ConvertArtifact(
        vpb.ConvertArtifactRequest(
            source=source.packages[0].resources[0].name,
            spec=conversion_pb2.ConversionSpec(targets=["onnx", "onnx-fp16", "onnx-int8", "ort"]),
        ),
        timeout=180,
    )
    job = ""
    for event in call:
        job = event.job
        if event.stage not in ("queued",):
            break  # running: kill the server (and its worker) now
    kill9(srv)
    channel.close()
    srv = serve(tmp_path, backends, port=srv.port)
    try:
        channel = grpc.insecure_channel(srv.address)
        c = Client(channel, c.key, c.org)
        deadline = time.monotonic() + 180
        while True:
            code, got = retry(c.versions.GetConversionJob, vpb.GetConversionJobRequest(name=job))
            assert code == OK, got
            if got.state in (Job.STATE_SUCCEEDED, Job.STATE_FAILED, Job.STATE_CANCELLED):
                break
            assert time.monotonic() < deadline, f"job stuck in {Job.State.Name(got.state)}"
            time.sleep(0.5)
        assert got.state == Job.STATE_SUCCEEDED, got.error
        channel.close()
    finally:
        srv.stop()
    backends.check()


# --- replicas --------------------------------------------------------------------------


@pytest.fixture
def replicas(tmp_path: Path, backends: Backends) -> Iterator[list[ServeProcess]]:
    servers = [serve(tmp_path, backends) for _ in range(2)]
    try:
        yield servers
    finally:
        for s in servers:
            s.stop()


def clients_for(backends: Backends, replicas: list[ServeProcess]) -> list[Client]:
    first = backends.new_org(grpc.insecure_channel(replicas[0].address))
    return [first] + [
        Client(grpc.insecure_channel(r.address), first.key, first.org) for r in replicas[1:]
    ]


def race(calls: list[Callable[[], Any]]) -> list[tuple[grpc.StatusCode, Any]]:
    """Run the calls at once (released together); their (code, result or error)."""
    gate = threading.Barrier(len(calls))

    def run(fn: Callable[[], Any]) -> tuple[grpc.StatusCode, Any]:
        gate.wait()
        try:
            return OK, fn()
        except grpc.RpcError as err:
            return rich(err).code, err

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def test_replicas_keep_names_unique(backends: Backends, replicas: list[ServeProcess]) -> None:
    cs = clients_for(backends, replicas)
    for round_ in range(5):
        name = f"race-{round_}"
        req = mpb.CreateModelRequest(model_id=name, model=models_pb2.Model(framework="onnx"))
        codes = [
            code
            for code, _ in race([lambda c=c, req=req: c.models.CreateModel(req) for c in cs * 3])
        ]
        assert codes.count(OK) == 1, codes
        assert set(codes) <= {OK, grpc.StatusCode.ALREADY_EXISTS}, codes
        vreq = cpb.CreateVariantRequest(variant=catalog_pb2.Variant(model_id=f"v-{name}"))
        codes = [
            code
            for code, _ in race(
                [lambda c=c, vreq=vreq: c.catalog.CreateVariant(vreq) for c in cs * 3]
            )
        ]
        assert codes.count(OK) == 1, codes
        assert set(codes) <= {OK, grpc.StatusCode.ALREADY_EXISTS}, codes
    listed = cs[1].models.ListModels(mpb.ListModelsRequest(page_size=100))
    assert sorted(m.model_id for m in listed.models) == [f"race-{i}" for i in range(5)]


def test_replicas_publish_deprecate_and_upload_concurrently(
    backends: Backends, replicas: list[ServeProcess]
) -> None:
    cs = clients_for(backends, replicas)
    a, b = cs
    # concurrent uploads of different files to one new version, through both replicas
    files = [F(f"f{i}.onnx", random_bytes(64 * 1024 + i)) for i in range(6)]
    results = race(
        [lambda c=cs[i % 2], f=f: upload(c, "models/m/versions/1", f) for i, f in enumerate(files)]
    )
    assert all(code == OK for code, _ in results), results
    listed = a.models.ListModelArtifactPackages(
        mpb.ListModelArtifactPackagesRequest(name="models/m", page_size=100)
    )
    assert sorted(r.sha256 for p in listed.packages for r in p.resources) == sorted(
        sha(f.data) for f in files
    )
    assert (
        a.versions.ListVersions(vpb.ListVersionsRequest(parent="models/m")).versions[0].version_id
        == "1"
    )
    # publish at once on both: every answer says published, one publish time
    results = race(
        [
            lambda c=c: c.versions.PublishVersion(
                vpb.PublishVersionRequest(name="models/m/versions/1")
            )
            for c in cs * 3
        ]
    )
    oks = [r for code, r in results if code == OK]
    assert oks and all(
        code in (OK, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ABORTED)
        for code, _ in results
    ), results
    final = b.versions.GetVersion(vpb.GetVersionRequest(name="models/m/versions/1"))
    assert final.state == models_pb2.ModelVersion.STATE_PUBLISHED
    assert {r.publish_time.ToNanoseconds() for r in oks} == {final.publish_time.ToNanoseconds()}
    # deprecate its catalog version at once on both: one wins, the rest are refused
    cv = final.catalog_version
    results = race(
        [
            lambda c=c: c.catalog.DeprecateCatalogVersion(
                cpb.DeprecateCatalogVersionRequest(name=cv)
            )
            for c in cs * 3
        ]
    )
    codes = [code for code, _ in results]
    assert codes.count(OK) == 1, codes
    assert set(codes) <= {OK, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ABORTED}, codes
    got = a.catalog.GetCatalogVersion(cpb.GetCatalogVersionRequest(name=cv))
    assert got.state == catalog_pb2.CatalogVersion.STATE_DEPRECATED
    backends.check()


def test_replicas_run_each_conversion_job_once(
    backends: Backends, replicas: list[ServeProcess]
) -> None:
    cs = clients_for(backends, replicas)
    source = upload(cs[0], "models/m/versions/1", F("m.onnx", onnx_models.mlp()))
    res = source.packages[0].resources[0].name
    spec = conversion_pb2.ConversionSpec(targets=["onnx"])
    results = race(
        [
            lambda c=c: list(
                c.versions.ConvertArtifact(
                    vpb.ConvertArtifactRequest(source=res, spec=spec), timeout=180
                )
            )
            for c in cs * 2
        ]
    )
    for code, events in results:
        assert code == OK, events
        assert events[-1].state == Job.STATE_SUCCEEDED
        stages = [e.stage for e in events]
        assert stages.count("running") == 1 or stages.count("fetch") >= 1
        job = cs[1].versions.GetConversionJob(vpb.GetConversionJobRequest(name=events[-1].job))
        assert job.attempts == 1, job
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    backends.check()
