"""Queries over the catalog: variants, catalog versions, packages, resources, the blessed
catalog's revision, and the flat row sets the manifest is built from.

Visibility: an org sees blessed rows (org_id NULL) and its own overrides; `org_id=None`
means an anonymous caller, who sees blessed rows only. Name resolution itself lives in
storage.repos.variants (used through domain.resolver).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    String,
    and_,
    bindparam,
    cast,
    delete,
    extract,
    func,
    insert,
    or_,
    select,
    type_coerce,
    union,
    update,
)
from sqlalchemy.orm import Session, selectinload

from storage.db import BINARY_RESULTS, before_commit, note_revision_bump
from storage.orm import (
    ANONYMOUS_SCOPE,
    ArtifactPackage,
    ArtifactResource,
    CatalogVariant,
    CatalogVersion,
    ManifestBuildClaim,
    ManifestChange,
    ManifestSnapshot,
    ManifestTail,
    Model,
    ModelVersion,
    Org,
)
from storage.orm.catalog import CatalogState
from storage.repos import dialects, json_ops, variants
from storage.repos.paging import page_and_total

CATALOG_STATE_ID = 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# ---------------------------------------------------------------------------------------
# revisions


def bump_catalog_revision(session: Session) -> None:
    """Mark the blessed catalog changed; runs in the caller's transaction."""
    result = session.execute(
        update(CatalogState)
        .where(CatalogState.id == CATALOG_STATE_ID)
        .values(revision=CatalogState.revision + 1)
    )
    if getattr(result, "rowcount", 1) == 0:  # a schema made without the migration's seed row
        session.execute(insert(CatalogState).values(id=CATALOG_STATE_ID, revision=2))
    revision_bumped(session, None)


def revision_bumped(session: Session, scope: str | None) -> None:
    """What follows the bump of a manifest scope's revision (an org id; None: the blessed
    catalog) in the same transaction: noted for whoever runs it to act on once it commits
    (storage.db.note_revision_bump), and the names pending in the scope's change log
    stamped with that revision just before it commits. The transaction holds the scope's
    row lock from its bump on, and everything pending when it commits is visible to a
    build at that revision.

    The bump's trigger stamps the names pending when it runs, so without this the names
    a transaction writes after its bump (as every quota-checked writer does) stay pending
    until the next bump, and the next patch of the manifest built at this revision reads
    them again: a bulk write of 2,000 names made the patch after the following
    one-name write read 2,001 (storage.orm.catalog.ManifestChange)."""
    note_revision_bump(session, scope)
    before_commit(session, ("manifest_changes", scope), partial(_stamp_pending, scope=scope))


def _stamp_pending(session: Session, scope: str | None) -> None:
    rows: ColumnElement[bool]
    if scope is None:
        revision = _CATALOG_REVISION_OF
        rows = ManifestChange.org_id.is_(None)
    else:
        revision = select(Org.revision).where(Org.id == scope).scalar_subquery()
        rows = ManifestChange.org_id == scope
    session.execute(
        update(ManifestChange)
        .where(rows, ManifestChange.revision.is_(None))
        .values(revision=revision)
        .execution_options(synchronize_session=False)
    )


def lock_catalog(session: Session) -> None:
    """Lock the blessed catalog's revision row until the transaction ends, without bumping
    it (writers take it before writing under a variant; see domain.catalog._bump)."""
    session.execute(
        select(CatalogState.id).where(CatalogState.id == CATALOG_STATE_ID).with_for_update()
    )


def manifest_revisions(session: Session, org_id: str | None) -> tuple[int, int]:
    """(org revision, blessed catalog revision) in one round trip; the org part is 0 for
    anonymous callers. Together they change whenever the caller's manifest may have."""
    # Built once and run on the connection: every polling device runs this, and the ORM's
    # execution path cost more than the query (PostgreSQL: 0.8-1.2 ms vs 0.35 per check).
    conn = session.connection()
    if org_id is None:
        value = conn.execute(_CATALOG_REVISION).scalar()
        return 0, int(value or 0)
    row = conn.execute(_REVISIONS, {"org_id": org_id}).first()
    if row is None:
        return 0, 0
    return int(row[0]), int(row[1] or 0)


