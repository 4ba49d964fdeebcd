"""The catalog: variants (blessed or org overrides), their versions, packages, resources."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from storage.orm.base import ID_LENGTH, Base, CreatedAt, Json, Timestamps, UuidPk
from storage.orm.tenancy import SLUG_LENGTH, STATE_LENGTH

if TYPE_CHECKING:
    from storage.orm.registry import ModelVersion

CATALOG_LIFECYCLES = ("active", "deprecated")
PACKAGE_SOURCES = ("upload", "conversion")

_BLESSED = text("org_id IS NULL")


class CatalogState(Base):
    """One row (id 1): the blessed catalog's revision, bumped in the same transaction as
    every change to blessed variants, versions, packages or resources. Manifest etags
    combine it with the org's own revision, so an unchanged manifest is recognised
    without building it."""

    __tablename__ = "catalog_state"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    revision: Mapped[int] = mapped_column(BigInteger, default=1)
    # ManifestChange rows of blessed variants are complete after this revision; those of
    # blessed names that are still in the catalog, after manifest_live_floor (migration 0021).
    manifest_changes_floor: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    manifest_live_floor: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))


class CatalogVariant(UuidPk, Timestamps, Base):
    __tablename__ = "catalog_variants"
    __table_args__ = (
        # Overrides: one per name per org. NULLs are distinct in unique constraints, so this
        # says nothing about blessed rows; the partial index below covers those.
        UniqueConstraint("org_id", "name"),
        Index(
            "uq_catalog_variants_blessed_name",
            "name",
            unique=True,
            sqlite_where=_BLESSED,
            postgresql_where=_BLESSED,
        ),
    )

    # NULL: a blessed variant visible to every org; otherwise that org's override.
    org_id: Mapped[str | None] = mapped_column(
        String(ID_LENGTH), ForeignKey("orgs.id", ondelete="CASCADE")
    )
    name: Mapped[str] = mapped_column(String(SLUG_LENGTH))
    family: Mapped[str] = mapped_column(String(SLUG_LENGTH), default="")
    task_taxonomy: Mapped[list[str]] = mapped_column(Json, default=list)
    parameter_count: Mapped[int | None] = mapped_column(BigInteger)
    license: Mapped[str] = mapped_column(String(128), default="")
    description: Mapped[str] = mapped_column(Text, default="")
    # Bumped by database triggers (migration 0008) in the writing transaction whenever a
    # catalog version, package or resource of this variant is inserted, updated or deleted,
    # whoever writes it (cascades included). With updated_at (the variant's own fields) it
    # keys the manifest's cached bytes of the variant's subtree (server/manifest_pb.py).
    # Never written by the application.
    content_revision: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))

    versions: Mapped[list[CatalogVersion]] = relationship(
        back_populates="variant", cascade="all, delete-orphan", passive_deletes=True
    )


class CatalogVersion(UuidPk, CreatedAt, Base):
    __tablename__ = "catalog_versions"
    __table_args__ = (
        UniqueConstraint("variant_id", "version"),
        CheckConstraint("lifecycle IN ('active', 'deprecated')", name="lifecycle"),
    )

    variant_id: Mapped[str] = mapped_column(
        String(ID_LENGTH), ForeignKey("catalog_variants.id", ondelete="CASCADE")
    )
    version: Mapped[str] = mapped_column(String(SLUG_LENGTH))
    lifecycle: Mapped[str] = mapped_column(String(STATE_LENGTH), default="active")
    # Set when an org's upload created this version, so deleting the ModelVersion (or its
    # Model) takes the catalog version, packages and resource rows with it.
    model_version_id: Mapped[str | None] = mapped_column(
        String(ID_LENGTH), ForeignKey("model_versions.id", ondelete="CASCADE"), index=True
    )
    deprecated_at: Mapped[datetime | None]

    variant: Mapped[CatalogVariant] = relationship(back_populates="versions")
    model_version: Mapped[ModelVersion | None] = relationship(back_populates="catalog_versions")
    packages: Mapped[list[ArtifactPackage]] = relationship(
        back_populates="catalog_version", cascade="all, delete-orphan", passive_deletes=True
    )


class ArtifactPackage(UuidPk, CreatedAt, Base):
    __tablename__ = "artifact_packages"
    __table_args__ = (CheckConstraint("source IN ('upload', 'conversion')", name="source"),)

    catalog_version_id: Mapped[str] = mapped_column(
        String(ID_LENGTH), ForeignKey("catalog_versions.id", ondelete="CASCADE"), index=True
    )
    format: Mapped[str] = mapped_column(String(32))
    quantization: Mapped[str] = mapped_column(String(32), default="none")
    runtime: Mapped[str] = mapped_column(String(64), default="")
    source: Mapped[str] = mapped_column(String(STATE_LENGTH), default="upload")
    # Conversion measurements (size ratio, accuracy delta, latency...), free-form.
    metrics: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)

    catalog_version: Mapped[CatalogVersion] = relationship(back_populates="packages")
    resources: Mapped[list[ArtifactResource]] = relationship(
        back_populates="package",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="ArtifactResource.load_order",
    )


class ArtifactResource(UuidPk, CreatedAt, Base):
    __tablename__ = "artifact_resources"

    package_id: Mapped[str] = mapped_column(
        String(ID_LENGTH), ForeignKey("artifact_packages.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(32))
    file_name: Mapped[str] = mapped_column(String(255))
    # The garbage collector lists the object store and keeps keys still referenced here.
    storage_key: Mapped[str | None] = mapped_column(String(1024), index=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    sha256: Mapped[str | None] = mapped_column(String(64))
    required: Mapped[bool] = mapped_column(default=True)
    load_order: Mapped[int] = mapped_column(default=0)

    package: Mapped[ArtifactPackage] = relationship(back_populates="resources")


class ManifestTail(Base):
    """A variant's part of every manifest entry it resolves for (its versions, packages and
    resources), serialized once and kept where every server process and replica finds it.

    A cache, keyed like server/manifest_pb.py's in-memory one by the variant's
    (content_revision, updated_at): a row is used only while both still equal the
    variant's (domain.manifest.load_index compares them) and its entry_format is the
    reader's, so a stale row is never served, only rebuilt and overwritten. Written by
    GetManifest after it serialized a variant; dropped with the variant.
    """

    __tablename__ = "manifest_tails"

    variant_id: Mapped[str] = mapped_column(
        String(ID_LENGTH), ForeignKey("catalog_variants.id", ondelete="CASCADE"), primary_key=True
    )
    # The variant's org (NULL: blessed), which never changes: a cold build reads every
    # row of its org and the blessed ones without joining the variants.
    org_id: Mapped[str | None] = mapped_column(String(ID_LENGTH), index=True)
    content_revision: Mapped[int] = mapped_column(BigInteger)
    variant_updated_at: Mapped[datetime]
    # The serialization `data` is in (server/manifest_pb.ENTRY_FORMAT): a server reads only
    # rows of its own, so bytes written by a release that serialized entries otherwise are
    # rebuilt, not served. 1 for rows written before migration 0017 (the first format).
    entry_format: Mapped[int] = mapped_column(SmallInteger, server_default=text("1"))
    # The entry's framework when its Model has none (domain.manifest.framework_of).
    framework: Mapped[str] = mapped_column(String(32))
    data: Mapped[bytes] = mapped_column(LargeBinary)
    digest: Mapped[bytes] = mapped_column(LargeBinary)  # sha256 of data, for the etag
    # The whole map entry of the variant's name as a build last made it around `data`
    # (server/manifest_pb.Entry's bytes before the tail, and its part of the etag), for
    # the Model row it was made with: entry_enabled NULL for none, else (entry_framework,
    # entry_enabled). A build whose caller has that Model row (or none) for the name takes
    # the entry as it is instead of making it (10,000 made per cold build of a large org).
    # NULL entry_prefix: none stored.
    entry_framework: Mapped[str | None] = mapped_column(String(32))
    entry_enabled: Mapped[bool | None]
    entry_prefix: Mapped[bytes | None] = mapped_column(LargeBinary)
    entry_etag: Mapped[bytes | None] = mapped_column(LargeBinary)


class ManifestSnapshot(Base):
    """A caller's whole built manifest (server/manifest_snapshot.py's encoding), kept where every
    server process and replica finds it, under the stamp it was built at.

    A cache like ManifestTail: a server without the caller's manifest in memory serves the
    row as it is when its stamp equals the caller's current one (equal stamps, equal
    manifests: domain.manifest), else reuses its entries whose rows are unchanged and
    rebuilds the rest. Written after builds, at most every few seconds per caller
    (domain.manifest.StoreSchedule); a newer stamp is never overwritten by an older one.
    """

    __tablename__ = "manifest_snapshots"

    # The org id, or ANONYMOUS_SCOPE for callers without a key (the blessed catalog only).
    scope: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    org_id: Mapped[str | None] = mapped_column(
        String(ID_LENGTH), ForeignKey("orgs.id", ondelete="CASCADE")
    )
    org_revision: Mapped[int] = mapped_column(BigInteger)
    catalog_revision: Mapped[int] = mapped_column(BigInteger)
    # The serialization of `data`'s entries (server/manifest_pb.ENTRY_FORMAT, also in its
    # header): a server reads only rows of its own, so after an upgrade that serializes
    # entries otherwise a caller has no stored manifest (and a build after writes, or at
    # startup, makes one) instead of one no server can use.
    entry_format: Mapped[int] = mapped_column(SmallInteger, server_default=text("1"))
    # Stored uncompressed on PostgreSQL (migration 0012): decompressing megabytes would
    # cost the cold read it exists to make cheap.
    data: Mapped[bytes] = mapped_column(LargeBinary)


ANONYMOUS_SCOPE = "anonymous"


class ManifestBuildClaim(Base):
    """A server building a caller's manifest in the background, after writes
    (server/manifest_builds.py), until `until`: other servers skip that build instead of
    making the same one (writes spread over several servers each look at the caller's
    next build, and every server looks at the blessed catalog's). Taken when absent or
    expired, dropped by its holder when the build is stored; a holder that died leaves one
    that expires."""

    __tablename__ = "manifest_build_claims"

    # As ManifestSnapshot.scope: the org id, or ANONYMOUS_SCOPE.
    scope: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    org_id: Mapped[str | None] = mapped_column(
        String(ID_LENGTH), ForeignKey("orgs.id", ondelete="CASCADE")
    )
    holder: Mapped[str] = mapped_column(String(ID_LENGTH))  # a random id per claim
    until: Mapped[datetime]


class ManifestChange(Base):
    """A model name whose manifest entry changed, and the revision of its scope (the org's
    or, for blessed variants with org_id NULL, the catalog's) that last changed it: kept
    by triggers (migrations 0013, 0015) on every write of a Model or catalog variant (a
    variant's versions, packages and resources bump the variant's row, migration 0008).

    One row per (scope, name). A write marks it pending (`revision` NULL); the bump of the
    scope's revision stamps its pending rows, and a transaction that bumped it stamps
    those still pending as it commits (storage.repos.catalog.revision_bumped:
    the names it wrote after its bump). A build that has the manifest at an older
    stamp rebuilds only the names stamped after it (or pending) instead of reading every
    name's row. The log is complete after the scope's manifest_changes_floor (Org,
    CatalogState): a name no row of the scope has any longer keeps its row (a tombstone:
    older manifests drop its entry) until, at a multiple of 1000 revisions, it is 10,000
    revisions old; deleting it raises the floor to there. Only tombstones are pruned, so
    the rows of names still in the scope are complete after its manifest_live_floor, which
    nothing raises (migration 0021: before 0015, pruning took every row).
    """

    __tablename__ = "manifest_changes"
    __table_args__ = (
        Index("ix_manifest_changes_scope", "org_id", "revision", "name"),
        Index("ix_manifest_changes_name", "org_id", "name"),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    # No foreign key: an org's cascade logs rows for the org it deletes (migration 0013).
    org_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    revision: Mapped[int | None] = mapped_column(BigInteger)
    name: Mapped[str] = mapped_column(String(SLUG_LENGTH))
