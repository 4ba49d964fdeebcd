"""VersionService: protobuf <-> domain."""

from __future__ import annotations

from collections.abc import AsyncIterator

from google.protobuf import empty_pb2

from domain.errors import Unimplemented
from modelregistry.v1 import (
    conversion_pb2,
    models_pb2,
    version_service_pb2,
    version_service_pb2_grpc,
)
from server.context import Ctx
from server.runtime import Runtime


class VersionService(version_service_pb2_grpc.VersionServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    async def CreateVersion(
        self, request: version_service_pb2.CreateVersionRequest, context: Ctx
    ) -> models_pb2.ModelVersion:
        raise Unimplemented("VersionService.CreateVersion is not implemented yet (issue #3)")

    async def ListVersions(
        self, request: version_service_pb2.ListVersionsRequest, context: Ctx
    ) -> version_service_pb2.ListVersionsResponse:
        raise Unimplemented("VersionService.ListVersions is not implemented yet (issue #3)")

    async def GetVersion(
        self, request: version_service_pb2.GetVersionRequest, context: Ctx
    ) -> models_pb2.ModelVersion:
        raise Unimplemented("VersionService.GetVersion is not implemented yet (issue #3)")

    async def DeleteVersion(
        self, request: version_service_pb2.DeleteVersionRequest, context: Ctx
    ) -> empty_pb2.Empty:
        raise Unimplemented("VersionService.DeleteVersion is not implemented yet (issue #3)")

    async def PublishVersion(
        self, request: version_service_pb2.PublishVersionRequest, context: Ctx
    ) -> models_pb2.ModelVersion:
        raise Unimplemented("VersionService.PublishVersion is not implemented yet (issue #3)")

    async def GetUploadUrl(
        self, request: version_service_pb2.GetUploadUrlRequest, context: Ctx
    ) -> version_service_pb2.GetUploadUrlResponse:
        raise Unimplemented("VersionService.GetUploadUrl is not implemented yet (issue #3)")

    async def ConfirmUpload(
        self, request: version_service_pb2.ConfirmUploadRequest, context: Ctx
    ) -> version_service_pb2.ConfirmUploadResponse:
        raise Unimplemented("VersionService.ConfirmUpload is not implemented yet (issue #3)")

    async def UploadArtifacts(
        self, request: AsyncIterator[version_service_pb2.UploadArtifactsRequest], context: Ctx
    ) -> version_service_pb2.UploadArtifactsResponse:
        raise Unimplemented("VersionService.UploadArtifacts is not implemented yet (issue #3)")

    async def UploadBundle(
        self, request: AsyncIterator[version_service_pb2.UploadBundleRequest], context: Ctx
    ) -> version_service_pb2.UploadBundleResponse:
        raise Unimplemented("VersionService.UploadBundle is not implemented yet (issue #3)")

    async def UploadAndConvert(
        self, request: AsyncIterator[version_service_pb2.UploadAndConvertRequest], context: Ctx
    ) -> AsyncIterator[version_service_pb2.UploadAndConvertResponse]:
        raise Unimplemented("VersionService.UploadAndConvert is not implemented yet (issue #5)")
        yield  # an async generator, as the streaming base method is

    async def ConvertArtifact(
        self, request: version_service_pb2.ConvertArtifactRequest, context: Ctx
    ) -> AsyncIterator[conversion_pb2.ConversionEvent]:
        raise Unimplemented("VersionService.ConvertArtifact is not implemented yet (issue #5)")
        yield  # an async generator, as the streaming base method is

    async def WatchConversion(
        self, request: version_service_pb2.WatchConversionRequest, context: Ctx
    ) -> AsyncIterator[conversion_pb2.ConversionEvent]:
        raise Unimplemented("VersionService.WatchConversion is not implemented yet (issue #5)")
        yield  # an async generator, as the streaming base method is

    async def GetConversionJob(
        self, request: version_service_pb2.GetConversionJobRequest, context: Ctx
    ) -> conversion_pb2.ConversionJob:
        raise Unimplemented("VersionService.GetConversionJob is not implemented yet (issue #5)")

    async def CancelConversion(
        self, request: version_service_pb2.CancelConversionRequest, context: Ctx
    ) -> conversion_pb2.ConversionJob:
        raise Unimplemented("VersionService.CancelConversion is not implemented yet (issue #5)")

    async def QueryUploadStatus(
        self, request: version_service_pb2.QueryUploadStatusRequest, context: Ctx
    ) -> version_service_pb2.QueryUploadStatusResponse:
        raise Unimplemented("VersionService.QueryUploadStatus is not implemented yet (issue #3)")

    async def DownloadArtifact(
        self, request: version_service_pb2.DownloadArtifactRequest, context: Ctx
    ) -> AsyncIterator[version_service_pb2.DownloadArtifactResponse]:
        raise Unimplemented("VersionService.DownloadArtifact is not implemented yet (issue #3)")
        yield  # an async generator, as the streaming base method is