_CATALOG_REVISION_OF = (
    select(CatalogState.revision).where(CatalogState.id == CATALOG_STATE_ID).scalar_subquery()
)
_CATALOG_REVISION = select(_CATALOG_REVISION_OF)
_REVISIONS = select(Org.revision, _CATALOG_REVISION_OF).where(Org.id == bindparam("org_id"))


# ---------------------------------------------------------------------------------------
# variants


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def get_variant(session: Session, org_id: str | None, uid: str) -> CatalogVariant | None:
    """A variant the org may see (blessed or its own), by uid."""
    return session.scalars(
        select(CatalogVariant).where(CatalogVariant.id == uid, variants.visible_to(org_id))
    ).one_or_none()


def get_variant_for_update(session: Session, org_id: str, uid: str) -> CatalogVariant | None:
    return session.scalars(
        select(CatalogVariant)
        .where(CatalogVariant.id == uid, variants.visible_to(org_id))
        .with_for_update()
    ).one_or_none()


@dataclass
class BlessedRows:
    """Blessed variants by name with everything under them, as ORM rows to update."""

    variants: dict[str, CatalogVariant]
    versions: dict[tuple[str, str], CatalogVersion]  # (variant id, version) -> row
    packages: dict[str, list[ArtifactPackage]]  # catalog version id -> its packages
    resources: dict[str, list[ArtifactResource]]  # package id -> its resources


def blessed_rows_named(session: Session, names: Sequence[str]) -> BlessedRows:
    """The blessed variants of these names and their versions, packages and resources: a
    query per table, not one per row (catalog import)."""

    def each(column: Any, ids: Sequence[str], *where: ColumnElement[bool]) -> list[Any]:
        wanted = dialects.one_of(session, column, ids)
        return list(session.scalars(select(column.class_).where(wanted, *where)))

    variants = each(CatalogVariant.name, names, CatalogVariant.org_id.is_(None))
    versions = each(CatalogVersion.variant_id, [v.id for v in variants])
    packages = each(ArtifactPackage.catalog_version_id, [cv.id for cv in versions])
    rows = BlessedRows(
        {v.name: v for v in variants}, {(cv.variant_id, cv.version): cv for cv in versions}, {}, {}
    )
    for p in packages:
        rows.packages.setdefault(p.catalog_version_id, []).append(p)
    for r in each(ArtifactResource.package_id, [p.id for p in packages]):
        rows.resources.setdefault(r.package_id, []).append(r)
    return rows


def variant_in_scope(session: Session, org_id: str | None, name: str) -> CatalogVariant | None:
    """The variant named `name` owned by exactly this scope (None: the blessed row)."""
    owner = CatalogVariant.org_id.is_(None) if org_id is None else CatalogVariant.org_id == org_id
    return session.scalars(
        select(CatalogVariant).where(CatalogVariant.name == name, owner)
    ).one_or_none()


@dataclass(frozen=True)
class VariantFilter:
    scope: str = "all"  # all | blessed | org | resolved
    task: str = ""
    search: str = ""


def _variant_conditions(
    session: Session, org_id: str, f: VariantFilter
) -> list[ColumnElement[bool]]:
    dialect = session.get_bind().dialect
    if f.scope == "blessed":
        conds: list[ColumnElement[bool]] = [CatalogVariant.org_id.is_(None)]
    elif f.scope == "org":
        conds = [CatalogVariant.org_id == org_id]
    elif f.scope == "resolved":
        conds = [variants.resolved_for(org_id)]
    else:
        conds = [variants.visible_to(org_id)]
    if f.task:
        conds.append(json_ops.array_contains(CatalogVariant.task_taxonomy, f.task, dialect))
    if f.search:
        pattern = f"%{_escape_like(f.search.lower())}%"
        conds.append(func.lower(CatalogVariant.name).like(pattern, escape="\\"))
    return conds


def list_variants(
    session: Session, org_id: str, f: VariantFilter, offset: int, limit: int
) -> tuple[list[CatalogVariant], int]:
    """A page of variants by name, the org's override before the blessed row; and the
    number of matches."""
    base = select(CatalogVariant).where(*_variant_conditions(session, org_id, f))
    blessed_last = CatalogVariant.org_id.is_(None)
    order = (CatalogVariant.name, blessed_last, CatalogVariant.id)
    return page_and_total(session, base, order, offset, limit)


# ---------------------------------------------------------------------------------------
# catalog versions


