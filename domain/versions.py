"""Model versions (VersionService CRUD and publish) and the monthly version quota."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from domain import names
from domain.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PreconditionViolation,
    QuotaExceeded,
    QuotaViolation,
    Violations,
)
from domain.etags import check_etag
from domain.paging import page_of
from domain.validation import check_description
from storage.orm import Model, ModelVersion, Org, utcnow
from storage.repos import models as models_repo
from storage.repos import tenancy
from storage.repos import versions as repo

MAX_LABELS = 64
MAX_LABEL_KEY = 63
MAX_LABEL_VALUE = 256
QUOTA_NAME = "model_versions_monthly"


@dataclass(frozen=True)
class ModelVersionView:
    """A version with the context its resource names need (the session may be closed)."""

    version: ModelVersion
    model_id: str
    catalog_variant_id: str | None = None
    catalog_version_id: str | None = None


@dataclass(frozen=True)
class VersionFields:
    """The client-settable fields of a version."""

    description: str = ""
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class VersionPage:
    versions: list[ModelVersionView]
    next_page_token: str


def version_revision(mv: ModelVersion) -> int:
    """What a version's etag is derived from (see server.convert.model_version)."""
    return int(mv.updated_at.timestamp() * 1_000_000)


def touch(mv: ModelVersion) -> None:
    """Mark a visible change of the version (new etag), also when only children changed."""
    now = utcnow()
    # Etags come from updated_at in microseconds: make sure every change moves it.
    if now <= mv.updated_at:
        now = mv.updated_at + timedelta(microseconds=1)
    mv.updated_at = now


def views(session: Session, model_id: str, rows: list[ModelVersion]) -> list[ModelVersionView]:
    refs = repo.catalog_refs(session, [mv.id for mv in rows])
    out = []
    for mv in rows:
        variant_uid, cv_uid = refs.get(mv.id, (None, None))
        out.append(ModelVersionView(mv, model_id, variant_uid, cv_uid))
    return out


def view(session: Session, model_id: str, mv: ModelVersion) -> ModelVersionView:
    return views(session, model_id, [mv])[0]


def _model(session: Session, org_id: str, model_id: str) -> Model:
    model = models_repo.get(session, org_id, model_id)
    if model is None:
        raise NotFound("model", names.model_name(model_id))
    return model


def find(session: Session, org_id: str, ref: names.VersionRef) -> tuple[ModelVersion, str]:
    """The org's version named by `ref` and its model's slug, or NotFound."""
    if ref.uid is not None:
        found = repo.get_by_uid(session, org_id, ref.uid)
        if found is None:
            raise NotFound("model version", ref.name)
        return found
    assert ref.model_id is not None and ref.version_id is not None
    mv = repo.get(session, org_id, ref.model_id, ref.version_id)
    if mv is None:
        # Say which one is missing: the model or just the version.
        _model(session, org_id, ref.model_id)
        raise NotFound("model version", ref.name)
    return mv, ref.model_id


def check_fields(v: Violations, prefix: str, fields: VersionFields) -> None:
    check_description(v, f"{prefix}.description", fields.description)
    if len(fields.labels) > MAX_LABELS:
        v.add(f"{prefix}.labels", f"at most {MAX_LABELS} labels (got {len(fields.labels)})")
    for key, value in fields.labels.items():
        if not key or len(key) > MAX_LABEL_KEY:
            v.add(f"{prefix}.labels", f"label keys must be 1-{MAX_LABEL_KEY} characters")
        if len(value) > MAX_LABEL_VALUE:
            v.add(f"{prefix}.labels[{key}]", f"must be at most {MAX_LABEL_VALUE} characters")


