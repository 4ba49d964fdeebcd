"""The catalog (CatalogService): blessed and org-override variants, catalog versions and
their lifecycle, packages, and presigned download URLs.

Scopes: a blessed variant (org_id NULL) is visible to every org and written only with an
admin key; an override belongs to one org and is invisible (NOT_FOUND) to all others.
Every write bumps the revision its manifests are cached under: the org's for overrides,
the blessed catalog's for blessed rows, in the same transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from domain import names, resolver
from domain.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    PreconditionViolation,
    Violations,
)
from domain.etags import check_etag
from domain.masks import mask_paths
from domain.paging import page_of
from domain.validation import check_description, normalize_tags
from storage.objectstore import ObjectStore
from storage.objectstore.base import StorageError
from storage.orm import ArtifactPackage, ArtifactResource, CatalogVariant, CatalogVersion, utcnow
from storage.repos import catalog as repo
from storage.repos import models as models_repo
from storage.repos import tenancy

MUTABLE_FIELDS = ("family", "task_taxonomy", "parameter_count", "license", "description")
SCOPES = ("all", "blessed", "org", "resolved")
MAX_FAMILY = 64
MAX_LICENSE = 64
MAX_SEARCH = 128
DOWNLOAD_URL_TTL = timedelta(seconds=3600)
DEFAULT_PACKAGE_PAGE = 100


@dataclass(frozen=True)
class VariantFields:
    """The client-settable fields of a variant."""

    family: str = ""
    task_taxonomy: list[str] = field(default_factory=list)
    parameter_count: int = 0
    license: str = ""
    description: str = ""


@dataclass(frozen=True)
class VariantPage:
    variants: list[CatalogVariant]
    next_page_token: str


@dataclass(frozen=True)
class CatalogVersionView:
    version: CatalogVersion
    total_size_bytes: int = 0
    model_version_name: str = ""


@dataclass(frozen=True)
class VersionPage:
    versions: list[CatalogVersionView]
    next_page_token: str


@dataclass(frozen=True)
class PackagePage:
    """Packages (resources loaded) and the variant their names live under."""

    packages: list[ArtifactPackage]
    variant_uid: str
    next_page_token: str


@dataclass(frozen=True)
class ResourceUrl:
    resource: ArtifactResource
    package_uid: str
    url: str


@dataclass(frozen=True)
class DownloadUrls:
    variant_uid: str
    version_uid: str
    urls: list[ResourceUrl]
    skipped: int
    expire_time: datetime


# ---------------------------------------------------------------------------------------
# scope helpers


def _bump(session: Session, variant_org_id: str | None) -> None:
    """Mark every manifest the row shows in as changed.

    Writers under a variant bump before they lock or write any row there: the bump locks
    the org's (or the catalog's) row, and writing a version, package or resource locks the
    variant's row (content_revision triggers, migration 0008) and keys the rows above it.
    Taking them in that one order everywhere (tenancy.bump_org_revision) keeps concurrent
    writers on PostgreSQL from deadlocking."""
    if variant_org_id is None:
        repo.bump_catalog_revision(session)
    else:
        tenancy.bump_org_revision(session, variant_org_id)


def _require_admin_for(variant: CatalogVariant, admin: bool, action: str) -> None:
    if variant.org_id is None and not admin:
        raise PermissionDenied(
            f"{action} a blessed variant needs an admin key (modelregistry keys create --admin)",
            reason="ADMIN_KEY_REQUIRED",
            metadata={"resource_name": names.variant_name(variant.id)},
        )


def variant_etag_revision(v: CatalogVariant) -> int:
    return int(v.updated_at.timestamp() * 1_000_000)


# ---------------------------------------------------------------------------------------
# variants


def _check_fields(v: Violations, prefix: str, f: VariantFields, paths: set[str]) -> list[str]:
    if "family" in paths and len(f.family) > MAX_FAMILY:
        v.add(f"{prefix}.family", f"must be at most {MAX_FAMILY} characters (got {len(f.family)})")
    if "license" in paths and len(f.license) > MAX_LICENSE:
        v.add(
            f"{prefix}.license", f"must be at most {MAX_LICENSE} characters (got {len(f.license)})"
        )
    if "parameter_count" in paths and f.parameter_count < 0:
        v.add(f"{prefix}.parameter_count", "must not be negative")
    if "description" in paths:
        check_description(v, f"{prefix}.description", f.description)
    if "task_taxonomy" in paths:
        return normalize_tags(v, f"{prefix}.task_taxonomy", f.task_taxonomy)
    return []


def create_variant(
    session: Session,
    org_id: str,
    model_id: str,
    fields: VariantFields,
    *,
    blessed: bool,
    admin: bool,
) -> CatalogVariant:
    if blessed and not admin:
        raise PermissionDenied(
            "creating a blessed variant needs an admin key (modelregistry keys create --admin)",
            reason="ADMIN_KEY_REQUIRED",
        )
    v = Violations()
    problem = names.model_id_problem(model_id)
    if problem:
        v.add("variant.model_id", problem)
    taxonomy = _check_fields(v, "variant", fields, set(MUTABLE_FIELDS))
    v.raise_if_any()
    owner = None if blessed else org_id
    _bump(session, owner)  # first: see _bump
    if repo.variant_in_scope(session, owner, model_id) is not None:
        raise AlreadyExists(
            "variant", model_id, f"a {'blessed' if blessed else 'org'} variant {model_id!r} exists"
        )
    variant = CatalogVariant(
        org_id=owner,
        name=model_id,
        family=fields.family,
        task_taxonomy=taxonomy,
        parameter_count=fields.parameter_count or None,
        license=fields.license,
        description=fields.description,
    )
    session.add(variant)
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError:
        raise AlreadyExists("variant", model_id) from None
    return variant


def get_variant(session: Session, org_id: str, uid: str) -> CatalogVariant:
    variant = repo.get_variant(session, org_id, uid)
    if variant is None:
        raise NotFound("variant", names.variant_name(uid))
    return variant


def parse_variant_name(name: str, field_name: str = "name") -> str:
    (uid,) = names.parse_uid_name(name, field_name, ("variants",))
    assert uid is not None
    return uid


def list_variants(
    session: Session, org_id: str, flt: repo.VariantFilter, page_size: int, page_token: str
) -> VariantPage:
    v = Violations()
    if flt.task and not names.TAG_RE.match(flt.task):
        v.add("task", "is not a valid capability")
    if len(flt.search) > MAX_SEARCH:
        v.add("search", f"must be at most {MAX_SEARCH} characters")
    if flt.scope not in SCOPES:
        v.add("scope", f"must be one of {', '.join(SCOPES)}")
    v.raise_if_any()
    page = page_of(page_size, page_token, flt)
    rows, total = repo.list_variants(session, org_id, flt, page.offset, page.size)
    return VariantPage(rows, page.next_token(len(rows), total))


def update_variant(
    session: Session,
    org_id: str,
    uid: str,
    fields: VariantFields,
    mask: list[str],
    etag: str,
    *,
    admin: bool,
) -> CatalogVariant:
    paths = mask_paths(mask, MUTABLE_FIELDS)
    v = Violations()
    taxonomy = _check_fields(v, "variant", fields, paths)
    v.raise_if_any()
    seen = repo.get_variant(session, org_id, uid)
    if seen is None:
        raise NotFound("variant", names.variant_name(uid))
    # Before the lock (a variant never changes owner): a refused caller never holds up the
    # catalog's writers.
    _require_admin_for(seen, admin, "changing")
    _bump(session, seen.org_id)  # before locking the variant: see _bump
    session.expire(seen)  # read again under the lock below
    variant = repo.get_variant_for_update(session, org_id, uid)
    if variant is None:
        raise NotFound("variant", names.variant_name(uid))
    check_etag(etag, variant.id, variant_etag_revision(variant), names.variant_name(uid))
    if "family" in paths:
        variant.family = fields.family
    if "task_taxonomy" in paths:
        variant.task_taxonomy = taxonomy
    if "parameter_count" in paths:
        variant.parameter_count = fields.parameter_count or None
    if "license" in paths:
        variant.license = fields.license
    if "description" in paths:
        variant.description = fields.description
    variant.updated_at = utcnow()
    session.flush()
    return variant


def resolve_variant(session: Session, org_id: str, model_id: str) -> CatalogVariant:
    if not model_id:
        raise InvalidArgument.field("model_id", "is required")
    variant = resolver.resolve_variant(session, org_id, model_id)
    if variant is None:
        raise NotFound("variant", model_id, f"no variant named {model_id!r} is visible")
    return variant


# ---------------------------------------------------------------------------------------
# catalog versions


@dataclass(frozen=True)
class VersionRef:
    variant_uid: str | None
    uid: str

    @property
    def name(self) -> str:
        return names.catalog_version_name(self.variant_uid or names.WILDCARD, self.uid)


def parse_version_name(name: str, field_name: str = "name") -> VersionRef:
    """`variants/{variant}/versions/{uid}` or `variants/-/versions/{uid}`."""
    variant_uid, uid = names.parse_uid_name(name, field_name, ("variants", "versions"))
    assert uid is not None
    return VersionRef(variant_uid, uid)


def _version(
    session: Session, org_id: str | None, ref: VersionRef, *, for_update: bool = False
) -> CatalogVersion:
    cv = repo.get_version(session, org_id, ref.uid, ref.variant_uid, for_update=for_update)
    if cv is None:
        raise NotFound("catalog version", ref.name)
    return cv


def _views(session: Session, rows: list[CatalogVersion]) -> list[CatalogVersionView]:
    sizes = repo.total_sizes(session, [cv.id for cv in rows])
    mv_names = repo.model_version_names(
        session, [cv.model_version_id for cv in rows if cv.model_version_id]
    )
    out = []
    for cv in rows:
        mv = mv_names.get(cv.model_version_id or "")
        out.append(
            CatalogVersionView(
                cv, sizes.get(cv.id, 0), names.version_name(mv[0], mv[1]) if mv else ""
            )
        )
    return out


def list_versions(
    session: Session, org_id: str, variant_uid: str, page_size: int, page_token: str
) -> VersionPage:
    get_variant(session, org_id, variant_uid)
    page = page_of(page_size, page_token, variant_uid)
    rows, total = repo.list_versions(session, variant_uid, page.offset, page.size)
    return VersionPage(_views(session, rows), page.next_token(len(rows), total))


def get_version(session: Session, org_id: str, ref: VersionRef) -> CatalogVersionView:
    return _views(session, [_version(session, org_id, ref)])[0]


def deprecate_version(
    session: Session, org_id: str, ref: VersionRef, *, admin: bool
) -> CatalogVersionView:
    """active -> deprecated; any other starting state is FAILED_PRECONDITION."""
    seen = _version(session, org_id, ref)
    # Before the lock: a refused caller never holds up the catalog's writers.
    _require_admin_for(seen.variant, admin, "deprecating a version of")
    _bump(session, seen.variant.org_id)  # before locking the version: see _bump
    session.expire(seen)  # read again under the lock below
    cv = _version(session, org_id, ref, for_update=True)
    if cv.lifecycle != "active":
        name = names.catalog_version_name(cv.variant_id, cv.id)
        raise FailedPrecondition(
            f"catalog version {name} is {cv.lifecycle}; only active versions can be deprecated",
            [PreconditionViolation("LIFECYCLE", name, f"state is {cv.lifecycle}, not active")],
            reason="NOT_ACTIVE",
            metadata={"resource_name": name, "state": cv.lifecycle},
        )
    cv.lifecycle = "deprecated"
    cv.deprecated_at = utcnow()
    session.flush()
    return _views(session, [cv])[0]


# ---------------------------------------------------------------------------------------
# packages


def list_version_packages(
    session: Session, org_id: str, ref: VersionRef, page_size: int, page_token: str
) -> PackagePage:
    cv = _version(session, org_id, ref)
    page = page_of(page_size, page_token, cv.id, default_size=DEFAULT_PACKAGE_PAGE)
    rows, total = repo.packages_of_version(session, cv.id, page.offset, page.size)
    return PackagePage(rows, cv.variant_id, page.next_token(len(rows), total))


def list_model_packages(
    session: Session, org_id: str, model_id: str, page_size: int, page_token: str
) -> PackagePage:
    """Packages across every catalog version of the variant that resolves for the org's
    model's name; empty (variant_uid '') when no variant has the name."""
    if models_repo.get(session, org_id, model_id) is None:
        raise NotFound("model", names.model_name(model_id))
    page = page_of(page_size, page_token, model_id, default_size=DEFAULT_PACKAGE_PAGE)
    variant = resolver.resolve_variant(session, org_id, model_id)
    if variant is None:
        return PackagePage([], "", "")
    rows, total = repo.packages_of_variant(session, variant.id, page.offset, page.size)
    return PackagePage(rows, variant.id, page.next_token(len(rows), total))