def get_version(
    session: Session,
    org_id: str | None,
    uid: str,
    variant_uid: str | None = None,
    *,
    for_update: bool = False,
) -> CatalogVersion | None:
    """A catalog version of a variant the org may see; `variant` is loaded with it."""
    query = (
        select(CatalogVersion)
        .join(CatalogVariant, CatalogVariant.id == CatalogVersion.variant_id)
        .where(CatalogVersion.id == uid, variants.visible_to(org_id))
        .options(selectinload(CatalogVersion.variant))
    )
    if variant_uid is not None:
        query = query.where(CatalogVersion.variant_id == variant_uid)
    if for_update:
        query = query.with_for_update(of=CatalogVersion)
    return session.scalars(query).one_or_none()


_NEWEST_FIRST = (CatalogVersion.created_at.desc(), CatalogVersion.id.desc())


def list_versions(
    session: Session, variant_uid: str, offset: int, limit: int
) -> tuple[list[CatalogVersion], int]:
    base = select(CatalogVersion).where(CatalogVersion.variant_id == variant_uid)
    return page_and_total(session, base, _NEWEST_FIRST, offset, limit)


def total_sizes(session: Session, version_uids: Sequence[str]) -> dict[str, int]:
    """Sum of resource sizes per catalog version."""
    if not version_uids:
        return {}
    rows = session.execute(
        select(ArtifactPackage.catalog_version_id, func.sum(ArtifactResource.size_bytes))
        .join(ArtifactResource, ArtifactResource.package_id == ArtifactPackage.id)
        .where(ArtifactPackage.catalog_version_id.in_(version_uids))
        .group_by(ArtifactPackage.catalog_version_id)
    ).all()
    return {uid: int(total or 0) for uid, total in rows}


def model_version_names(
    session: Session, model_version_uids: Iterable[str]
) -> dict[str, tuple[str, str]]:
    """model_versions.id -> (model slug, version string)."""
    wanted = set(model_version_uids)
    if not wanted:
        return {}
    rows = session.execute(
        select(ModelVersion.id, Model.model_id, ModelVersion.version)
        .join(Model, Model.id == ModelVersion.model_uid)
        .where(ModelVersion.id.in_(wanted))
    ).all()
    return {uid: (model_id, version) for uid, model_id, version in rows}


# ---------------------------------------------------------------------------------------
# packages and resources

_PACKAGE_ORDER = (ArtifactPackage.created_at, ArtifactPackage.id)


def packages_of_version(
    session: Session, version_uid: str, offset: int, limit: int
) -> tuple[list[ArtifactPackage], int]:
    base = select(ArtifactPackage).where(ArtifactPackage.catalog_version_id == version_uid)
    return page_and_total(
        session, base, _PACKAGE_ORDER, offset, limit, selectinload(ArtifactPackage.resources)
    )


def packages_of_variant(
    session: Session, variant_uid: str, offset: int, limit: int
) -> tuple[list[ArtifactPackage], int]:
    """Packages across every catalog version of the variant, newest version first."""
    base = (
        select(ArtifactPackage)
        .join(CatalogVersion, CatalogVersion.id == ArtifactPackage.catalog_version_id)
        .where(CatalogVersion.variant_id == variant_uid)
    )
    return page_and_total(
        session,
        base,
        (*_NEWEST_FIRST, *_PACKAGE_ORDER),
        offset,
        limit,
        selectinload(ArtifactPackage.resources),
    )


def all_packages_of_version(session: Session, version_uid: str) -> list[ArtifactPackage]:
    return list(
        session.scalars(
            select(ArtifactPackage)
            .where(ArtifactPackage.catalog_version_id == version_uid)
            .order_by(*_PACKAGE_ORDER)
            .options(selectinload(ArtifactPackage.resources))
        )
    )


def model_enabled(session: Session, org_id: str, model_id: str) -> bool | None:
    """The org's model's `enabled` flag, or None when it has no model of that name."""
    return session.scalar(
        select(Model.enabled).where(Model.org_id == org_id, Model.model_id == model_id)
    )


# ---------------------------------------------------------------------------------------
# manifest rows: flat tuples (no ORM identity map), one query per table


