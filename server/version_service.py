"""VersionService: protobuf <-> domain."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

from google.protobuf import empty_pb2

from domain import artifacts, uploads, versions
from domain.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    PreconditionViolation,
    Violations,
)
from modelregistry.v1 import (
    catalog_pb2,
    conversion_pb2,
    models_pb2,
    version_service_pb2,
    version_service_pb2_grpc,
)
from server import convert
from server.context import Ctx, principal
from server.conversion_service import ConversionRpcs
from server.presigned import PresignedRpcs
from server.runtime import Runtime
from server.uploads import UploadBatch, UploadLimits, Uploads, UploadWriter
from storage.objectstore import ObjectNotFound
from storage.orm import utcnow

pb = version_service_pb2
DOWNLOAD_MESSAGE_BYTES = 1024 * 1024
UPLOAD_ID_HEADER = "x-upload-id"


def _empty_stream(what: str) -> InvalidArgument:
    return InvalidArgument(f"the stream is empty: send {what} first", reason="HEADER_MISSING")


def _file_decl(
    v: Violations, prefix: str, spec: pb.FileSpec, kind: str | None = None
) -> uploads.FileDecl | None:
    """A validated FileSpec (violations collected in `v`); None when unusable."""
    try:
        name = artifacts.sanitize_file_name(spec.file_name, f"{prefix}.file_name")
    except InvalidArgument as exc:
        v.items.extend(exc.violations)
        name = ""
    kind = artifacts.check_kind(v, f"{prefix}.kind", kind if kind is not None else spec.kind)
    if spec.size_bytes < 0:
        v.add(f"{prefix}.size_bytes", "must not be negative (0: not declared)")
    sha = artifacts.check_sha256(v, f"{prefix}.sha256", spec.sha256)
    if not name:
        return None
    return uploads.FileDecl(name, kind, spec.size_bytes or None, sha)


def _package_pb(rec: artifacts.Recorded, p: object) -> catalog_pb2.ArtifactPackage:
    return convert.package(p, rec.variant_uid)  # type: ignore[arg-type]


def _catalog_version_pb(rec: artifacts.Recorded) -> catalog_pb2.CatalogVersion:
    return convert.catalog_version(
        rec.catalog_version, rec.total_size_bytes, rec.model_version_name
    )


class VersionService(version_service_pb2_grpc.VersionServiceServicer):
    def __init__(self, runtime: Runtime, limits: UploadLimits | None = None) -> None:
        self.rt = runtime
        self.uploads = Uploads(runtime, limits)
        self.conversions = ConversionRpcs(runtime, runtime.conversions)
        self.presigned = PresignedRpcs(runtime, self.uploads.limits.max_file_bytes)

    # --- versions --------------------------------------------------------------------

    async def CreateVersion(
        self, request: pb.CreateVersionRequest, context: Ctx
    ) -> models_pb2.ModelVersion:
        org = principal().require_org()
        fields = versions.VersionFields(
            description=request.version.description, labels=dict(request.version.labels)
        )
        view = await self.rt.write(
            versions.create_version, org, request.parent, request.version_id, fields
        )
        return convert.model_version(view)

    async def ListVersions(
        self, request: pb.ListVersionsRequest, context: Ctx
    ) -> pb.ListVersionsResponse:
        org = principal().require_org()
        page = await self.rt.read(
            versions.list_versions, org, request.parent, request.page_size, request.page_token
        )
        return pb.ListVersionsResponse(
            versions=[convert.model_version(v) for v in page.versions],
            next_page_token=page.next_page_token,
        )

    async def GetVersion(
        self, request: pb.GetVersionRequest, context: Ctx
    ) -> models_pb2.ModelVersion:
        org = principal().require_org()
        return convert.model_version(await self.rt.read(versions.get_version, org, request.name))

    async def DeleteVersion(
        self, request: pb.DeleteVersionRequest, context: Ctx
    ) -> empty_pb2.Empty:
        org = principal().require_org()
        await self.rt.write(versions.delete_version, org, request.name, request.etag)
        return empty_pb2.Empty()

    async def PublishVersion(
        self, request: pb.PublishVersionRequest, context: Ctx
    ) -> models_pb2.ModelVersion:
        org = principal().require_org()
        store = self.rt.store

        def present(key: str, size: int) -> bool:
            info = store.stat(key)
            return info is not None and info.size == size

        view = await self.rt.write(versions.publish_version, org, request.name, present)
        return convert.model_version(view)

    async def GetUploadUrl(
        self, request: version_service_pb2.GetUploadUrlRequest, context: Ctx
    ) -> version_service_pb2.GetUploadUrlResponse:
        return await self.presigned.get_upload_url(request)

    async def ConfirmUpload(
        self, request: version_service_pb2.ConfirmUploadRequest, context: Ctx
    ) -> version_service_pb2.ConfirmUploadResponse:
        return await self.presigned.confirm_upload(request)

    async def UploadArtifacts(
        self, request_iterator: AsyncIterator[pb.UploadArtifactsRequest], context: Ctx
    ) -> pb.UploadArtifactsResponse:
        org = principal().require_org()
        stream = aiter(request_iterator)
        first = await anext(stream, None)
        if first is None:
            raise _empty_stream("a `target` message")
        if first.WhichOneof("payload") != "target":
            raise InvalidArgument(
                "the first message must be `target` (the version to upload to)",
                [FieldViolation("target", "must be the first message")],
                reason="HEADER_MISSING",
            )
        target = artifacts.parse_target(first.target.parent, "target.parent")
        expect = await self.rt.read(artifacts.check_target, org, target)
        done: list[tuple[UploadWriter, artifacts.PackageFields, artifacts.StoredFile]] = []
        current: tuple[UploadWriter, artifacts.PackageFields] | None = None
        async with self.uploads.batch() as batch:
            async for msg in stream:
                kind = msg.WhichOneof("payload")
                if kind == "chunk":
                    if current is None:
                        raise InvalidArgument(
                            "a chunk arrived before any `file` header",
                            [FieldViolation("file", "must precede the file's chunks")],
                            reason="HEADER_MISSING",
                        )
                    await current[0].write(msg.chunk)
                elif kind == "file":
                    if current is not None:
                        (stored,) = await current[0].close(at_eof=False)
                        done.append((current[0], current[1], stored))
                        current = None
                    current = await self._start_file(org, target, expect, msg.file, batch)
                    if len(batch.writers) == 1:
                        await context.send_initial_metadata(
                            ((UPLOAD_ID_HEADER, current[0].upload_id),)
                        )
                elif kind == "target":
                    raise InvalidArgument(
                        "`target` may only be sent once, as the first message",
                        [FieldViolation("target", "repeated")],
                        reason="HEADER_REPEATED",
                    )
                else:
                    raise InvalidArgument("a message without payload", reason="EMPTY_MESSAGE")
            if current is not None:
                (stored,) = await current[0].close()
                done.append((current[0], current[1], stored))
            if not done:
                raise InvalidArgument(
                    "the stream ended without any file: send a `file` header and its chunks",
                    [FieldViolation("file", "at least one file is required")],
                    reason="HEADER_MISSING",
                )
            rec = await batch.record(
                org, target, [artifacts.NewPackage(fields, [f]) for _w, fields, f in done], expect
            )
        return pb.UploadArtifactsResponse(
            packages=[_package_pb(rec, p) for p in rec.packages],
            catalog_version=_catalog_version_pb(rec),
            files=[
                pb.UploadedFile(
                    upload_id=w.upload_id,
                    file_name=f.file_name,
                    size_bytes=f.size_bytes,
                    sha256=f.sha256,
                )
                for w, _fields, f in done
            ],
            model_created=rec.model_created,
        )

    async def _start_file(
        self,
        org: str,
        target: artifacts.Target,
        expect: artifacts.TargetState,
        header: pb.UploadFileHeader,
        batch: UploadBatch,
    ) -> tuple[UploadWriter, artifacts.PackageFields]:
        v = Violations()
        decl = _file_decl(v, "file.file", header.file)
        fields = artifacts.check_package_fields(
            v, "file.", header.format, header.quantization, header.runtime
        )
        if header.upload_id and any(w.upload_id == header.upload_id for w in batch.writers):
            v.add("file.upload_id", "names an upload already sent in this stream")
        v.raise_if_any()
        assert decl is not None
        self.uploads.check_declared_size(decl.size, "file.file.size_bytes")
        writer = await batch.start(
            org,
            header.upload_id,
            header.write_offset,
            target,
            fields.format,
            [decl],
            expect,
            field_prefix="file.",
            spec_field=lambda _i: "file.file",
        )
        return writer, fields

    async def UploadBundle(
        self, request_iterator: AsyncIterator[pb.UploadBundleRequest], context: Ctx
    ) -> pb.UploadBundleResponse:
        org = principal().require_org()
        stream = aiter(request_iterator)
        first = await anext(stream, None)
        if first is None:
            raise _empty_stream("a `header` message")
        if first.WhichOneof("payload") != "header":
            raise InvalidArgument(
                "the first message must be the `header`",
                [FieldViolation("header", "must be the first message")],
                reason="HEADER_MISSING",
            )
        h = first.header
        target, fields, decls = self._bundle_header(h)
        expect = await self.rt.read(artifacts.check_target, org, target)
        async with self.uploads.batch() as batch:
            writer = await batch.start(
                org,
                h.upload_id,
                h.write_offset,
                target,
                fields.format,
                decls,
                expect,
                field_prefix="header.",
                spec_field=lambda i: "header.primary" if i == 0 else f"header.extras[{i - 1}]",
            )
            await context.send_initial_metadata(((UPLOAD_ID_HEADER, writer.upload_id),))
            async for msg in stream:
                kind = msg.WhichOneof("payload")
                if kind == "chunk":
                    await writer.write(msg.chunk)
                elif kind == "header":
                    raise InvalidArgument(
                        "`header` may only be sent once, as the first message",
                        [FieldViolation("header", "repeated")],
                        reason="HEADER_REPEATED",
                    )
                else:
                    raise InvalidArgument("a message without payload", reason="EMPTY_MESSAGE")
            files = await writer.close()
            rec = await batch.record(org, target, [artifacts.NewPackage(fields, files)], expect)
        return pb.UploadBundleResponse(
            package=_package_pb(rec, rec.packages[0]),
            catalog_version=_catalog_version_pb(rec),
            model_created=rec.model_created,
            upload_id=writer.upload_id,
        )

    def _bundle_header(
        self, h: pb.UploadBundleHeader
    ) -> tuple[artifacts.Target, artifacts.PackageFields, list[uploads.FileDecl]]:
        v = Violations()
        target: artifacts.Target | None = None
        try:
            target = artifacts.parse_target(h.parent, "header.parent")
        except InvalidArgument as exc:
            v.items.extend(exc.violations)
        fields = artifacts.check_package_fields(v, "header.", h.format, h.quantization, h.runtime)
        if len(h.extras) != len(h.extras_kind):
            v.add(
                "header.extras_kind",
                f"must have exactly one kind per extra: {len(h.extras)} extras, "
                f"{len(h.extras_kind)} kinds",
            )
        specs = [("header.primary", h.primary, h.primary.kind or "weights")]
        specs += [
            (
                f"header.extras[{i}]",
                e,
                (h.extras_kind[i] if i < len(h.extras_kind) else "") or e.kind or "sidecar",
            )
            for i, e in enumerate(h.extras)
        ]
        decls: list[uploads.FileDecl] = []
        for i, (prefix, spec, kind) in enumerate(specs):
            decl = _file_decl(v, prefix, spec, kind)
            if decl is None:
                continue
            if decl.size is None and i < len(specs) - 1:
                v.add(
                    f"{prefix}.size_bytes",
                    "is required for every file of a bundle but the last (the server splits "
                    "the concatenated chunks by it)",
                )
            if any(d.file_name == decl.file_name for d in decls):
                v.add(f"{prefix}.file_name", f"{decl.file_name!r} appears twice in the bundle")
            decls.append(decl)
        v.raise_if_any()
        for i, decl in enumerate(decls):
            self.uploads.check_declared_size(decl.size, f"{specs[i][0]}.size_bytes")
        assert target is not None  # else raise_if_any raised
        return target, fields, decls

    # --- conversion (server/conversion_service.py) --------------------------------------

    async def UploadAndConvert(
        self, request: AsyncIterator[pb.UploadAndConvertRequest], context: Ctx
    ) -> AsyncIterator[pb.UploadAndConvertResponse]:
        async for response in self.conversions.upload_and_convert(
            self.uploads, _file_decl, request, context
        ):
            yield response

    async def ConvertArtifact(
        self, request: pb.ConvertArtifactRequest, context: Ctx
    ) -> AsyncIterator[conversion_pb2.ConversionEvent]:
        async for event in self.conversions.convert_artifact(request, context):
            yield event

    async def WatchConversion(
        self, request: pb.WatchConversionRequest, context: Ctx
    ) -> AsyncIterator[conversion_pb2.ConversionEvent]:
        async for event in self.conversions.watch_conversion(request, context):
            yield event

    async def GetConversionJob(
        self, request: pb.GetConversionJobRequest, context: Ctx
    ) -> conversion_pb2.ConversionJob:
        return await self.conversions.get_conversion_job(request, context)

    async def CancelConversion(
        self, request: pb.CancelConversionRequest, context: Ctx
    ) -> conversion_pb2.ConversionJob:
        return await self.conversions.cancel_conversion(request, context)

    async def QueryUploadStatus(
        self, request: pb.QueryUploadStatusRequest, context: Ctx
    ) -> pb.QueryUploadStatusResponse:
        org = principal().require_org()
        upload_id = uploads.parse_upload_id(request.upload_id, "upload_id")
        # A stream that just dropped may still be landing its last part: report after it.
        await self.uploads.leases.settle(upload_id)
        state = await self.rt.read(uploads.get_status, org, upload_id)
        if state.state != "committed":
            uploads.check_open(state, utcnow())
        return pb.QueryUploadStatusResponse(
            committed_size=state.committed_bytes,
            complete=state.state == "committed",
            expire_time=convert.timestamp(state.expires_at),
        )

    async def DownloadArtifact(
        self, request: pb.DownloadArtifactRequest, context: Ctx
    ) -> AsyncIterator[pb.DownloadArtifactResponse]:
        org = principal().require_org()
        dl = await self.rt.read(
            artifacts.open_download, org, request.name, request.read_offset, request.read_limit
        )
        first = pb.DownloadArtifactResponse(
            resource=convert.resource(dl.resource, dl.variant_uid, dl.catalog_version_uid)
        )
        if dl.length == 0:
            yield first
            return
        try:
            chunks = await self.rt.transfer(self.rt.store.get, dl.storage_key, dl.offset, dl.length)
        except ObjectNotFound:
            raise _object_missing(request.name) from None
        sent = 0
        pending: pb.DownloadArtifactResponse | None = first
        try:
            while sent < dl.length:
                chunk = await self.rt.transfer(_next_chunk, chunks)
                if chunk is None:
                    break
                view = memoryview(chunk)
                for start in range(0, len(view), DOWNLOAD_MESSAGE_BYTES):
                    piece = bytes(view[start : start + DOWNLOAD_MESSAGE_BYTES])
                    sent += len(piece)
                    if pending is not None:
                        pending.data = piece
                        yield pending
                        pending = None
                    else:
                        yield pb.DownloadArtifactResponse(data=piece)
        finally:
            await self.rt.call(_close, chunks)
        if sent < dl.length:
            raise _object_missing(request.name, "is shorter than recorded")


def _next_chunk(chunks: Iterator[bytes]) -> bytes | None:
    return next(chunks, None)


def _close(chunks: Iterator[bytes]) -> None:
    close = getattr(chunks, "close", None)
    if close is not None:
        close()


def _object_missing(name: str, problem: str = "is missing") -> FailedPrecondition:
    return FailedPrecondition(
        f"the stored object of {name} {problem}; the artifact must be uploaded again",
        [PreconditionViolation("OBJECT_MISSING", name, f"object {problem}")],
        reason="OBJECT_MISSING",
    )
