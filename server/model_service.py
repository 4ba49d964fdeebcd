"""ModelService: protobuf <-> domain for the org's models."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import empty_pb2

from domain import (
    catalog,
    compatibility,
    manifest,
    models,
    names,
    optimization_plans,
    optimized_configs,
)
from domain.errors import InvalidArgument
from modelregistry.v1 import compatibility_pb2, manifest_pb2, model_service_pb2_grpc, models_pb2
from modelregistry.v1 import model_service_pb2 as pb
from server import convert, manifest_pb
from server.context import Ctx, principal
from server.manifest_builds import ManifestBuilds
from server.presigned import PresignedRpcs
from server.runtime import Runtime
from storage.repos.models import ModelFilter

_ORDERS = {
    pb.MODEL_ORDER_UNSPECIFIED: "create_time desc",
    pb.MODEL_ORDER_CREATE_TIME_DESC: "create_time desc",
    pb.MODEL_ORDER_CREATE_TIME_ASC: "create_time asc",
    pb.MODEL_ORDER_MODEL_ID_ASC: "model_id asc",
    pb.MODEL_ORDER_MODEL_ID_DESC: "model_id desc",
    pb.MODEL_ORDER_UPDATE_TIME_DESC: "update_time desc",
}


def _fields(m: models_pb2.Model) -> models.ModelFields:
    return models.ModelFields(
        framework=m.framework, description=m.description, tags=list(m.tags), enabled=m.enabled
    )


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, runtime: Runtime, manifest_warm_after: float = 0.0) -> None:
        self.rt = runtime
        self.presigned = PresignedRpcs(runtime, max_file_bytes=0)  # downloads only
        self.manifests = ManifestBuilds(runtime, manifest_warm_after)

    async def CreateModel(self, request: pb.CreateModelRequest, context: Ctx) -> models_pb2.Model:
        org = principal().require_org()
        m = request.model
        fields = models.ModelFields(
            framework=m.framework,
            description=m.description,
            tags=list(m.tags),
            enabled=not request.disabled,
        )
        view = await self.rt.write(models.create_model, org, request.model_id, fields)
        return convert.model(view)

    async def GetModel(self, request: pb.GetModelRequest, context: Ctx) -> models_pb2.Model:
        org = principal().require_org()
        model_id = names.parse_model_name(request.name)
        return convert.model(await self.rt.read(models.get_model_view, org, model_id))

    async def ListModels(
        self, request: pb.ListModelsRequest, context: Ctx
    ) -> pb.ListModelsResponse:
        org = principal().require_org()
        order = _ORDERS.get(request.order_by)
        if order is None:
            raise InvalidArgument.field("order_by", f"unknown value {request.order_by}")
        flt = ModelFilter(
            framework=request.framework,
            capability=request.capability,
            enabled=request.enabled if request.HasField("enabled") else None,
            tag=request.tag,
            search=request.search,
        )
        page = await self.rt.read(
            models.list_models, org, flt, order, request.page_size, request.page_token
        )
        return pb.ListModelsResponse(
            models=[convert.model(v) for v in page.models],
            next_page_token=page.next_page_token,
            total_size=page.total_size,
        )

    async def UpdateModel(self, request: pb.UpdateModelRequest, context: Ctx) -> models_pb2.Model:
        org = principal().require_org()
        model_id = names.parse_model_name(request.model.name, "model.name")
        view = await self.rt.write(
            models.update_model,
            org,
            model_id,
            _fields(request.model),
            list(request.update_mask.paths),
            request.model.etag,
        )
        return convert.model(view)

    async def DeleteModel(self, request: pb.DeleteModelRequest, context: Ctx) -> empty_pb2.Empty:
        org = principal().require_org()
        model_id = names.parse_model_name(request.name)
        await self.rt.write(models.delete_model, org, model_id, request.etag)
        return empty_pb2.Empty()

    async def ListModelFilterOptions(
        self, request: pb.ListModelFilterOptionsRequest, context: Ctx
    ) -> pb.ListModelFilterOptionsResponse:
        org = principal().require_org()
        options = await self.rt.read(models.filter_options, org)
        return pb.ListModelFilterOptionsResponse(
            frameworks=options.frameworks, capabilities=options.capabilities, tags=options.tags
        )

    async def ResolveModel(
        self, request: pb.ResolveModelRequest, context: Ctx
    ) -> manifest_pb2.ManifestEntry:
        org = principal().require_org()
        data = await self.rt.read(manifest.load_entry, org, request.model_id)
        return manifest_pb.entry(data, request.model_id)

    async def GetManifest(  # type: ignore[override]  # pages are bytes, see add_to_server
        self, request: pb.GetManifestRequest, context: Ctx
    ) -> pb.GetManifestResponse | bytes:
        """Answers a page as bytes joined from the built manifest (add_to_server registers
        a serializer that passes them through)."""
        org = principal().org_id  # None: anonymous, the blessed catalog only
        page = manifest.page_request(request.page_size, request.page_token, org)
        # Every polling device runs this; one statement, so no transaction around it.
        stamp = await self.rt.read_single(manifest.stamp, org)
        # if_none_match is for a first page; a token pages the manifest it came from.
        wanted = request.if_none_match if page.etag is None else ""
        etag = self.manifests.etag(stamp) if wanted else None
        if etag is not None and etag == wanted:
            await self._send_etag(context, etag)
            return pb.GetManifestResponse(etag=etag, not_modified=True)
        built = await self.manifests.get(stamp)
        manifest.check_page(page, built.etag, len(built.names))
        await self._send_etag(context, built.etag)
        if wanted == built.etag:
            return pb.GetManifestResponse(etag=built.etag, not_modified=True)
        return built.page(
            page.offset,
            page.size,
            lambda offset: manifest.next_page_token(built.etag, offset, org),
        )

    @staticmethod
    async def _send_etag(context: Ctx, etag: str) -> None:
        await context.send_initial_metadata((("etag", etag),))
        context.set_trailing_metadata((("etag", etag),))

    async def ListModelArtifactPackages(
        self, request: pb.ListModelArtifactPackagesRequest, context: Ctx
    ) -> pb.ListModelArtifactPackagesResponse:
        org = principal().require_org()
        model_id = names.parse_model_name(request.name)
        page = await self.rt.read(
            catalog.list_model_packages, org, model_id, request.page_size, request.page_token
        )
        return pb.ListModelArtifactPackagesResponse(
            packages=[convert.package(p, page.variant_uid) for p in page.packages],
            next_page_token=page.next_page_token,
            variant=names.variant_name(page.variant_uid) if page.variant_uid else "",
        )

    async def GetArtifactDownloadUrl(
        self, request: pb.GetArtifactDownloadUrlRequest, context: Ctx
    ) -> pb.GetArtifactDownloadUrlResponse:
        return await self.presigned.get_artifact_download_url(request)

    async def CheckCompatibility(
        self, request: pb.CheckCompatibilityRequest, context: Ctx
    ) -> pb.CheckCompatibilityResponse:
        org = principal().require_org()
        model_id = names.parse_model_name(request.name)
        result = await self.rt.read(
            compatibility.check_compatibility, org, model_id, list(request.device_profiles)
        )
        return convert.compatibility(result)

    async def GetOptimizationPlan(
        self, request: pb.GetOptimizationPlanRequest, context: Ctx
    ) -> pb.GetOptimizationPlanResponse:
        org = principal().require_org()
        model_id = names.parse_model_name(request.name)
        result = await self.rt.read(
            optimization_plans.optimization_plan,
            org,
            model_id,
            list(request.device_profiles),
            request.accuracy_tolerance,
            request.size_budget_bytes,
        )
        return convert.optimization_plan(result)

    async def GetOptimizedConfig(
        self, request: pb.GetOptimizedConfigRequest, context: Ctx
    ) -> compatibility_pb2.OptimizedConfig:
        org = principal().require_org()
        view = await self.rt.read(optimized_configs.get_config, org, request.name)
        return convert.optimized_config(view)

    async def PutOptimizedConfig(
        self, request: pb.PutOptimizedConfigRequest, context: Ctx
    ) -> compatibility_pb2.OptimizedConfig:
        org = principal().require_org()
        oc = request.optimized_config
        config = convert.struct_to_dict(oc.config) if oc.HasField("config") else None
        view = await self.rt.write(optimized_configs.put_config, org, oc.name, config)
        return convert.optimized_config(view)


def add_to_server(servicer: ModelService, server: grpc.aio.Server) -> None:
    """add_ModelServiceServicer_to_server, with a GetManifest serializer that also takes
    the bytes GetManifest answers pages with."""
    recorder = _Recorder()
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(servicer, recorder)  # type: ignore[arg-type]
    handlers = dict(recorder.handlers)
    handlers["GetManifest"] = handlers["GetManifest"]._replace(
        response_serializer=manifest_pb.serialize_response
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(recorder.service, handlers),)
    )
    server.add_registered_method_handlers(recorder.service, handlers)  # type: ignore[attr-defined]


class _Recorder:
    """Stands in for the server to capture the generated method handlers."""

    service = ""
    handlers: dict[str, Any] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.service, self.handlers = service, handlers