def _raw(column: Any) -> Any:
    """The column as the driver returns it, skipping SQLAlchemy's per-value processing
    (ten thousands of rows): timestamps are ISO text (naive UTC) on SQLite and datetimes
    on PostgreSQL, JSON is text on SQLite and already decoded on PostgreSQL."""
    return type_coerce(column, String).label(column.key)


def _key_time(session: Session, column: Any) -> Any:
    """A variant's updated_at as its manifest content key holds it (domain.manifest.
    VariantKey): on PostgreSQL epoch microseconds, an int (a key is hashed and compared
    10,000s of times per build, and an aware datetime's hash costs more than the rest of
    the lookup); on SQLite the stored ISO text (a str, whose hash Python caches)."""
    if session.get_bind().dialect.name == "postgresql":
        return cast(extract("epoch", column) * 1_000_000, BigInteger).label(column.key)
    return _raw(column)


def manifest_snapshot(session: Session) -> None:
    """Make the rest of this read transaction see one snapshot: on PostgreSQL, REPEATABLE
    READ (must run before the transaction's first statement); SQLite's read transactions
    are snapshots already. So the revisions read first describe exactly the rows read
    after them."""
    if session.get_bind().dialect.name == "postgresql":
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})


@dataclass(frozen=True)
class ManifestRows:
    """Everything a caller's manifest shows, as plain rows; see domain.manifest."""

    models: Sequence[Any]  # id, model_id, framework, enabled
    variants: Sequence[Any]  # id, org_id, name, family, task_taxonomy, ...
    versions: Sequence[Any]  # id, variant_id, version, lifecycle, created_at
    packages: Sequence[Any]  # id, catalog_version_id, format, quantization, ...
    resources: Sequence[Any]  # id, package_id, kind, file_name, stored, ...


@dataclass(frozen=True)
class ManifestIndexRows:
    """One row per model name of a caller's manifest, without the variants' subtrees."""

    models: Sequence[Any]  # model_id, framework, enabled
    # id, content_revision, updated_at (_key_time), name, blessed
    variants: Sequence[Any]


def manifest_index(
    session: Session, org_id: str | None, names: Collection[str] | None = None
) -> ManifestIndexRows:
    """The org's models and the variants that resolve for it (its overrides beat blessed
    rows), with what keys a variant's content: its content_revision (bumped by triggers on
    every write under it) and updated_at (its own fields). `names` restricts both to those
    model names."""
    conn = session.connection()
    model_query = select(Model.model_id, Model.framework, Model.enabled).where(
        Model.org_id == org_id
    )
    columns = (
        CatalogVariant.id,
        CatalogVariant.content_revision,
        _key_time(session, CatalogVariant.updated_at),
        CatalogVariant.name,
    )
    model_where, variant_where = _named(session, names)
    model_rows: Sequence[Any] = []
    if org_id is not None:
        model_rows = conn.execute(
            model_query.where(*model_where), execution_options=BINARY_RESULTS
        ).all()
    # .all(): one fetchall, where iterating fetches row by row (30 ms more for 20,000)
    variant_rows = conn.execute(
        variants.resolved_rows(org_id, columns, *variant_where),
        execution_options=BINARY_RESULTS,
    ).all()
    return ManifestIndexRows(model_rows, variant_rows)


def _named(
    session: Session, names: Collection[str] | None
) -> tuple[list[ColumnElement[bool]], list[ColumnElement[bool]]]:
    """(Models' conditions, variants' conditions) restricting each to the model names
    `names`; none when None."""
    if names is None:
        return [], []
    return (
        [dialects.one_of(session, Model.model_id, names)],
        [dialects.one_of(session, CatalogVariant.name, names)],
    )


def manifest_tails(
    session: Session, org_id: str | None, variant_ids: Collection[str] | None, entry_format: int
) -> Sequence[Any]:
    """(variant id, content_revision, updated_at (_key_time), data, framework, digest,
    entry_framework, entry_enabled, entry_prefix, entry_etag) of the stored subtrees of
    `variant_ids`, or of every variant the org can see when None, serialized in
    `entry_format` (ManifestTail.entry_format). The caller keeps those whose key is still
    the variant's (manifest_index's)."""
    conn = session.connection()
    query = select(
        ManifestTail.variant_id,
        ManifestTail.content_revision,
        _key_time(session, ManifestTail.variant_updated_at),
        ManifestTail.data,
        ManifestTail.framework,
        ManifestTail.digest,
        ManifestTail.entry_framework,
        ManifestTail.entry_enabled,
        ManifestTail.entry_prefix,
        ManifestTail.entry_etag,
    ).where(ManifestTail.entry_format == entry_format)
    if variant_ids is None:
        visible: ColumnElement[bool] = ManifestTail.org_id.is_(None)
        if org_id is not None:
            visible = or_(visible, ManifestTail.org_id == org_id)
        return conn.execute(query.where(visible), execution_options=BINARY_RESULTS).all()
    wanted = dialects.one_of(session, ManifestTail.variant_id, variant_ids)
    return conn.execute(query.where(wanted), execution_options=BINARY_RESULTS).all()


