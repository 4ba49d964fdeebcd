"""TelemetryService: protobuf <-> domain for fleet telemetry.

Ingestion streams are written batch by batch, in order; consecutive batches of one stream
that are already waiting at the server when a write ends go into the next transaction
together (at most telemetry.MAX_GROUP events). The reply comes only at the end of the
stream and events are idempotent by id, so grouping changes no answer: a stream that fails
half way keeps what was written and can simply be retried. Per-transaction work (rollup
rows, statements, commit) is then shared by several batches when the server is busy, which
is exactly when it matters. Converting protobuf events runs in the worker thread together
with the write, so the event loop only receives messages.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime, timedelta
from typing import Literal, TypeVar

from google.protobuf import timestamp_pb2
from sqlalchemy.orm import Session

from domain import names, telemetry
from domain.errors import InvalidArgument
from domain.telemetry import IngestResult
from modelregistry.v1 import telemetry_service_pb2 as pb
from modelregistry.v1 import telemetry_service_pb2_grpc
from server import convert
from server.context import Ctx, principal
from server.runtime import Runtime
from storage.orm import Device

E = TypeVar("E")

# Messages read ahead of the write in progress: enough to fill the next group, bounded so
# a fast client cannot make the server buffer its whole stream.
_READ_AHEAD = 8

_HEALTH_IN = {
    pb.Device.HEALTH_HEALTHY: "healthy",
    pb.Device.HEALTH_DEGRADED: "degraded",
    pb.Device.HEALTH_UNHEALTHY: "unhealthy",
}
_HEALTH_OUT = {v: k for k, v in _HEALTH_IN.items()}


def _micros(ts: timestamp_pb2.Timestamp) -> int:
    return ts.seconds * 1_000_000 + ts.nanos // 1000


def _window_end(
    request: pb.GetInferenceTelemetryRequest, field: Literal["start_time", "end_time"]
) -> datetime | None:
    """start_time or end_time, None when not set."""
    if not request.HasField(field):
        return None
    return convert.request_time(getattr(request, field), field)


def _session_batch(events: Sequence[pb.InferenceSessionEvent]) -> telemetry.SessionBatch:
    """The events column by column (one pass per field: no object per event)."""
    times = [e.occur_time for e in events]
    occur: list[int | None] = [t.seconds * 1_000_000 + t.nanos // 1000 for t in times]
    if 0 in occur:  # 0 is also what an event without occur_time reads as
        for i, us in enumerate(occur):
            if us == 0 and not events[i].HasField("occur_time"):
                occur[i] = None
    return telemetry.SessionBatch(
        event_id=[e.event_id for e in events],
        model=[e.model for e in events],
        version_id=[e.version_id for e in events],
        device_id=[e.device_id for e in events],
        device_type=[e.device_type for e in events],
        occur_us=occur,
        latency_ms=[e.latency_ms for e in events],
        ttft_ms=[e.time_to_first_token_ms for e in events],
        tokens_per_second=[e.tokens_per_second for e in events],
        error=[e.error for e in events],
        error_code=[e.error_code for e in events],
    )


def _training_events(batch: Sequence[pb.TrainingUpdateEvent]) -> list[telemetry.TrainingEvent]:
    return [
        telemetry.TrainingEvent(
            e.event_id,
            e.model,
            e.version_id,
            e.device_id,
            _micros(e.occur_time) if e.HasField("occur_time") else None,
            e.sample_count,
            dict(e.metrics),
        )
        for e in batch
    ]


def _ingest_sessions(
    session: Session,
    org: str,
    batch: Sequence[pb.InferenceSessionEvent],
    first: int,
    retention: timedelta,
) -> IngestResult:
    return telemetry.ingest_sessions(session, org, _session_batch(batch), first, retention)


def _ingest_training(
    session: Session,
    org: str,
    batch: Sequence[pb.TrainingUpdateEvent],
    first: int,
    retention: timedelta,
) -> IngestResult:
    return telemetry.ingest_training_updates(
        session, org, _training_events(batch), first, retention
    )


def _distribution(d: telemetry.Distribution) -> pb.LatencyDistribution:
    return pb.LatencyDistribution(
        count=d.count,
        p50=d.p50,
        p90=d.p90,
        p95=d.p95,
        p99=d.p99,
        mean=d.mean,
        relative_error_bound=d.relative_error_bound,
    )


def _device(d: Device) -> pb.Device:
    return pb.Device(
        device_id=d.device_id,
        device_type=d.device_type,
        platform=d.platform,
        os_version=d.os_version,
        runtime_version=d.runtime_version,
        health=_HEALTH_OUT.get(d.health_status, pb.Device.HEALTH_UNSPECIFIED),
        last_seen_time=convert.timestamp(d.last_seen_at),
        create_time=convert.timestamp(d.created_at),
    )


class _Totals:
    """Sums the per-batch results of one stream."""

    def __init__(self) -> None:
        self.accepted = 0
        self.duplicates = 0
        self.rejected_count = 0
        self.rejected: list[pb.RejectedEvent] = []

    def add(self, r: IngestResult) -> None:
        self.accepted += r.accepted
        self.duplicates += r.duplicates
        self.rejected_count += len(r.rejected)
        room = telemetry.MAX_LISTED_REJECTIONS - len(self.rejected)
        self.rejected += [
            pb.RejectedEvent(event_id=x.event_id, index=x.index, field=x.field, reason=x.reason)
            for x in r.rejected[: max(room, 0)]
        ]


class _End:
    """The end of a stream's messages: normal (error None) or broken."""

    def __init__(self, error: Exception | None) -> None:
        self.error = error


