"""CatalogService: protobuf <-> domain.catalog."""

from __future__ import annotations

from domain import catalog, names
from domain.errors import InvalidArgument
from modelregistry.v1 import catalog_pb2, catalog_service_pb2_grpc
from modelregistry.v1 import catalog_service_pb2 as pb
from server import convert
from server.context import Ctx, principal
from server.runtime import Runtime
from storage.repos.catalog import VariantFilter

_SCOPES = {
    pb.VARIANT_SCOPE_UNSPECIFIED: "all",
    pb.VARIANT_SCOPE_BLESSED: "blessed",
    pb.VARIANT_SCOPE_ORG: "org",
    pb.VARIANT_SCOPE_RESOLVED: "resolved",
}


def _fields(v: catalog_pb2.Variant) -> catalog.VariantFields:
    return catalog.VariantFields(
        family=v.family,
        task_taxonomy=list(v.task_taxonomy),
        parameter_count=v.parameter_count,
        license=v.license,
        description=v.description,
    )


def _version(view: catalog.CatalogVersionView) -> catalog_pb2.CatalogVersion:
    return convert.catalog_version(view.version, view.total_size_bytes, view.model_version_name)


class CatalogService(catalog_service_pb2_grpc.CatalogServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    async def CreateVariant(
        self, request: pb.CreateVariantRequest, context: Ctx
    ) -> catalog_pb2.Variant:
        p = principal()
        org = p.require_org()
        variant = await self.rt.write(
            catalog.create_variant,
            org,
            request.variant.model_id,
            _fields(request.variant),
            blessed=request.blessed,
            admin=p.admin,
        )
        return convert.variant(variant)

    async def GetVariant(self, request: pb.GetVariantRequest, context: Ctx) -> catalog_pb2.Variant:
        org = principal().require_org()
        uid = catalog.parse_variant_name(request.name)
        return convert.variant(await self.rt.read(catalog.get_variant, org, uid))

    async def ListVariants(
        self, request: pb.ListVariantsRequest, context: Ctx
    ) -> pb.ListVariantsResponse:
        org = principal().require_org()
        scope = _SCOPES.get(request.scope)
        if scope is None:
            raise InvalidArgument.field("scope", f"unknown value {request.scope}")
        flt = VariantFilter(scope=scope, task=request.task, search=request.search)
        page = await self.rt.read(
            catalog.list_variants, org, flt, request.page_size, request.page_token
        )
        return pb.ListVariantsResponse(
            variants=[convert.variant(v) for v in page.variants],
            next_page_token=page.next_page_token,
        )

    async def UpdateVariant(
        self, request: pb.UpdateVariantRequest, context: Ctx
    ) -> catalog_pb2.Variant:
        p = principal()
        org = p.require_org()
        uid = catalog.parse_variant_name(request.variant.name, "variant.name")
        variant = await self.rt.write(
            catalog.update_variant,
            org,
            uid,
            _fields(request.variant),
            list(request.update_mask.paths),
            request.variant.etag,
            admin=p.admin,
        )
        return convert.variant(variant)

    async def ResolveVariant(
        self, request: pb.ResolveVariantRequest, context: Ctx
    ) -> catalog_pb2.Variant:
        org = principal().require_org()
        return convert.variant(await self.rt.read(catalog.resolve_variant, org, request.model_id))

    async def ListCatalogVersions(
        self, request: pb.ListCatalogVersionsRequest, context: Ctx
    ) -> pb.ListCatalogVersionsResponse:
        org = principal().require_org()
        uid = catalog.parse_variant_name(request.parent, "parent")
        page = await self.rt.read(
            catalog.list_versions, org, uid, request.page_size, request.page_token
        )
        return pb.ListCatalogVersionsResponse(
            versions=[_version(v) for v in page.versions], next_page_token=page.next_page_token
        )

    async def GetCatalogVersion(
        self, request: pb.GetCatalogVersionRequest, context: Ctx
    ) -> catalog_pb2.CatalogVersion:
        org = principal().require_org()
        ref = catalog.parse_version_name(request.name)
        return _version(await self.rt.read(catalog.get_version, org, ref))

    async def DeprecateCatalogVersion(
        self, request: pb.DeprecateCatalogVersionRequest, context: Ctx
    ) -> catalog_pb2.CatalogVersion:
        p = principal()
        org = p.require_org()
        ref = catalog.parse_version_name(request.name)
        return _version(await self.rt.write(catalog.deprecate_version, org, ref, admin=p.admin))

    async def GetCatalogVersionDownloadUrls(
        self, request: pb.GetCatalogVersionDownloadUrlsRequest, context: Ctx
    ) -> pb.GetCatalogVersionDownloadUrlsResponse:
        org = principal().require_org()
        ref = catalog.parse_version_name(request.name)
        urls = await self.rt.read(catalog.download_urls, org, ref, self.rt.store)
        return pb.GetCatalogVersionDownloadUrlsResponse(
            source="catalog",
            resources=[
                pb.ResourceDownloadUrl(
                    resource=convert.resource(u.resource, urls.variant_uid, urls.version_uid),
                    package=names.package_name(urls.variant_uid, urls.version_uid, u.package_uid),
                    url=u.url,
                )
                for u in urls.urls
            ],
            skipped_count=urls.skipped,
            expire_time=convert.timestamp(urls.expire_time),
        )

    async def ListCatalogVersionPackages(
        self, request: pb.ListCatalogVersionPackagesRequest, context: Ctx
    ) -> pb.ListCatalogVersionPackagesResponse:
        org = principal().require_org()
        ref = catalog.parse_version_name(request.parent, "parent")
        page = await self.rt.read(
            catalog.list_version_packages, org, ref, request.page_size, request.page_token
        )
        return pb.ListCatalogVersionPackagesResponse(
            packages=[convert.package(p, page.variant_uid) for p in page.packages],
            next_page_token=page.next_page_token,
        )