# A manifest_tails row as save_manifest_tails takes it, in _TAIL_COLUMNS' order
# (variant_updated_at as _key_time reads it).
TailRow = tuple[
    str, int, int | str, bytes, str, bytes, str | None, bool | None, bytes | None, bytes | None
]
_TAIL_COLUMNS = (
    "variant_id", "content_revision", "variant_updated_at", "data", "framework", "digest",
    "entry_framework", "entry_enabled", "entry_prefix", "entry_etag",
)  # fmt: skip


def save_manifest_tails(
    session: Session,
    tails: Sequence[TailRow],
    entry_format: int,
) -> None:
    """Store rows serialized in `entry_format`, replacing older ones (of any format: one
    row per variant). A variant deleted meanwhile is skipped; a row whose key is already
    stale is harmless (never used, see ManifestTail)."""
    # In id order: two servers saving overlapping sets lock the rows in one order (on
    # PostgreSQL, any other order can deadlock them).
    tails = sorted(tails, key=lambda t: t[0])
    ids = dialects.one_of(session, CatalogVariant.id, [t[0] for t in tails])
    orgs = {
        vid: org
        for vid, org in session.execute(select(CatalogVariant.id, CatalogVariant.org_id).where(ids))
    }
    rows = [
        {
            **dict(zip(_TAIL_COLUMNS, t, strict=True)),
            "org_id": orgs[t[0]],
            "variant_updated_at": _from_key_time(t[2]),
            "entry_format": entry_format,
        }
        for t in tails
        if t[0] in orgs
    ]
    if rows:
        session.connection().execute(_tail_upsert(session), rows)


_TAIL_UPSERTS: dict[str, Any] = {}


def _tail_upsert(session: Session) -> Any:
    """The upsert of one manifest_tails row, run once per row (executemany). Built once
    per dialect: a statement with 1,000 rows of values, compiled anew for each batch, took
    0.25 s of CPU per 1,000 rows (2.5 s holding the GIL after a first build of 10,000)."""
    dialect = session.get_bind().dialect.name
    stmt = _TAIL_UPSERTS.get(dialect)
    if stmt is None:
        table = ManifestTail.__table__
        insert = dialects.insert(session, table)
        excluded = insert.excluded
        stmt = _TAIL_UPSERTS[dialect] = insert.on_conflict_do_update(
            index_elements=[table.c.variant_id],
            set_={column: excluded[column] for column in (*_TAIL_COLUMNS[1:], "entry_format")},
            # Two builders racing: the later key wins, whichever writes last.
            where=table.c.content_revision <= excluded.content_revision,
        )
    return stmt


