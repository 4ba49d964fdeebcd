"""The conversion RPCs of VersionService: ConvertArtifact, WatchConversion,
GetConversionJob, CancelConversion and the conversion half of UploadAndConvert.

A stream follows a job by polling its events in the database (cheap, indexed by job and
sequence), so it holds no state of its own: any server can serve any job, a client that
drops can re-attach anywhere with WatchConversion, and a disconnect never touches the job.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from conversion.sandbox import SandboxLimits
from conversion.spec import source_kind, torch_available
from domain import artifacts, conversions, names, uploads
from domain.conversion_worker import ConversionPool, WorkerConfig
from domain.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    PreconditionViolation,
    Violations,
)
from modelregistry.v1 import conversion_pb2
from modelregistry.v1 import version_service_pb2 as pb
from server import convert
from server.context import Ctx, principal
from server.runtime import Runtime
from server.settings import Settings, normalize_sqlite_url
from server.uploads import Uploads
from storage.db import create_engine_for, session_factory
from storage.objectstore import ObjectStore, open_store
from storage.orm import ConversionEvent

log = logging.getLogger("modelregistry.conversion")

# How often a stream looks for new events of a job that is still going.
POLL_INTERVAL_S = 0.2
UPLOAD_ID_HEADER = "x-upload-id"

_STATES = {
    "queued": conversion_pb2.ConversionJob.STATE_QUEUED,
    "running": conversion_pb2.ConversionJob.STATE_RUNNING,
    "succeeded": conversion_pb2.ConversionJob.STATE_SUCCEEDED,
    "failed": conversion_pb2.ConversionJob.STATE_FAILED,
    "cancelled": conversion_pb2.ConversionJob.STATE_CANCELLED,
}


class Notifier(Protocol):
    def notify(self) -> None: ...


class FileDeclParser(Protocol):
    def __call__(
        self, v: Violations, prefix: str, spec: pb.FileSpec, kind: str | None = None
    ) -> uploads.FileDecl | None: ...


def spec_fields(spec: conversion_pb2.ConversionSpec) -> conversions.SpecFields:
    return conversions.SpecFields(
        targets=tuple(spec.targets),
        tolerance=spec.tolerance,
        calibration_inputs=tuple(spec.calibration_inputs),
        fp16_keep_io_types_fp16=spec.fp16_keep_io_types_fp16,
    )


def job_pb(view: conversions.JobView) -> conversion_pb2.ConversionJob:
    job = view.job
    results = []
    for o in view.outcomes():
        found = view.packages.get(o.package_id or "")
        results.append(
            conversion_pb2.ConversionTargetResult(
                target=o.target,
                succeeded=o.succeeded,
                package=convert.package(found[0], found[1]) if found else None,
                error=o.error,
                size_bytes=o.size_bytes,
                max_abs_error=o.max_abs_error,
                mean_cosine_similarity=o.mean_cosine_similarity,
                median_latency_ms=o.median_latency_ms,
            )
        )
    return conversion_pb2.ConversionJob(
        name=view.name,
        state=_STATES[job.state],
        source_resource=view.source_name,
        model_version=view.model_version_name,
        # Calibration archives are not echoed back; they can be large.
        spec=conversion_pb2.ConversionSpec(
            targets=list(job.targets),
            tolerance=float(job.options.get("tolerance", 0.0)),
            fp16_keep_io_types_fp16=bool(job.options.get("fp16_keep_io_types_fp16")),
        ),
        attempts=job.attempts,
        error=job.error or "",
        results=results,
        create_time=convert.timestamp(job.created_at),
        update_time=convert.timestamp(job.updated_at),
    )


def event_pb(e: ConversionEvent) -> conversion_pb2.ConversionEvent:
    return conversion_pb2.ConversionEvent(
        job=names.conversion_job_name(e.job_id),
        sequence=e.seq,
        stage=e.stage,
        fraction_done=e.fraction,
        message=e.message,
        event_time=convert.timestamp(e.created_at),
        state=_STATES[conversions.event_state(e.stage)],
    )


class ConversionRpcs:
    """The handlers; VersionService delegates its conversion methods here."""

    def __init__(self, runtime: Runtime, pool: Notifier | None = None) -> None:
        self.rt = runtime
        self.pool = pool

    async def submit(self, org: str, source: str, spec: conversions.SpecFields) -> str:
        """Validate, stage calibration inputs, create the job; returns its id."""
        conversions.check_spec(spec)
        await self.rt.read(conversions.resolve_source, org, source, spec)
        job_id = conversions.new_job_id()
        keys = await self.rt.call(
            conversions.stage_calibration, self.rt.store, job_id, spec.calibration_inputs
        )
        try:
            await self.rt.write(conversions.create_job, org, job_id, source, spec, keys)
        except BaseException:
            await self.rt.call(conversions.delete_objects, self.rt.store, keys)
            raise
        if self.pool is not None:
            self.pool.notify()
        return job_id

    async def follow(
        self, org: str, job_id: str, after_seq: int
    ) -> AsyncIterator[conversion_pb2.ConversionEvent]:
        """Events after `after_seq`, then live ones, until the job's final event."""
        last = after_seq
        while True:
            page = await self.rt.read(conversions.events_after, org, job_id, last)
            for e in page.events:
                last = e.seq
                yield event_pb(e)
                if conversions.event_state(e.stage) in conversions.TERMINAL:
                    return
            if not page.events:
                if page.state in conversions.TERMINAL:
                    return
                await asyncio.sleep(POLL_INTERVAL_S)

    async def convert_artifact(
        self, request: pb.ConvertArtifactRequest, context: Ctx
    ) -> AsyncIterator[conversion_pb2.ConversionEvent]:
        org = principal().require_org()
        job_id = await self.submit(org, request.source, spec_fields(request.spec))
        async for event in self.follow(org, job_id, 0):
            yield event

    async def watch_conversion(
        self, request: pb.WatchConversionRequest, context: Ctx
    ) -> AsyncIterator[conversion_pb2.ConversionEvent]:
        org = principal().require_org()
        job_id = names.parse_conversion_job_name(request.name)
        async for event in self.follow(org, job_id, request.after_sequence):
            yield event

    async def get_conversion_job(
        self, request: pb.GetConversionJobRequest, context: Ctx
    ) -> conversion_pb2.ConversionJob:
        org = principal().require_org()
        job_id = names.parse_conversion_job_name(request.name)
        return job_pb(await self.rt.read(conversions.get_job, org, job_id))

    async def cancel_conversion(
        self, request: pb.CancelConversionRequest, context: Ctx
    ) -> conversion_pb2.ConversionJob:
        org = principal().require_org()
        job_id = names.parse_conversion_job_name(request.name)
        outcome = await self.rt.write(conversions.cancel_job, org, job_id)
        if outcome.garbage:
            await self.rt.call(conversions.delete_objects, self.rt.store, outcome.garbage)
        return job_pb(outcome.view)

    async def final_job(self, org: str, job_id: str) -> conversion_pb2.ConversionJob:
        return job_pb(await self.rt.read(conversions.get_job, org, job_id))

    async def upload_and_convert(
        self,
        ups: Uploads,
        file_decl: FileDeclParser,
        request_iterator: AsyncIterator[pb.UploadAndConvertRequest],
        context: Ctx,
    ) -> AsyncIterator[pb.UploadAndConvertResponse]:
        """The file streams in through the shared upload path (plan gate, resumable
        sessions, size and sha256 checks, record_packages); then the conversion runs as
        with ConvertArtifact. Upload progress, the source package, the job's events and
        finally the job go back on the same stream."""
        org = principal().require_org()
        stream = aiter(request_iterator)
        first = await anext(stream, None)
        if first is None or first.WhichOneof("payload") != "header":
            raise InvalidArgument(
                "the first message must be `header` (version, file and conversion spec)",
                [FieldViolation("header", "must be the first message")],
                reason="HEADER_MISSING",
            )
        h = first.header
        v = Violations()
        target = None
        try:
            target = artifacts.parse_target(h.parent, "header.parent")
        except InvalidArgument as exc:
            v.items.extend(exc.violations)
        decl = file_decl(v, "header.file", h.file)
        spec = spec_fields(h.spec)
        try:
            conversions.check_spec(spec, "header.spec.")
        except InvalidArgument as exc:
            v.items.extend(exc.violations)
        kind = source_kind(decl.file_name) if decl is not None else None
        if decl is not None and kind is None:
            v.add(
                "header.file.file_name",
                "must name an ONNX (.onnx) or TorchScript (.pt) model to convert",
            )
        if decl is not None and decl.kind != "weights":
            v.add("header.file.kind", "the file to convert must be `weights`")
        v.raise_if_any()
        assert decl is not None and target is not None
        if kind == "torchscript" and not torch_available():
            raise FailedPrecondition(
                "converting TorchScript (.pt) models needs the server's optional `torch` "
                "extra, which is not installed; export the model to ONNX and upload the "
                ".onnx file instead",
                [PreconditionViolation("TORCH_UNAVAILABLE", "header.file", "torch is missing")],
                reason="TORCH_UNAVAILABLE",
            )
        ups.check_declared_size(decl.size, "header.file.size_bytes")
        expect = await self.rt.read(artifacts.check_target, org, target)
        fmt = "onnx" if kind == "onnx" else "pt"
        fields = artifacts.PackageFields(fmt, "none", artifacts.FORMATS[fmt][1])
        total = decl.size or 0
        reported = -1
        async with ups.batch() as batch:
            writer = await batch.start(
                org,
                h.upload_id,
                h.write_offset,
                target,
                fmt,
                [decl],
                expect,
                field_prefix="header.",
                spec_field=lambda _i: "header.file",
            )
            await context.send_initial_metadata(((UPLOAD_ID_HEADER, writer.upload_id),))
            async for msg in stream:
                what = msg.WhichOneof("payload")
                if what == "chunk":
                    await writer.write(msg.chunk)
                    done = writer.committed_total()
                    if done != reported:
                        reported = done
                        yield pb.UploadAndConvertResponse(
                            upload_progress=pb.UploadProgress(
                                committed_bytes=done, total_bytes=total
                            )
                        )
                elif what == "header":
                    raise InvalidArgument(
                        "`header` may only be sent once, as the first message",
                        [FieldViolation("header", "repeated")],
                        reason="HEADER_REPEATED",
                    )
                else:
                    raise InvalidArgument("a message without payload", reason="EMPTY_MESSAGE")
            (stored,) = await writer.close()
            rec = await batch.record(org, target, [artifacts.NewPackage(fields, [stored])], expect)
        yield pb.UploadAndConvertResponse(
            upload_progress=pb.UploadProgress(committed_bytes=stored.size_bytes, total_bytes=total)
        )
        package = rec.packages[0]
        yield pb.UploadAndConvertResponse(source_package=convert.package(package, rec.variant_uid))
        source = names.resource_name(
            rec.variant_uid, package.catalog_version_id, package.id, package.resources[0].id
        )
        job_id = await self.submit(org, source, spec)
        async for event in self.follow(org, job_id, 0):
            yield pb.UploadAndConvertResponse(conversion_event=event)
        yield pb.UploadAndConvertResponse(job=await self.final_job(org, job_id))


