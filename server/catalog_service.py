"""CatalogService: protobuf <-> domain."""

from __future__ import annotations

from domain.errors import Unimplemented
from modelregistry.v1 import catalog_pb2, catalog_service_pb2, catalog_service_pb2_grpc
from server.context import Ctx
from server.runtime import Runtime


class CatalogService(catalog_service_pb2_grpc.CatalogServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    async def CreateVariant(
        self, request: catalog_service_pb2.CreateVariantRequest, context: Ctx
    ) -> catalog_pb2.Variant:
        raise Unimplemented("CatalogService.CreateVariant is not implemented yet (issue #4)")

    async def GetVariant(
        self, request: catalog_service_pb2.GetVariantRequest, context: Ctx
    ) -> catalog_pb2.Variant:
        raise Unimplemented("CatalogService.GetVariant is not implemented yet (issue #4)")

    async def ListVariants(
        self, request: catalog_service_pb2.ListVariantsRequest, context: Ctx
    ) -> catalog_service_pb2.ListVariantsResponse:
        raise Unimplemented("CatalogService.ListVariants is not implemented yet (issue #4)")

    async def UpdateVariant(
        self, request: catalog_service_pb2.UpdateVariantRequest, context: Ctx
    ) -> catalog_pb2.Variant:
        raise Unimplemented("CatalogService.UpdateVariant is not implemented yet (issue #4)")

    async def ResolveVariant(
        self, request: catalog_service_pb2.ResolveVariantRequest, context: Ctx
    ) -> catalog_pb2.Variant:
        raise Unimplemented("CatalogService.ResolveVariant is not implemented yet (issue #4)")

    async def ListCatalogVersions(
        self, request: catalog_service_pb2.ListCatalogVersionsRequest, context: Ctx
    ) -> catalog_service_pb2.ListCatalogVersionsResponse:
        raise Unimplemented("CatalogService.ListCatalogVersions is not implemented yet (issue #4)")

    async def GetCatalogVersion(
        self, request: catalog_service_pb2.GetCatalogVersionRequest, context: Ctx
    ) -> catalog_pb2.CatalogVersion:
        raise Unimplemented("CatalogService.GetCatalogVersion is not implemented yet (issue #4)")

    async def DeprecateCatalogVersion(
        self, request: catalog_service_pb2.DeprecateCatalogVersionRequest, context: Ctx
    ) -> catalog_pb2.CatalogVersion:
        raise Unimplemented(
            "CatalogService.DeprecateCatalogVersion is not implemented yet (issue #4)"
        )

    async def GetCatalogVersionDownloadUrls(
        self, request: catalog_service_pb2.GetCatalogVersionDownloadUrlsRequest, context: Ctx
    ) -> catalog_service_pb2.GetCatalogVersionDownloadUrlsResponse:
        raise Unimplemented(
            "CatalogService.GetCatalogVersionDownloadUrls is not implemented yet (issue #4)"
        )

    async def ListCatalogVersionPackages(
        self, request: catalog_service_pb2.ListCatalogVersionPackagesRequest, context: Ctx
    ) -> catalog_service_pb2.ListCatalogVersionPackagesResponse:
        raise Unimplemented(
            "CatalogService.ListCatalogVersionPackages is not implemented yet (issue #4)"
        )
