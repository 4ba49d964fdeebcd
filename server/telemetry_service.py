"""TelemetryService: protobuf <-> domain."""

from __future__ import annotations

from collections.abc import AsyncIterator

from domain.errors import Unimplemented
from modelregistry.v1 import telemetry_service_pb2, telemetry_service_pb2_grpc
from server.context import Ctx
from server.runtime import Runtime


class TelemetryService(telemetry_service_pb2_grpc.TelemetryServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    async def ReportInferenceSessions(
        self,
        request: AsyncIterator[telemetry_service_pb2.ReportInferenceSessionsRequest],
        context: Ctx,
    ) -> telemetry_service_pb2.ReportInferenceSessionsResponse:
        raise Unimplemented(
            "TelemetryService.ReportInferenceSessions is not implemented yet (issue #6)"
        )

    async def ReportTrainingUpdates(
        self,
        request: AsyncIterator[telemetry_service_pb2.ReportTrainingUpdatesRequest],
        context: Ctx,
    ) -> telemetry_service_pb2.ReportTrainingUpdatesResponse:
        raise Unimplemented(
            "TelemetryService.ReportTrainingUpdates is not implemented yet (issue #6)"
        )

    async def ReportDeviceHeartbeat(
        self, request: telemetry_service_pb2.ReportDeviceHeartbeatRequest, context: Ctx
    ) -> telemetry_service_pb2.ReportDeviceHeartbeatResponse:
        raise Unimplemented(
            "TelemetryService.ReportDeviceHeartbeat is not implemented yet (issue #6)"
        )

    async def GetInferenceTelemetry(
        self, request: telemetry_service_pb2.GetInferenceTelemetryRequest, context: Ctx
    ) -> telemetry_service_pb2.GetInferenceTelemetryResponse:
        raise Unimplemented(
            "TelemetryService.GetInferenceTelemetry is not implemented yet (issue #6)"
        )

    async def GetTrainingStats(
        self, request: telemetry_service_pb2.GetTrainingStatsRequest, context: Ctx
    ) -> telemetry_service_pb2.GetTrainingStatsResponse:
        raise Unimplemented("TelemetryService.GetTrainingStats is not implemented yet (issue #6)")

    async def GetVersionTrainingStats(
        self, request: telemetry_service_pb2.GetVersionTrainingStatsRequest, context: Ctx
    ) -> telemetry_service_pb2.GetVersionTrainingStatsResponse:
        raise Unimplemented(
            "TelemetryService.GetVersionTrainingStats is not implemented yet (issue #6)"
        )