# ---------------------------------------------------------------------------------------
# download URLs


def download_urls(
    session: Session,
    org_id: str,
    ref: VersionRef,
    store: ObjectStore,
    ttl: timedelta = DOWNLOAD_URL_TTL,
) -> DownloadUrls:
    """Presigned GETs for every resource with a storage key, packages in creation order and
    resources in load order. A resource whose presigning fails is skipped and counted.

    FAILED_PRECONDITION when the org disabled its model of this name, or when the object
    store cannot presign at all (the embedded local directory) while there is something
    to presign: every resource would be skipped, and the caller should stream the bytes
    with VersionService.DownloadArtifact instead.
    """
    cv = _version(session, org_id, ref)
    variant_name = cv.variant.name
    if repo.model_enabled(session, org_id, variant_name) is False:
        raise FailedPrecondition(
            f"model {variant_name!r} is disabled; enable it to download",
            [PreconditionViolation("MODEL_DISABLED", names.model_name(variant_name), "disabled")],
            reason="MODEL_DISABLED",
            metadata={"resource_name": names.model_name(variant_name)},
        )
    expire_time = utcnow() + ttl
    stored = [
        (p, r) for p in repo.all_packages_of_version(session, cv.id) for r in p.resources
        if r.storage_key is not None
    ]  # fmt: skip
    if stored and not store.supports_presign:
        name = names.catalog_version_name(cv.variant_id, cv.id)
        raise FailedPrecondition(
            "this server's object store cannot presign URLs; "
            "download with VersionService.DownloadArtifact instead",
            [PreconditionViolation("PRESIGN_UNSUPPORTED", name, "the object store is local")],
            reason="PRESIGN_UNSUPPORTED",
            metadata={"resource_name": name},
        )
    urls: list[ResourceUrl] = []
    skipped = 0
    for package, resource in stored:
        assert resource.storage_key is not None
        try:
            url = store.presign_get(resource.storage_key, ttl)
        except (StorageError, ValueError):
            skipped += 1
            continue
        urls.append(ResourceUrl(resource, package.id, url))
    return DownloadUrls(cv.variant_id, cv.id, urls, skipped, expire_time)
