"""Server-side conversion over real gRPC, on both backends: every target for an MLP, a CNN
and a transformer block, recorded figures against a fresh onnxruntime run, event order,
re-attaching, cancellation, a sandbox killed mid-job, UploadAndConvert, and bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest

from conversion.samples import InputSpec, generated_feeds
from modelregistry.v1 import catalog_pb2
from modelregistry.v1 import conversion_pb2 as cpb
from modelregistry.v1 import version_service_pb2 as vpb
from support import onnx_models as models
from support.registry import Client, RunningServer
from support.status import expect_error
from support.uploads import (
    F,
    MiB,
    assert_only_resumable_leftovers,
    chunks,
    download,
    objects,
    row_counts,
    sha,
    upload,
)

ALL = ["onnx", "onnx-fp16", "onnx-int8", "ort"]
Job = cpb.ConversionJob
TIMEOUT = 180


def stored(
    c: Client, data: bytes, model: str = "m", version: str = "1", name: str = "model.onnx"
) -> catalog_pb2.ArtifactPackage:
    return upload(c, f"models/{model}/versions/{version}", F(name, data)).packages[0]


def spec(*targets: str, **kw: object) -> cpb.ConversionSpec:
    return cpb.ConversionSpec(targets=list(targets or ALL), **kw)  # type: ignore[arg-type]


def convert(c: Client, source: str, s: cpb.ConversionSpec) -> list[cpb.ConversionEvent]:
    return list(
        c.versions.ConvertArtifact(
            vpb.ConvertArtifactRequest(source=source, spec=s), timeout=TIMEOUT
        )
    )


def get_job(c: Client, name: str) -> cpb.ConversionJob:
    return c.versions.GetConversionJob(vpb.GetConversionJobRequest(name=name))


def wait_final(c: Client, name: str, timeout: float = TIMEOUT) -> cpb.ConversionJob:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = get_job(c, name)
        if job.state in (Job.STATE_SUCCEEDED, Job.STATE_FAILED, Job.STATE_CANCELLED):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {name} did not finish")


def check_order(events: list[cpb.ConversionEvent], targets: list[str]) -> None:
    """Sequences 1..n without gaps; queued, running, fetch, pipeline stages in order, the
    store stages, and exactly one final event, last."""
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert len({e.job for e in events}) == 1
    stages = [e.stage for e in events]
    distinct = [s for i, s in enumerate(stages) if i == 0 or stages[i - 1] != s]
    expected = ["queued", "running", "fetch", "load", "check", "reference"]
    for t in targets:
        expected += [f"convert:{t}", f"verify:{t}"]
    expected += [f"store:{t}" for t in targets] + ["done"]
    assert distinct == expected
    fractions = [e.fraction_done for e in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert events[0].state == Job.STATE_QUEUED
    assert all(e.state == Job.STATE_RUNNING for e in events[1:-1])
    assert events[-1].state == Job.STATE_SUCCEEDED
    times = [e.event_time.ToDatetime() for e in events]
    assert times == sorted(times)


def run_fresh(source: bytes, output: bytes, feeds: list[dict[str, np.ndarray]]) -> float:
    """Max abs error of `output` against `source`, recomputed here with onnxruntime."""
    src = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    out = ort.InferenceSession(output, providers=["CPUExecutionProvider"])
    names = [o.name for o in src.get_outputs()]
    worst = 0.0
    for feed in feeds:
        for a, b in zip(src.run(names, feed), out.run(names, feed), strict=True):
            worst = max(worst, float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()))
    return worst


def feeds_for(model: bytes) -> list[dict[str, np.ndarray]]:
    s = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return generated_feeds([InputSpec(i.name, i.type, tuple(i.shape)) for i in s.get_inputs()])


BUILDERS = {"mlp": models.mlp, "cnn": models.cnn, "transformer": models.transformer_block}


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_every_target_over_grpc(client: Client, kind: str) -> None:
    data = BUILDERS[kind]()
    source = stored(client, data, model=kind)
    events = convert(client, source.resources[0].name, spec())
    check_order(events, ALL)
    job = get_job(client, events[-1].job)
    assert job.state == Job.STATE_SUCCEEDED and job.attempts == 1 and not job.error
    assert job.source_resource == source.resources[0].name
    assert job.model_version == f"models/{kind}/versions/1"
    assert list(job.spec.targets) == ALL
    assert [r.target for r in job.results] == ALL
    feeds = feeds_for(data)
    for r in job.results:
        assert r.succeeded, r.error
        p = r.package
        assert p.source == "conversion"
        assert p.format == r.target
        assert p.name.startswith(source.name.rsplit("/packages/", 1)[0] + "/packages/")
        metrics = dict(p.metrics)
        for key in ("size_bytes", "max_abs_error", "mean_cosine_similarity", "median_latency_ms"):
            assert metrics[key] == pytest.approx(getattr(r, key)), key
        weights = p.resources[0]
        assert weights.kind == "weights" and weights.stored
        resource, blob, _ = download(client, weights.name)
        assert len(blob) == r.size_bytes == resource.size_bytes
        assert sha(blob) == resource.sha256
        # the recorded error is what a fresh onnxruntime run of the stored bytes shows
        if r.target != "onnx-fp16":
            assert run_fresh(data, blob, feeds) == pytest.approx(
                r.max_abs_error, rel=1e-3, abs=1e-6
            )
        else:
            assert run_fresh(data, blob, feeds) == pytest.approx(
                r.max_abs_error, rel=1e-2, abs=1e-5
            )
        assert 0.99 < r.mean_cosine_similarity <= 1.0
        assert r.median_latency_ms > 0
    ort_pkg = job.results[3].package
    assert [x.kind for x in ort_pkg.resources] == ["weights", "operators-config"]
    _, config, _ = download(client, ort_pkg.resources[1].name)
    assert b"ai.onnx;" in config
    assert {x.quantization for x in (job.results[1].package, job.results[2].package)} == {
        "fp16",
        "int8",
    }
    assert ort_pkg.runtime == "onnxruntime-mobile"


def test_calibration_inputs_static_int8(client: Client) -> None:
    source = stored(client, models.mlp())
    calib = models.mlp_calibration(3)
    events = convert(
        client, source.name, spec("onnx-int8", calibration_inputs=calib)
    )  # a package name: its primary weights are converted
    job = get_job(client, events[-1].job)
    (r,) = job.results
    assert r.succeeded, r.error
    assert r.package.metrics["method"] == "static-qdq"
    assert r.package.metrics["sample_inputs"] == "calibration"
    _, blob, _ = download(client, r.package.resources[0].name)
    feeds = [dict(np.load(__import__("io").BytesIO(b))) for b in calib]
    assert run_fresh(models.mlp(), blob, feeds) == pytest.approx(
        r.max_abs_error, rel=1e-3, abs=1e-6
    )
    assert not job.spec.calibration_inputs  # not echoed back


def test_above_tolerance_is_failed_and_not_stored(registry: RunningServer, client: Client) -> None:
    source = stored(client, models.mlp())
    before = row_counts(registry, client)["packages"]
    events = convert(client, source.resources[0].name, spec("onnx", "onnx-int8", tolerance=1e-5))
    assert events[-1].stage == "failed" and events[-1].state == Job.STATE_FAILED
    job = get_job(client, events[-1].job)
    assert job.state == Job.STATE_FAILED
    ok, bad = job.results
    assert ok.succeeded and ok.package.uid
    assert not bad.succeeded and not bad.package.uid
    assert "exceeds the tolerance 1e-05" in bad.error and bad.max_abs_error > 1e-5
    assert "onnx-int8" in job.error
    assert row_counts(registry, client)["packages"] == before + 1
    # in object storage: the source and the one stored output, nothing of the failed one
    assert len(objects(registry, client)) == 2


def test_reattach_after_disconnect_and_replay(client: Client) -> None:
    source = stored(client, models.transformer_block())
    call = client.versions.ConvertArtifact(
        vpb.ConvertArtifactRequest(source=source.resources[0].name, spec=spec()), timeout=TIMEOUT
    )
    first = [next(call) for _ in range(3)]
    call.cancel()  # the client goes away; the job does not
    name = first[0].job
    rest = list(
        client.versions.WatchConversion(
            vpb.WatchConversionRequest(name=name, after_sequence=3), timeout=TIMEOUT
        )
    )
    assert rest[0].sequence == 4
    check_order(first + rest, ALL)
    replay = list(client.versions.WatchConversion(vpb.WatchConversionRequest(name=name)))
    assert replay == first + rest
    tail = list(
        client.versions.WatchConversion(
            vpb.WatchConversionRequest(name=name, after_sequence=len(replay))
        )
    )
    assert tail == []
    assert get_job(client, name).state == Job.STATE_SUCCEEDED


def events_until(call: Iterator[cpb.ConversionEvent], stage: str) -> list[cpb.ConversionEvent]:
    seen = []
    for e in call:
        seen.append(e)
        if e.stage == stage:
            return seen
    raise AssertionError(f"no {stage} event in {[e.stage for e in seen]}")


def test_cancel_running_job(registry: RunningServer, client: Client) -> None:
    source = stored(client, models.slow_cnn())
    before = row_counts(registry, client)["packages"]
    call = client.versions.ConvertArtifact(
        vpb.ConvertArtifactRequest(source=source.resources[0].name, spec=spec()), timeout=TIMEOUT
    )
    seen = events_until(call, "reference")
    cancelled = client.versions.CancelConversion(vpb.CancelConversionRequest(name=seen[0].job))
    assert cancelled.state in (Job.STATE_RUNNING, Job.STATE_CANCELLED)
    rest = list(call)
    assert rest[-1].stage == "cancelled" and rest[-1].state == Job.STATE_CANCELLED
    job = get_job(client, seen[0].job)
    assert job.state == Job.STATE_CANCELLED and "cancelled" in job.error
    assert all(not r.succeeded for r in job.results)
    assert row_counts(registry, client)["packages"] == before
    assert len(objects(registry, client)) == 1  # the source only
    # cancelling again is a no-op; the job's events end with the cancellation
    again = client.versions.CancelConversion(vpb.CancelConversionRequest(name=seen[0].job))
    assert again.state == Job.STATE_CANCELLED


def test_cancel_finished_job_is_failed_precondition(client: Client) -> None:
    source = stored(client, models.mlp())
    events = convert(client, source.resources[0].name, spec("onnx"))
    err = expect_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        client.versions.CancelConversion,
        vpb.CancelConversionRequest(name=events[-1].job),
    )
    assert err.reason == "JOB_FINISHED"


def sandbox_pid(event: cpb.ConversionEvent) -> int:
    assert event.stage == "running"
    return int(event.message.rsplit("sandbox pid ", 1)[1].rstrip(")"))


def test_killed_sandbox_is_retried(client: Client) -> None:
    data = models.slow_cnn()
    source = stored(client, data)
    call = client.versions.ConvertArtifact(
        vpb.ConvertArtifactRequest(source=source.resources[0].name, spec=spec("onnx")),
        timeout=TIMEOUT,
    )
    seen = events_until(call, "reference")
    running = [e for e in seen if e.stage == "running"]
    os.kill(sandbox_pid(running[0]), signal.SIGKILL)
    rest = list(call)
    stages = [e.stage for e in rest]
    retry = next(e for e in rest if e.stage == "queued")
    assert "killed by SIGKILL" in retry.message and "attempt 2 of 3" in retry.message
    assert retry.state == Job.STATE_QUEUED
    assert stages.count("running") == 1 and stages[-1] == "done"
    job = get_job(client, seen[0].job)
    assert job.state == Job.STATE_SUCCEEDED and job.attempts == 2
    assert job.results[0].succeeded


def test_upload_and_convert(registry: RunningServer, client: Client) -> None:
    data = models.transformer_block()

    def requests() -> Iterator[vpb.UploadAndConvertRequest]:
        yield vpb.UploadAndConvertRequest(
            header=vpb.UploadAndConvertHeader(
                parent="models/blocky/versions/1.0",
                file=vpb.FileSpec(file_name="block.onnx", size_bytes=len(data), sha256=sha(data)),
                spec=spec("onnx", "ort"),
            )
        )
        for piece in chunks(data, 64 * 1024):
            yield vpb.UploadAndConvertRequest(chunk=piece)

    out = list(client.versions.UploadAndConvert(requests(), timeout=TIMEOUT))
    kinds = [m.WhichOneof("payload") for m in out]
    first_event = kinds.index("conversion_event")
    assert set(kinds[: kinds.index("source_package")]) == {"upload_progress"}
    assert kinds.index("source_package") < first_event
    assert kinds[-1] == "job"
    assert out[kinds.index("source_package") - 1].upload_progress.committed_bytes == len(data)
    source = out[kinds.index("source_package")].source_package
    assert source.format == "onnx" and source.source == "upload"
    events = [m.conversion_event for m in out if m.HasField("conversion_event")]
    check_order(events, ["onnx", "ort"])
    job = out[-1].job
    assert job.state == Job.STATE_SUCCEEDED
    assert job.source_resource == source.resources[0].name
    assert job.model_version == "models/blocky/versions/1.0"
    assert [r.package.format for r in job.results] == ["onnx", "ort"]
    assert row_counts(registry, client)["packages"] == 3


def test_upload_and_convert_resumes_a_cut_stream(registry: RunningServer, client: Client) -> None:
    """A stream that ends before the declared size keeps its upload, as UploadArtifacts
    does (UPLOAD_INCOMPLETE with the committed size; nothing recorded, nothing converted):
    resumed by its upload id from QueryUploadStatus, the upload is recorded and converted."""
    data = models.wide_mlp(1100, 2)  # over one 8 MiB part
    assert len(data) > 9 * MiB
    upload_id = str(uuid.uuid4())

    def requests(offset: int, end: int) -> Iterator[vpb.UploadAndConvertRequest]:
        yield vpb.UploadAndConvertRequest(
            header=vpb.UploadAndConvertHeader(
                parent="models/wide/versions/1",
                file=vpb.FileSpec(file_name="wide.onnx", size_bytes=len(data), sha256=sha(data)),
                spec=spec("onnx"),
                upload_id=upload_id,
                write_offset=offset,
            )
        )
        for piece in chunks(data[offset:end]):
            yield vpb.UploadAndConvertRequest(chunk=piece)

    cut = client.versions.UploadAndConvert(requests(0, 9 * MiB), timeout=TIMEOUT)
    err = expect_error(grpc.StatusCode.INVALID_ARGUMENT, list, cut)
    assert err.reason == "UPLOAD_INCOMPLETE"
    assert err.metadata["upload_id"] == upload_id
    assert err.metadata["committed_size"] == str(8 * MiB)
    status = client.versions.QueryUploadStatus(vpb.QueryUploadStatusRequest(upload_id=upload_id))
    assert status.committed_size == 8 * MiB and not status.complete
    assert_only_resumable_leftovers(registry, client)

    out = list(
        client.versions.UploadAndConvert(
            requests(status.committed_size, len(data)), timeout=TIMEOUT
        )
    )
    kinds = [m.WhichOneof("payload") for m in out]
    source = out[kinds.index("source_package")].source_package
    assert (source.resources[0].size_bytes, source.resources[0].sha256) == (len(data), sha(data))
    job = out[-1].job
    assert job.state == Job.STATE_SUCCEEDED, job.error
    assert job.source_resource == source.resources[0].name
    assert download(client, source.resources[0].name)[1] == data
    assert client.versions.QueryUploadStatus(
        vpb.QueryUploadStatusRequest(upload_id=upload_id)
    ).complete


def test_upload_and_convert_plan_gate_and_bad_header(registry: RunningServer) -> None:
    free = registry.new_org(plan="free")
    data = models.mlp()

    def stream(parent: str, name: str = "m.onnx", targets: tuple[str, ...] = ("onnx",)):  # type: ignore[no-untyped-def]
        yield vpb.UploadAndConvertRequest(
            header=vpb.UploadAndConvertHeader(
                parent=parent,
                file=vpb.FileSpec(file_name=name, size_bytes=len(data)),
                spec=spec(*targets),
            )
        )
        yield vpb.UploadAndConvertRequest(chunk=data)

    def run(*a, **kw):  # type: ignore[no-untyped-def]
        return list(free.versions.UploadAndConvert(stream(*a, **kw), timeout=60))

    err = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT, run, "models/m/versions/1", "m.tflite", ("nope",)
    )
    assert set(err.field_violations) == {"header.file.file_name", "header.spec.targets[0]"}
    err = expect_error(grpc.StatusCode.FAILED_PRECONDITION, run, "models/m/versions/1", "m.pt")
    assert err.reason == "TORCH_UNAVAILABLE" and "torch" in err.message
    # the plan gate: a free org has 20 versions a month
    for i in range(20):
        upload(free, f"models/m/versions/{i}", F("w.bin", b"x", fmt="bin"))
    err = expect_error(grpc.StatusCode.RESOURCE_EXHAUSTED, run, "models/m/versions/new")
    counts = row_counts(registry, free)
    assert counts["versions"] == 20


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (models.not_onnx(), "not a valid ONNX model"),
        (models.truncated(), "not a valid ONNX model"),
        (models.path_traversal(), "outside the model's own directory"),
        (models.absurd_tensor(), "memory budget"),
        (models.future_opset(), "opset 99"),
    ],
    ids=["not-onnx", "truncated", "traversal", "absurd", "opset"],
)
def test_bad_model_fails_the_job_readably(
    registry: RunningServer, client: Client, data: bytes, expected: str
) -> None:
    source = stored(client, data)
    before = row_counts(registry, client)
    events = convert(client, source.resources[0].name, spec())
    assert events[-1].stage == "failed" and events[-1].state == Job.STATE_FAILED
    assert expected in events[-1].message
    job = get_job(client, events[-1].job)
    assert job.state == Job.STATE_FAILED and job.attempts == 1  # not retried: permanent
    assert expected in job.error
    assert all(not r.succeeded and expected in r.error for r in job.results)
    assert row_counts(registry, client) == before
    # the server is fine
    assert (
        convert(client, stored(client, models.mlp(), version="2").name, spec("onnx"))[-1].stage
        == "done"
    )


def test_request_errors(client: Client, other_client: Client) -> None:
    source = stored(client, models.mlp())
    res = source.resources[0].name
    invalid = grpc.StatusCode.INVALID_ARGUMENT

    def call(source_name: str, s: cpb.ConversionSpec):  # type: ignore[no-untyped-def]
        return convert(client, source_name, s)

    err = expect_error(invalid, call, res, cpb.ConversionSpec())
    assert "spec.targets" in err.field_violations
    err = expect_error(invalid, call, res, spec("onnx", "tflite", "onnx", tolerance=-1))
    assert set(err.field_violations) == {"spec.targets[1]", "spec.targets[2]", "spec.tolerance"}
    err = expect_error(invalid, call, res, spec("onnx", tolerance=float("nan")))
    assert "spec.tolerance" in err.field_violations
    err = expect_error(invalid, call, res, spec("onnx", tolerance=2e6))
    err = expect_error(invalid, call, res, spec("onnx", calibration_inputs=[b"x"] * 17))
    assert "spec.calibration_inputs" in err.field_violations
    err = expect_error(invalid, call, res, spec("onnx", calibration_inputs=[b"not a zip"]))
    assert "spec.calibration_inputs[0]" in err.field_violations
    err = expect_error(invalid, call, "models/m", spec("onnx"))
    assert "source" in err.field_violations
    # another org's resource does not exist for this one
    expect_error(grpc.StatusCode.NOT_FOUND, convert, other_client, res, spec("onnx"))
    bogus = res.rsplit("/", 1)[0] + "/00000000-0000-4000-8000-000000000000"
    expect_error(grpc.StatusCode.NOT_FOUND, call, bogus, spec("onnx"))
    # a source that cannot reach the targets
    tfl = upload(client, "models/m/versions/1", F("m.tflite", b"TFL3" * 10, fmt="tflite"))
    err = expect_error(
        grpc.StatusCode.FAILED_PRECONDITION, call, tfl.packages[0].resources[0].name, spec("onnx")
    )
    assert err.reason == "SOURCE_NOT_CONVERTIBLE"
    pt = upload(client, "models/m/versions/1", F("m.pt", b"PK\x03\x04" * 10, fmt="pt"))
    err = expect_error(
        grpc.StatusCode.FAILED_PRECONDITION, call, pt.packages[0].resources[0].name, spec("onnx")
    )
    assert err.reason == "TORCH_UNAVAILABLE" and "torch" in err.message
    # no job was created by any of these
    events = convert(client, res, spec("onnx"))
    assert events[0].sequence == 1 and events[-1].stage == "done"
    # jobs are per org
    name = events[-1].job
    expect_error(grpc.StatusCode.NOT_FOUND, get_job, other_client, name)
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        lambda: list(other_client.versions.WatchConversion(vpb.WatchConversionRequest(name=name))),
    )
    expect_error(invalid, get_job, client, "conversionJobs/nope")
    expect_error(
        invalid,
        lambda: list(
            client.versions.WatchConversion(
                vpb.WatchConversionRequest(name=name, after_sequence=-1)
            )
        ),
    )


def test_converted_package_blocks_nothing_and_published_version_refuses(client: Client) -> None:
    source = stored(client, models.mlp())
    convert(client, source.resources[0].name, spec("onnx"))
    client.versions.PublishVersion(vpb.PublishVersionRequest(name="models/m/versions/1"))
    err = expect_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        convert,
        client,
        source.resources[0].name,
        spec("ort"),
    )
    assert err.reason == "VERSION_NOT_DRAFT"


# --- queued jobs, standalone workers, limits: servers of their own ------------------------


@pytest.fixture(scope="module")
def workerless(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """A server that runs no conversion workers (jobs wait for `modelregistry worker`)."""
    from support.fixtures import backend_urls

    backend = request.param
    db, store = backend_urls(request, backend, tmp_path_factory.mktemp(f"workerless-{backend}"))
    server = RunningServer(db, store, conversion_workers=0)
    try:
        yield server
    finally:
        server.stop()


def start_worker(server: RunningServer, tmp: Path, **env: str) -> subprocess.Popen[bytes]:
    log = open(tmp / f"worker-{time.monotonic_ns()}.log", "wb")  # noqa: SIM115
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "server.cli",
            "worker",
            "--database-url",
            server.database_url,
            "--object-store",
            server.object_store,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={
            **os.environ,
            "MODELREGISTRY_CONVERSION_STALE_AFTER": "3",
            **{f"MODELREGISTRY_{k}": v for k, v in env.items()},
        },
    )


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except Exception:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("workerless", ["embedded", "production"], indirect=True)
def test_queued_cancel_and_standalone_workers(workerless: RunningServer, tmp_path: Path) -> None:
    c = workerless.new_org()
    source = stored(c, models.mlp()).resources[0].name
    # with no worker anywhere, jobs wait
    calls = [
        c.versions.ConvertArtifact(
            vpb.ConvertArtifactRequest(source=source, spec=spec("onnx")), timeout=TIMEOUT
        )
        for _ in range(4)
    ]
    firsts = [next(call) for call in calls]
    assert all(e.stage == "queued" and e.state == Job.STATE_QUEUED for e in firsts)
    cancelled = c.versions.CancelConversion(vpb.CancelConversionRequest(name=firsts[0].job))
    assert cancelled.state == Job.STATE_CANCELLED and cancelled.attempts == 0
    assert [e.stage for e in calls[0]] == ["cancelled"]
    # two standalone workers share the rest; each job is claimed exactly once
    workers = [start_worker(workerless, tmp_path) for _ in range(2)]
    try:
        for call, first in zip(calls[1:], firsts[1:], strict=True):
            rest = list(call)
            stages = [first.stage] + [e.stage for e in rest]
            assert stages.count("running") == 1 and stages[-1] == "done", stages
            job = get_job(c, first.job)
            assert job.state == Job.STATE_SUCCEEDED and job.attempts == 1
    finally:
        for w in workers:
            stop_worker(w)


@pytest.mark.parametrize("workerless", ["embedded", "production"], indirect=True)
def test_dead_worker_process_is_reaped_and_retried(
    workerless: RunningServer, tmp_path: Path
) -> None:
    c = workerless.new_org()
    source = stored(c, models.slow_cnn()).resources[0].name
    first = start_worker(workerless, tmp_path)
    try:
        call = c.versions.ConvertArtifact(
            vpb.ConvertArtifactRequest(source=source, spec=spec("onnx")), timeout=TIMEOUT
        )
        seen = events_until(call, "reference")
        first.kill()  # the whole worker process, sandbox and all
        first.wait()
        name = seen[0].job
        assert get_job(c, name).state == Job.STATE_RUNNING  # until the heartbeat goes stale
        second = start_worker(workerless, tmp_path)
        try:
            job = wait_final(c, name)
        finally:
            stop_worker(second)
        assert job.state == Job.STATE_SUCCEEDED, job.error
        assert job.attempts == 2
        events = list(c.versions.WatchConversion(vpb.WatchConversionRequest(name=name)))
        retry = next(e for e in events if e.stage == "queued" and e.sequence > 1)
        assert "stopped sending heartbeats" in retry.message
    finally:
        stop_worker(first)


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """Embedded backend, small sandbox limits."""
    tmp = tmp_path_factory.mktemp("limited")
    server = RunningServer(
        f"sqlite:///{tmp / 'r.db'}",
        str(tmp / "blobs"),
        conversion_cpu_seconds=2,
        conversion_memory_mb=1024,
    )
    try:
        yield server
    finally:
        server.stop()


def test_cpu_limit_fails_without_retry(limited: RunningServer) -> None:
    c = limited.new_org()
    source = stored(c, models.slow_cnn(size=384)).resources[0].name
    events = convert(c, source, spec())
    assert events[-1].stage == "failed"
    job = get_job(c, events[-1].job)
    assert "CPU-time limit of 2 s" in job.error and job.attempts == 1


def test_memory_hungry_model_fails_and_server_stays_up(limited: RunningServer) -> None:
    c = limited.new_org()
    # ~2 MB on disk, a 1 GiB activation at run time
    source = stored(c, models.slow_cnn(size=2048, channels=64, layers=2)).resources[0].name
    events = convert(c, source, spec("onnx"))
    job = get_job(c, events[-1].job)
    assert job.state == Job.STATE_FAILED
    assert "ran out of memory (limit 1024 MiB)" in job.error, job.error
    assert convert(c, stored(c, models.mlp(), version="2").name, spec("onnx"))[-1].stage == "done"


def test_concurrent_watchers_see_the_same_events(client: Client) -> None:
    source = stored(client, models.cnn())
    call = client.versions.ConvertArtifact(
        vpb.ConvertArtifactRequest(source=source.resources[0].name, spec=spec()), timeout=TIMEOUT
    )
    name = next(call).job
    seen: dict[int, list[cpb.ConversionEvent]] = {}

    def watch(i: int) -> None:
        seen[i] = list(client.versions.WatchConversion(vpb.WatchConversionRequest(name=name)))

    threads = [threading.Thread(target=watch, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    rest = list(call)
    for t in threads:
        t.join(TIMEOUT)
    assert seen[0] == seen[1] == seen[2]
    assert [e.sequence for e in seen[0]] == list(range(1, len(rest) + 2))


def test_version_deleted_while_converting_is_not_resurrected(
    registry: RunningServer, client: Client
) -> None:
    source = stored(client, models.slow_cnn(), model="gone")
    call = client.versions.ConvertArtifact(
        vpb.ConvertArtifactRequest(source=source.resources[0].name, spec=spec("onnx")),
        timeout=TIMEOUT,
    )
    seen = events_until(call, "reference")
    client.versions.DeleteVersion(vpb.DeleteVersionRequest(name="models/gone/versions/1"))
    rest = list(call)
    assert rest[-1].stage == "failed"
    job = get_job(client, seen[0].job)
    assert job.state == Job.STATE_FAILED
    assert "deleted" in job.error, job.error
    assert row_counts(registry, client)["versions"] == 0
    # the source's bytes wait for the garbage collector; the output was removed
    assert len(objects(registry, client)) == 1
