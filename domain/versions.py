"""Model versions (VersionService CRUD and publish)."""

from __future__ import annotations

from dataclasses import dataclass

from storage.orm import ModelVersion


@dataclass(frozen=True)
class ModelVersionView:
    """A version with the context its resource names need (the session may be closed)."""

    version: ModelVersion
    model_id: str
    catalog_variant_id: str | None = None
    catalog_version_id: str | None = None
