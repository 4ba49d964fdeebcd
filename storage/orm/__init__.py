"""SQLAlchemy 2 typed models for every entity, importable as `storage.orm.<Name>`.

Primary keys are UUID4 strings generated in Python (`new_id`), timestamps are aware UTC,
and every foreign key cascades on delete in the database (relationships use
passive_deletes), so bulk deletes and ORM deletes behave the same.
"""

from storage.orm.base import Base, UTCDateTime, new_id, utcnow
from storage.orm.catalog import (
    ANONYMOUS_SCOPE,
    CATALOG_LIFECYCLES,
    PACKAGE_SOURCES,
    ArtifactPackage,
    ArtifactResource,
    CatalogVariant,
    CatalogVersion,
    ManifestBuildClaim,
    ManifestChange,
    ManifestSnapshot,
    ManifestTail,
)
from storage.orm.conversions import JOB_STATES, ConversionEvent, ConversionJob
from storage.orm.registry import LIFECYCLE_STATUSES, Model, ModelVersion, OptimizedConfig
from storage.orm.telemetry import (
    HEALTH_STATUSES,
    SESSION_STATUSES,
    Device,
    DeviceProfileOverride,
    InferenceRollup,
    InferenceRollup10m,
    InferenceSession,
    TrainingUpdate,
)
from storage.orm.tenancy import ApiKey, Org
from storage.orm.uploads import UPLOAD_STATES, UploadSession

__all__ = [
    "ANONYMOUS_SCOPE",
    "CATALOG_LIFECYCLES",
    "HEALTH_STATUSES",
    "JOB_STATES",
    "LIFECYCLE_STATUSES",
    "PACKAGE_SOURCES",
    "SESSION_STATUSES",
    "UPLOAD_STATES",
    "ApiKey",
    "ArtifactPackage",
    "ArtifactResource",
    "Base",
    "CatalogVariant",
    "CatalogVersion",
    "ConversionEvent",
    "ConversionJob",
    "Device",
    "DeviceProfileOverride",
    "InferenceRollup",
    "InferenceRollup10m",
    "InferenceSession",
    "ManifestBuildClaim",
    "ManifestChange",
    "ManifestSnapshot",
    "ManifestTail",
    "Model",
    "ModelVersion",
    "OptimizedConfig",
    "Org",
    "TrainingUpdate",
    "UTCDateTime",
    "UploadSession",
    "new_id",
    "utcnow",
]