def conversion_pool(
    settings: Settings,
    sessions: sessionmaker[Session],
    store: ObjectStore,
    workers: int | None = None,
) -> ConversionPool | None:
    """The conversion workers a process runs per its settings; None for zero workers."""
    size = settings.conversion_workers if workers is None else workers
    if size <= 0:
        return None
    config = WorkerConfig(
        limits=SandboxLimits(
            memory_mb=settings.conversion_memory_mb,
            cpu_seconds=settings.conversion_cpu_seconds,
            wall_seconds=settings.conversion_wall_seconds,
        ),
        stale_after=settings.conversion_stale_after,
    )
    return ConversionPool(sessions, store, config, size)


def run_workers(settings: Settings, workers: int) -> None:
    """`modelregistry worker`: conversion workers without a gRPC server, until SIGTERM or
    SIGINT. They share the database and object store with the servers."""
    import signal
    import threading

    engine = create_engine_for(
        normalize_sqlite_url(settings.database_url), pool_size=max(2, 2 * workers)
    )
    pool = conversion_pool(
        settings, session_factory(engine), open_store(settings.object_store), workers
    )
    if pool is None:
        raise SystemExit("modelregistry worker: --workers must be at least 1")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    pool.start()
    log.info("%d conversion workers running", workers)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        log.info("stopping conversion workers")
        pool.stop()
        engine.dispose()