def manifest_changes(
    session: Session,
    org_id: str | None,
    org_since: int,
    catalog_since: int,
    at_most: int | None = None,
) -> tuple[tuple[int, int], set[str] | None, bool]:
    """(the caller's revisions now, as manifest_revisions reads them; the model names whose
    entries may have changed for it after its org revision `org_since` and the catalog's
    `catalog_since`; whether those are all of them). The names are the ManifestChange rows
    logged after those revisions, or still pending. They are all unless a floor is above
    its revision; then they still hold every name that is in the scope now (the
    tombstones of names deleted before the floor are gone: manifest_sources finds those),
    unless a live floor is above it too: then None (see ManifestChange). Also None when
    over `at_most` rows are logged (the reading stops there: a caller that only patches
    up to that many names need not fetch 10,000 to learn it will not)."""
    conn = session.connection()
    if org_id is None:
        row = conn.execute(_CATALOG_REVISION_AND_FLOORS).first()
        org_revision = org_floor = org_live = 0
        catalog_revision, catalog_floor, catalog_live = row if row is not None else (0, 0, 0)
    else:
        found = conn.execute(_REVISIONS_AND_FLOORS, {"org_id": org_id}).first()
        if found is None:
            return (0, 0), None, False
        org_revision, org_floor, org_live, catalog_revision, catalog_floor, catalog_live = found
    revisions = int(org_revision), int(catalog_revision or 0)
    if org_since < int(org_live) or catalog_since < int(catalog_live or 0):
        return revisions, None, False
    complete = org_since >= int(org_floor) and catalog_since >= int(catalog_floor or 0)
    limit = _NO_LIMIT if at_most is None else at_most + 1
    params: dict[str, str | int]
    if org_id is None:
        query, params = _CATALOG_CHANGES, {"catalog_since": catalog_since, "limit": limit}
    else:
        query = _CHANGES
        params = {
            "org_id": org_id, "org_since": org_since, "catalog_since": catalog_since,
            "limit": limit,
        }  # fmt: skip
    # .all(): one fetchall, not a fetch per row (manifest_index)
    names = conn.execute(query, params).scalars().all()
    if len(names) >= limit:
        return revisions, None, complete
    return revisions, set(names), complete


def manifest_sources(session: Session, org_id: str | None) -> tuple[set[str], set[tuple[str, str]]]:
    """What every entry of the caller's manifest comes from, without the rows: the names
    of the org's Models, and (id, name) of each variant that resolves for it."""
    conn = session.connection()
    models: set[str] = set()
    if org_id is not None:  # .all(): one fetchall, not a fetch per row (manifest_index)
        models = set(conn.execute(_MODEL_NAMES, {"org_id": org_id}).scalars().all())
    columns = (CatalogVariant.id, CatalogVariant.name)
    rows = conn.execute(variants.resolved_rows(org_id, columns)).all()
    return models, {(r[0], r[1]) for r in rows}


def _changed_after(since: str) -> ColumnElement[bool]:
    return or_(ManifestChange.revision > bindparam(since), ManifestChange.revision.is_(None))


# Built once, as _REVISIONS: they run on every rebuild.
_REVISIONS_AND_FLOORS = select(
    Org.revision,
    Org.manifest_changes_floor,
    Org.manifest_live_floor,
    _CATALOG_REVISION_OF,
    select(CatalogState.manifest_changes_floor)
    .where(CatalogState.id == CATALOG_STATE_ID)
    .scalar_subquery(),
    select(CatalogState.manifest_live_floor)
    .where(CatalogState.id == CATALOG_STATE_ID)
    .scalar_subquery(),
).where(Org.id == bindparam("org_id"))
_CATALOG_REVISION_AND_FLOORS = select(
    CatalogState.revision, CatalogState.manifest_changes_floor, CatalogState.manifest_live_floor
).where(CatalogState.id == CATALOG_STATE_ID)
_CATALOG_CHANGED = and_(ManifestChange.org_id.is_(None), _changed_after("catalog_since"))
# Rows (a name logged in both scopes counts twice) read at most: manifest_changes' at_most.
_LIMIT = bindparam("limit", type_=BigInteger)
_NO_LIMIT = 2**62
_CATALOG_CHANGES = select(ManifestChange.name).where(_CATALOG_CHANGED).limit(_LIMIT)
_MODEL_NAMES = select(Model.model_id).where(Model.org_id == bindparam("org_id"))
_CHANGES = (
    select(ManifestChange.name)
    .where(
        or_(
            _CATALOG_CHANGED,
            and_(ManifestChange.org_id == bindparam("org_id"), _changed_after("org_since")),
        )
    )
    .limit(_LIMIT)
)


def _snapshot_scope(org_id: str | None) -> str:
    return org_id if org_id is not None else ANONYMOUS_SCOPE


def orgs_with_names(session: Session, at_least: int) -> list[str]:
    """The orgs with at least `at_least` model names of their own (a Model, an override
    variant, or both: counted once)."""
    names = union(
        select(Model.org_id, Model.model_id.label("name")),
        select(CatalogVariant.org_id, CatalogVariant.name).where(
            CatalogVariant.org_id.is_not(None)
        ),
    ).subquery()
    query = select(names.c.org_id).group_by(names.c.org_id).having(func.count() >= at_least)
    return list(session.scalars(query))


