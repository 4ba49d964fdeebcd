"""Presigned-URL RPCs (VersionService.GetUploadUrl/ConfirmUpload and
ModelService.GetArtifactDownloadUrl): protobuf <-> domain.presigned."""

from __future__ import annotations

import contextlib

from domain import presigned
from domain.errors import DomainError
from modelregistry.v1 import catalog_pb2, model_service_pb2
from modelregistry.v1 import version_service_pb2 as pb
from server import convert
from server.context import principal
from server.runtime import Runtime
from storage.objectstore import ObjectStore


def file_input(spec: pb.FileSpec) -> presigned.FileInput:
    return presigned.FileInput(spec.file_name, spec.kind, spec.size_bytes, spec.sha256)


def _delete_quietly(store: ObjectStore, key: str) -> None:
    # Best effort: what stays behind is unreferenced, so the garbage collector takes it.
    with contextlib.suppress(Exception):
        store.delete(key)


class PresignedRpcs:
    def __init__(self, runtime: Runtime, max_file_bytes: int) -> None:
        self.rt = runtime
        self.max_file_bytes = max_file_bytes

    async def get_upload_url(self, request: pb.GetUploadUrlRequest) -> pb.GetUploadUrlResponse:
        org = principal().require_org()
        store = self.rt.store
        presigned.require_presign(store, "GetUploadUrl")
        got = await self.rt.write(
            presigned.begin_upload,
            org,
            request.parent,
            request.format,
            file_input(request.file),
            store.presign_put,
            max_file_bytes=self.max_file_bytes,
        )
        return pb.GetUploadUrlResponse(
            url=got.url,
            storage_key=got.storage_key,
            expire_time=convert.timestamp(got.expire_time),
        )

    async def confirm_upload(self, request: pb.ConfirmUploadRequest) -> pb.ConfirmUploadResponse:
        org = principal().require_org()
        store = self.rt.store
        presigned.require_presign(store, "ConfirmUpload")
        c = presigned.parse_confirm(
            org,
            request.parent,
            request.storage_key,
            request.format,
            request.quantization,
            request.runtime,
            file_input(request.file),
            max_file_bytes=self.max_file_bytes,
        )
        plan = await self.rt.read(presigned.check_confirm, org, c)
        verified = await self.rt.transfer(presigned.verify_object, store, c, plan)
        try:
            rec = await self.rt.write(
                presigned.record_confirmed, org, c, plan, verified, store.stat
            )
        except DomainError:
            # Refused before commit (plan gate, target deleted, lost race): the copy is
            # referenced by nothing.
            await self.rt.call(_delete_quietly, store, verified.final_key)
            raise
        # The PUT object: its session is committed, nothing references it any more.
        await self.rt.call(_delete_quietly, store, c.storage_key)
        package = rec.packages[0]
        return pb.ConfirmUploadResponse(
            package=convert.package(package, rec.variant_uid),
            catalog_version=convert.catalog_version(
                rec.catalog_version, rec.total_size_bytes, rec.model_version_name
            ),
            model_created=rec.model_created,
        )

    async def get_artifact_download_url(
        self, request: model_service_pb2.GetArtifactDownloadUrlRequest
    ) -> model_service_pb2.GetArtifactDownloadUrlResponse:
        org = principal().require_org()
        got = await self.rt.read(
            presigned.download_url, org, request.name, request.package, self.rt.store
        )
        resource: catalog_pb2.ArtifactResource = convert.resource(
            got.resource, got.variant_uid, got.catalog_version_uid
        )
        return model_service_pb2.GetArtifactDownloadUrlResponse(
            url=got.url, expire_time=convert.timestamp(got.expire_time), resource=resource
        )
