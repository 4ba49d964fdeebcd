"""Domain/ORM objects -> protobuf messages. Pure functions, no I/O."""

from __future__ import annotations

from datetime import datetime

from google.protobuf import timestamp_pb2

from domain import names
from domain.etags import etag_of
from domain.models import ModelView
from modelregistry.v1 import models_pb2


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def model(view: ModelView) -> models_pb2.Model:
    m = view.model
    return models_pb2.Model(
        name=names.model_name(m.model_id),
        uid=m.id,
        model_id=m.model_id,
        framework=m.framework,
        description=m.description,
        tags=list(m.tags),
        enabled=m.enabled,
        create_time=timestamp(m.created_at),
        update_time=timestamp(m.updated_at),
        etag=etag_of(m.id, m.revision),
        version_count=view.version_count,
    )