def _org_gone(session: Session, org_id: str | None) -> bool:
    """The caller's org was deleted (the anonymous caller has none to lose): what would be
    written for it would outlive it, or be refused by its foreign key."""
    return org_id is not None and session.get(Org, org_id) is None


def _stored_in(org_id: str | None, entry_format: int) -> ColumnElement[bool]:
    return and_(
        ManifestSnapshot.scope == _snapshot_scope(org_id),
        ManifestSnapshot.entry_format == entry_format,
    )


def stored_manifest(
    session: Session, org_id: str | None, entry_format: int
) -> tuple[int, int, bytes] | None:
    """The caller's stored manifest in `entry_format` (ManifestSnapshot.entry_format):
    (org revision, catalog revision, data), or None."""
    row = (
        session.connection()
        .execute(
            select(
                ManifestSnapshot.org_revision,
                ManifestSnapshot.catalog_revision,
                ManifestSnapshot.data,
            ).where(_stored_in(org_id, entry_format)),
            execution_options=BINARY_RESULTS,
        )
        .first()
    )
    return None if row is None else (int(row[0]), int(row[1]), bytes(row[2]))


def stored_manifest_stamp(
    session: Session, org_id: str | None, entry_format: int
) -> tuple[int, int] | None:
    """The (org revision, catalog revision) of the caller's stored manifest in
    `entry_format`, or None."""
    row = session.execute(
        select(ManifestSnapshot.org_revision, ManifestSnapshot.catalog_revision).where(
            _stored_in(org_id, entry_format)
        )
    ).first()
    return None if row is None else (int(row[0]), int(row[1]))


def store_manifest(
    session: Session,
    org_id: str | None,
    org_revision: int,
    catalog_revision: int,
    entry_format: int,
    data: bytes,
) -> None:
    """Store the caller's manifest built at (org_revision, catalog_revision) in
    `entry_format`, unless the one stored in the same format is newer (revisions only
    grow: a slower writer of an older build loses); one in another format is replaced.
    An org deleted meanwhile stores nothing."""
    if _org_gone(session, org_id):
        return
    stmt = dialects.insert(session, ManifestSnapshot).values(
        scope=_snapshot_scope(org_id),
        org_id=org_id,
        org_revision=org_revision,
        catalog_revision=catalog_revision,
        entry_format=entry_format,
        data=data,
    )
    excluded = stmt.excluded
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=[ManifestSnapshot.scope],
            set_={
                "org_revision": excluded.org_revision,
                "catalog_revision": excluded.catalog_revision,
                "entry_format": excluded.entry_format,
                "data": excluded.data,
            },
            where=(ManifestSnapshot.entry_format != excluded.entry_format)
            | (
                (ManifestSnapshot.org_revision <= excluded.org_revision)
                & (ManifestSnapshot.catalog_revision <= excluded.catalog_revision)
            ),
        )
    )


def claim_manifest_build(
    session: Session, org_id: str | None, holder: str, now: datetime, until: datetime
) -> bool:
    """Take the claim on building the caller's manifest (ManifestBuildClaim) for `holder`
    until `until`, unless another holder's is current at `now`. True when taken. An org
    deleted meanwhile has nothing to build (False)."""
    if _org_gone(session, org_id):
        return False
    stmt = dialects.insert(session, ManifestBuildClaim).values(
        scope=_snapshot_scope(org_id), org_id=org_id, holder=holder, until=until
    )
    excluded = stmt.excluded
    taken = session.execute(
        stmt.on_conflict_do_update(
            index_elements=[ManifestBuildClaim.scope],
            set_={"holder": excluded.holder, "until": excluded.until},
            where=ManifestBuildClaim.until <= now,
        ).returning(ManifestBuildClaim.scope)
    ).first()
    return taken is not None


def release_manifest_build(session: Session, org_id: str | None, holder: str) -> None:
    """Drop `holder`'s claim on the caller's build (not one another holder took since)."""
    session.execute(
        delete(ManifestBuildClaim).where(
            ManifestBuildClaim.scope == _snapshot_scope(org_id),
            ManifestBuildClaim.holder == holder,
        )
    )


def _from_key_time(value: int | str) -> datetime:
    """A key's timestamp (_key_time) back as the aware datetime UTCDateTime binds (which
    stores the same text on SQLite, the same instant on PostgreSQL)."""
    if isinstance(value, int):
        return _EPOCH + timedelta(microseconds=value)
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


