"""Models of an org's internal registry (ModelService CRUD, list and filter options)."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from domain import names
from domain.errors import AlreadyExists, NotFound, Violations
from domain.etags import check_etag
from domain.masks import mask_paths
from domain.paging import page_of
from domain.validation import check_description, check_framework, normalize_tags
from storage.orm import Model, utcnow
from storage.repos import models as repo
from storage.repos import tenancy

MUTABLE_FIELDS = ("framework", "description", "tags", "enabled")
ORDERS = tuple(repo.ORDERINGS)
MAX_SEARCH = 128


@dataclass(frozen=True)
class ModelFields:
    """The client-settable fields of a model."""

    framework: str = ""
    description: str = ""
    tags: list[str] = field(default_factory=list)
    enabled: bool = True


@dataclass(frozen=True)
class ModelView:
    model: Model
    version_count: int


@dataclass(frozen=True)
class ModelPage:
    models: list[ModelView]
    next_page_token: str
    total_size: int


def get_model(session: Session, org_id: str, model_id: str) -> Model:
    """The org's model, or NotFound (also for another org's model)."""
    model = repo.get(session, org_id, model_id)
    if model is None:
        raise NotFound("model", names.model_name(model_id))
    return model


def get_model_view(session: Session, org_id: str, model_id: str) -> ModelView:
    found = repo.get_counted(session, org_id, model_id)
    if found is None:
        raise NotFound("model", names.model_name(model_id))
    return ModelView(*found)


def view(session: Session, model: Model) -> ModelView:
    return ModelView(model, repo.version_counts(session, [model.id]).get(model.id, 0))


def create_model(session: Session, org_id: str, model_id: str, fields: ModelFields) -> ModelView:
    v = Violations()
    problem = names.model_id_problem(model_id)
    if problem:
        v.add("model_id", problem)
    check_framework(v, "model.framework", fields.framework, required=True)
    check_description(v, "model.description", fields.description)
    tags = normalize_tags(v, "model.tags", fields.tags)
    v.raise_if_any()
    tenancy.bump_org_revision(session, org_id)  # first: see bump_org_revision
    if repo.get(session, org_id, model_id) is not None:
        raise AlreadyExists("model", names.model_name(model_id))
    now = utcnow()
    model = Model(
        created_at=now,
        updated_at=now,
        org_id=org_id,
        model_id=model_id,
        framework=fields.framework,
        description=fields.description,
        tags=tags,
        enabled=fields.enabled,
    )
    session.add(model)
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError:
        # A concurrent create of the same id won the race.
        raise AlreadyExists("model", names.model_name(model_id)) from None
    return ModelView(model, 0)


def list_models(
    session: Session,
    org_id: str,
    flt: repo.ModelFilter,
    order: str,
    page_size: int,
    page_token: str,
) -> ModelPage:
    v = Violations()
    if flt.framework:
        check_framework(v, "framework", flt.framework, required=False)
    if flt.tag and not names.TAG_RE.match(flt.tag):
        v.add("tag", "is not a valid tag")
    if flt.capability and not names.TAG_RE.match(flt.capability):
        v.add("capability", "is not a valid capability")
    if len(flt.search) > MAX_SEARCH:
        v.add("search", f"must be at most {MAX_SEARCH} characters")
    if order not in repo.ORDERINGS:
        v.add("order_by", f"must be one of {', '.join(ORDERS)}")
    v.raise_if_any()
    page = page_of(page_size, page_token, flt, order)
    rows, total = repo.list_page(session, org_id, flt, order, page.offset, page.size)
    return ModelPage(
        [ModelView(m, count) for m, count in rows], page.next_token(len(rows), total), total
    )


def update_model(
    session: Session,
    org_id: str,
    model_id: str,
    fields: ModelFields,
    mask: list[str],
    etag: str,
) -> ModelView:
    paths = mask_paths(mask, MUTABLE_FIELDS)
    v = Violations()
    if "framework" in paths:
        check_framework(v, "model.framework", fields.framework, required=True)
    if "description" in paths:
        check_description(v, "model.description", fields.description)
    tags = normalize_tags(v, "model.tags", fields.tags) if "tags" in paths else []
    v.raise_if_any()
    tenancy.bump_org_revision(session, org_id)  # first: see bump_org_revision
    model = repo.get_for_update(session, org_id, model_id)
    if model is None:
        raise NotFound("model", names.model_name(model_id))
    check_etag(etag, model.id, model.revision, names.model_name(model_id))
    if "framework" in paths:
        model.framework = fields.framework
    if "description" in paths:
        model.description = fields.description
    if "tags" in paths:
        model.tags = tags
    if "enabled" in paths:
        model.enabled = fields.enabled
    model.revision += 1
    session.flush()
    return view(session, model)


def delete_model(session: Session, org_id: str, model_id: str, etag: str) -> None:
    """Delete the model; the database cascades to versions, catalog versions, packages and
    resources. Object-store bytes stay until the garbage collector's grace window passes."""
    tenancy.bump_org_revision(session, org_id)  # first: see bump_org_revision
    model = repo.get_for_update(session, org_id, model_id)
    if model is None:
        raise NotFound("model", names.model_name(model_id))
    check_etag(etag, model.id, model.revision, names.model_name(model_id))
    session.delete(model)
    session.flush()


@dataclass(frozen=True)
class FilterOptions:
    frameworks: list[str]
    capabilities: list[str]
    tags: list[str]


def filter_options(session: Session, org_id: str) -> FilterOptions:
    return FilterOptions(
        repo.distinct_frameworks(session, org_id),
        repo.distinct_capabilities(session, org_id),
        repo.distinct_tags(session, org_id),
    )