def month_start(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def check_version_quota(session: Session, org_id: str, *, creating: int = 1) -> None:
    """Plan gate: QuotaExceeded when creating `creating` more versions this calendar month
    (UTC) would pass the org's `model_versions_monthly`.

    Callers that create the version in the same transaction should hold the org row lock
    (tenancy.bump_org_revision first) so concurrent creators cannot both slip under it.
    """
    org = session.get(Org, org_id)
    if org is None:
        raise NotFound("org", org_id)
    limit = org.model_versions_monthly
    used = repo.created_since(session, org_id, month_start(utcnow()))
    if used + creating > limit:
        raise QuotaExceeded(
            f"the org's plan allows {limit} new model versions per calendar month (UTC) and "
            f"{used} were created this month; delete versions or upgrade the plan",
            [
                QuotaViolation(
                    subject=f"orgs/{org.name}",
                    description=f"{QUOTA_NAME}: limit {limit}, used {used}",
                )
            ],
            metadata={"quota": QUOTA_NAME, "limit": str(limit), "used": str(used)},
        )


def new_version(
    session: Session, org_id: str, model: Model, version_id: str, fields: VersionFields
) -> ModelVersion:
    """Insert a draft version after the quota check; the caller holds the org lock."""
    check_version_quota(session, org_id)
    mv = ModelVersion(
        org_id=model.org_id,
        model_uid=model.id,
        version=version_id,
        lifecycle_status="draft",
        description=fields.description,
        labels=dict(fields.labels),
    )
    mv.updated_at = mv.created_at = utcnow()
    session.add(mv)
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError:
        raise AlreadyExists(
            "model version", names.version_name(model.model_id, version_id)
        ) from None
    model.revision += 1  # version_count is part of the model
    return mv


def create_version(
    session: Session, org_id: str, parent: str, version_id: str, fields: VersionFields
) -> ModelVersionView:
    v = Violations()
    try:
        model_id = names.parse_model_name(parent, "parent")
    except InvalidArgument as exc:
        v.items.extend(exc.violations)
        model_id = ""
    problem = names.version_id_problem(version_id)
    if problem:
        v.add("version_id", problem)
    check_fields(v, "version", fields)
    v.raise_if_any()
    tenancy.bump_org_revision(session, org_id)  # org row lock: serialises the quota check
    model = _model(session, org_id, model_id)
    if repo.get(session, org_id, model_id, version_id) is not None:
        raise AlreadyExists("model version", names.version_name(model_id, version_id))
    mv = new_version(session, org_id, model, version_id, fields)
    return ModelVersionView(mv, model_id)


def get_version(session: Session, org_id: str, name: str) -> ModelVersionView:
    ref = names.parse_version_name(name, "name")
    mv, model_id = find(session, org_id, ref)
    return view(session, model_id, mv)


def list_versions(
    session: Session, org_id: str, parent: str, page_size: int, page_token: str
) -> VersionPage:
    model_id = names.parse_model_name(parent, "parent")
    page = page_of(page_size, page_token, "versions", model_id)
    model = _model(session, org_id, model_id)
    rows, total = repo.list_page(session, model.id, page.offset, page.size)
    return VersionPage(views(session, model_id, rows), page.next_token(len(rows), total))


def delete_version(session: Session, org_id: str, name: str, etag: str) -> None:
    """Delete the version; the database cascades to its catalog version, packages and
    resources. Object-store bytes stay for the garbage collector."""
    ref = names.parse_version_name(name, "name")
    tenancy.bump_org_revision(session, org_id)
    mv, model_id = find(session, org_id, ref)
    mv = repo.lock(session, mv)
    check_etag(etag, mv.id, version_revision(mv), names.version_name(model_id, mv.version))
    model = session.get(Model, mv.model_uid)
    session.delete(mv)
    if model is not None:
        model.revision += 1
    session.flush()


# An object is present when the store has it with the recorded size.
ObjectCheck = Callable[[str, int], bool]


def publish_version(
    session: Session, org_id: str, name: str, object_present: ObjectCheck
) -> ModelVersionView:
    """draft -> published when at least one package exists and every resource of every
    package has its size and sha256 recorded and its object present in the store."""
    ref = names.parse_version_name(name, "name")
    tenancy.bump_org_revision(session, org_id)
    mv, model_id = find(session, org_id, ref)
    mv = repo.lock(session, mv)
    vname = names.version_name(model_id, mv.version)
    if mv.lifecycle_status != "draft":
        raise FailedPrecondition(
            f"{vname} is already {mv.lifecycle_status}; only drafts can be published",
            [PreconditionViolation("STATE", vname, f"the version is {mv.lifecycle_status}")],
            reason="VERSION_NOT_DRAFT",
        )
    packages = repo.packages_of_model_version(session, mv.id)
    problems: list[PreconditionViolation] = []
    refs = repo.catalog_refs(session, [mv.id])
    variant_uid = refs[mv.id][0] if mv.id in refs else "-"
    if not packages:
        problems.append(
            PreconditionViolation(
                "NO_ARTIFACTS",
                vname,
                "the version has no uploaded artifact; upload one with UploadArtifacts, "
                "UploadBundle or GetUploadUrl + ConfirmUpload first",
            )
        )
    for p in packages:
        pname = names.package_name(variant_uid, p.catalog_version_id, p.id)
        if not p.resources:
            problems.append(PreconditionViolation("EMPTY_PACKAGE", pname, "has no resources"))
        for r in p.resources:
            rname = names.resource_name(variant_uid, p.catalog_version_id, p.id, r.id)
            if not r.sha256 or (r.size_bytes <= 0 and r.kind == "weights"):
                problems.append(
                    PreconditionViolation(
                        "CHECKSUM_MISSING", rname, "size and sha256 must be recorded"
                    )
                )
            elif r.storage_key is None or not object_present(r.storage_key, r.size_bytes):
                problems.append(
                    PreconditionViolation(
                        "OBJECT_MISSING",
                        rname,
                        "the file's bytes are not in object storage (or differ in size)",
                    )
                )
    if problems:
        raise FailedPrecondition(
            f"{vname} cannot be published: "
            + "; ".join(f"{p.subject}: {p.description}" for p in problems[:5]),
            problems,
            reason="PUBLISH_PRECONDITIONS",
        )
    mv.lifecycle_status = "published"
    mv.published_at = utcnow()
    touch(mv)
    session.flush()
    return view(session, model_id, mv)