class TelemetryService(telemetry_service_pb2_grpc.TelemetryServiceServicer):
    def __init__(
        self, runtime: Runtime, retention: timedelta = telemetry.DEFAULT_RETENTION
    ) -> None:
        self.rt = runtime
        self.retention = retention

    async def _ingest(
        self,
        batches: AsyncIterator[Sequence[E]],
        run_batch: Callable[[Session, str, Sequence[E], int, timedelta], IngestResult],
        field: str,
    ) -> _Totals:
        org = principal().require_org()
        totals = _Totals()
        # Reading runs alongside the writes, so the batches that arrive during one write
        # are waiting in the queue when it ends.
        queue: asyncio.Queue[Sequence[E] | _End] = asyncio.Queue(_READ_AHEAD)

        async def read() -> None:
            try:
                async for batch in batches:
                    await queue.put(batch)
            except Exception as exc:  # the stream broke: the handler raises it, in order
                await queue.put(_End(exc))
            else:
                await queue.put(_End(None))

        reader = asyncio.create_task(read())
        try:
            index = 0
            item: Sequence[E] | _End | None = await queue.get()
            while True:
                group: list[E] = []
                while (
                    item is not None
                    and not isinstance(item, _End)
                    and len(item) <= telemetry.MAX_BATCH
                    and len(group) + len(item) <= telemetry.MAX_GROUP
                ):
                    group += item
                    item = None if queue.empty() else queue.get_nowait()
                if group:
                    totals.add(await self.rt.write(run_batch, org, group, index, self.retention))
                    index += len(group)
                if item is None:
                    item = await queue.get()
                elif isinstance(item, _End):
                    if item.error is not None:
                        raise item.error
                    return totals
                elif len(item) > telemetry.MAX_BATCH:
                    raise InvalidArgument.field(
                        field,
                        f"a batch holds at most {telemetry.MAX_BATCH} (got {len(item)} in the "
                        f"batch starting at index {index}); earlier batches of this stream were "
                        "stored",
                    )
        finally:
            reader.cancel()

    async def ReportInferenceSessions(
        self,
        request: AsyncIterator[pb.ReportInferenceSessionsRequest],
        context: Ctx,
    ) -> pb.ReportInferenceSessionsResponse:
        async def batches() -> AsyncIterator[Sequence[pb.InferenceSessionEvent]]:
            async for req in request:
                yield req.events

        t = await self._ingest(batches(), _ingest_sessions, "events")
        return pb.ReportInferenceSessionsResponse(
            accepted_count=t.accepted,
            duplicate_count=t.duplicates,
            rejected=t.rejected,
            rejected_count=t.rejected_count,
        )

    async def ReportTrainingUpdates(
        self,
        request: AsyncIterator[pb.ReportTrainingUpdatesRequest],
        context: Ctx,
    ) -> pb.ReportTrainingUpdatesResponse:
        async def batches() -> AsyncIterator[Sequence[pb.TrainingUpdateEvent]]:
            async for req in request:
                yield req.updates

        t = await self._ingest(batches(), _ingest_training, "updates")
        return pb.ReportTrainingUpdatesResponse(
            accepted_count=t.accepted,
            duplicate_count=t.duplicates,
            rejected=t.rejected,
            rejected_count=t.rejected_count,
        )

    async def ReportDeviceHeartbeat(
        self, request: pb.ReportDeviceHeartbeatRequest, context: Ctx
    ) -> pb.ReportDeviceHeartbeatResponse:
        org = principal().require_org()
        d = request.device
        report = telemetry.DeviceReport(
            device_id=d.device_id,
            health=_HEALTH_IN.get(d.health, ""),
            device_type=d.device_type,
            platform=d.platform,
            os_version=d.os_version,
            runtime_version=d.runtime_version,
        )
        device, registered = await self.rt.write(telemetry.report_heartbeat, org, report)
        return pb.ReportDeviceHeartbeatResponse(device=_device(device), registered=registered)

    async def GetInferenceTelemetry(
        self, request: pb.GetInferenceTelemetryRequest, context: Ctx
    ) -> pb.GetInferenceTelemetryResponse:
        org = principal().require_org()
        model_id = names.parse_model_name(request.name)
        stats = await self.rt.read(
            telemetry.inference_telemetry,
            org,
            model_id,
            _window_end(request, "start_time"),
            _window_end(request, "end_time"),
            request.version_id,
            request.device_type,
            self.retention,
        )
        f = stats.fleet
        return pb.GetInferenceTelemetryResponse(
            session_count=stats.session_count,
            error_count=stats.error_count,
            error_rate=stats.error_rate,
            latency_ms=_distribution(stats.latency_ms),
            time_to_first_token_ms=_distribution(stats.time_to_first_token_ms),
            tokens_per_second=_distribution(stats.tokens_per_second),
            fleet=pb.FleetSummary(
                total_devices=f.total,
                healthy_devices=f.healthy,
                degraded_devices=f.degraded,
                offline_devices=f.offline,
            ),
        )

    async def GetTrainingStats(
        self, request: pb.GetTrainingStatsRequest, context: Ctx
    ) -> pb.GetTrainingStatsResponse:
        org = principal().require_org()
        model_id = names.parse_model_name(request.name)
        totals = await self.rt.read(telemetry.training_stats, org, model_id)
        return pb.GetTrainingStatsResponse(
            versions=[
                pb.VersionTrainingSummary(
                    version_id=t.version,
                    update_count=t.update_count,
                    sample_count=t.sample_count,
                    device_count=t.device_count,
                    latest_metrics=t.latest_metrics,
                    latest_update_time=convert.timestamp(t.latest_at),
                )
                for t in totals
            ]
        )

    async def GetVersionTrainingStats(
        self, request: pb.GetVersionTrainingStatsRequest, context: Ctx
    ) -> pb.GetVersionTrainingStatsResponse:
        org = principal().require_org()
        ref = names.parse_version_name(request.name, allow_uid=False)
        assert ref.model_id is not None and ref.version_id is not None
        s = await self.rt.read(
            telemetry.version_training_stats,
            org,
            ref.model_id,
            ref.version_id,
            request.device_page_size,
            request.device_page_token,
        )
        return pb.GetVersionTrainingStatsResponse(
            version_id=s.version_id,
            update_count=s.update_count,
            sample_count=s.sample_count,
            device_count=s.device_count,
            metrics=[
                pb.MetricPercentiles(
                    metric=m.metric, count=m.count, p50=m.p50, p95=m.p95, p99=m.p99
                )
                for m in s.metrics
            ],
            devices=[
                pb.DeviceTrainingSummary(
                    device_id=d.device_id,
                    update_count=d.update_count,
                    sample_count=d.sample_count,
                    latest_metrics=d.latest_metrics,
                )
                for d in s.devices
            ],
            next_device_page_token=s.next_device_page_token,
        )