def manifest_rows(
    session: Session, org_id: str | None, names: Sequence[str] | None = None
) -> ManifestRows:
    """The org's models and the variants that resolve for it (its overrides beat blessed
    rows), with their versions (newest first), packages and resources (in load order).
    `names` restricts everything to those model names."""
    conn = session.connection()  # Core results: no ORM row loading for 10,000s of rows
    model_where, variant_where = _named(session, names)
    variant_where.append(variants.resolved_for(org_id))
    model_rows: Sequence[Any] = []
    if org_id is not None:
        model_rows = conn.execute(
            select(Model.id, Model.model_id, Model.framework, Model.enabled).where(
                Model.org_id == org_id, *model_where
            )
        ).all()
    subtrees = _subtree_rows(session, variant_where)
    return ManifestRows(model_rows, *subtrees)


def manifest_subtrees(
    session: Session, org_id: str | None, variant_ids: Sequence[str] | None
) -> ManifestRows:
    """The variant rows with their versions, packages and resources (orders as in
    manifest_rows), for `variant_ids`, or for every variant that resolves for the org
    when None (cheaper than long id lists when most are wanted). `models` is empty."""
    if variant_ids is None:
        return ManifestRows([], *_subtree_rows(session, [variants.resolved_for(org_id)]))
    wanted = dialects.one_of(session, CatalogVariant.id, variant_ids)
    return ManifestRows([], *_subtree_rows(session, [wanted]))


def _subtree_rows(
    session: Session, variant_where: list[ColumnElement[bool]]
) -> tuple[Sequence[Any], Sequence[Any], Sequence[Any], Sequence[Any]]:
    conn = session.connection()
    variant_rows = conn.execute(
        select(
            CatalogVariant.id,
            CatalogVariant.org_id,
            CatalogVariant.name,
            CatalogVariant.family,
            _raw(CatalogVariant.task_taxonomy),
            CatalogVariant.parameter_count,
            CatalogVariant.license,
            CatalogVariant.description,
            _raw(CatalogVariant.created_at),
            _raw(CatalogVariant.updated_at),
            CatalogVariant.content_revision,
        ).where(*variant_where)
    ).all()
    if not variant_rows:
        return variant_rows, [], [], []
    version_rows = conn.execute(
        select(
            CatalogVersion.id,
            CatalogVersion.variant_id,
            CatalogVersion.version,
            CatalogVersion.lifecycle,
            _raw(CatalogVersion.created_at),
        )
        .join(CatalogVariant, CatalogVariant.id == CatalogVersion.variant_id)
        .where(*variant_where)
        .order_by(*_NEWEST_FIRST)
    ).all()
    package_rows = conn.execute(
        select(
            ArtifactPackage.id,
            ArtifactPackage.catalog_version_id,
            ArtifactPackage.format,
            ArtifactPackage.quantization,
            ArtifactPackage.runtime,
            ArtifactPackage.source,
            _raw(ArtifactPackage.metrics),
            _raw(ArtifactPackage.created_at),
            CatalogVersion.variant_id,
        )
        .join(CatalogVersion, CatalogVersion.id == ArtifactPackage.catalog_version_id)
        .join(CatalogVariant, CatalogVariant.id == CatalogVersion.variant_id)
        .where(*variant_where)
        .order_by(*_PACKAGE_ORDER)
    ).all()
    resource_rows = conn.execute(
        select(
            ArtifactResource.id,
            ArtifactResource.package_id,
            ArtifactResource.kind,
            ArtifactResource.file_name,
            ArtifactResource.storage_key.is_not(None).label("stored"),
            ArtifactResource.size_bytes,
            ArtifactResource.sha256,
            ArtifactResource.required,
            ArtifactResource.load_order,
            _raw(ArtifactResource.created_at),
        )
        .join(ArtifactPackage, ArtifactPackage.id == ArtifactResource.package_id)
        .join(CatalogVersion, CatalogVersion.id == ArtifactPackage.catalog_version_id)
        .join(CatalogVariant, CatalogVariant.id == CatalogVersion.variant_id)
        .where(*variant_where)
        .order_by(ArtifactResource.load_order, ArtifactResource.created_at, ArtifactResource.id)
    ).all()
    return variant_rows, version_rows, package_rows, resource_rows
