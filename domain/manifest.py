"""The manifest (GetManifest, ResolveModel): what an SDK needs about every model name the
caller can see, and the cheap way to learn that nothing changed.

Contents, per model name: the org's Model (if any) and the variant that resolves for the
caller (domain.resolver's rule: the org's override beats the blessed row), that variant's
catalog versions newest first with their packages and resources. Anonymous callers see
the blessed catalog only.

Change detection: a *stamp* is (org id, org revision, blessed catalog revision). Every
write that can show in an org's manifest bumps the org's revision
(storage.repos.tenancy.bump_org_revision) and every blessed write bumps the catalog's
(storage.repos.catalog.bump_catalog_revision), in the same transaction. So an unchanged
stamp means an unchanged manifest, and reading the stamp is one indexed row lookup.

The etag itself is a hash of the manifest's content (computed where it is serialized), so
it changes exactly when the content does: a bump that changed nothing the manifest shows
(a model's description, a blessed variant the org overrides) leaves it as it was, and
another org's writes touch neither its stamp nor its content. ManifestCache maps stamps to
etags (and keeps the last few built manifests) so an if-none-match check costs the stamp
read plus a dictionary lookup.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy.orm import Session

from domain import names
from domain.errors import InvalidArgument, NotFound
from storage.repos import catalog as repo

T = TypeVar("T")

Stamp = tuple[str | None, int, int]
MAX_NAME = 128


def stamp(session: Session, org_id: str | None) -> Stamp:
    """What the caller's manifest is cached under; changes whenever it may have changed."""
    org_revision, catalog_revision = repo.manifest_revisions(session, org_id)
    return org_id, org_revision, catalog_revision


@dataclass(frozen=True)
class ManifestData:
    """The rows of one caller's manifest, grouped for building entries.

    Row layouts are those of storage.repos.catalog.manifest_rows; lists keep that order
    (versions newest first, packages by creation, resources in load order).
    """

    stamp: Stamp
    names: list[str]  # every model name, sorted
    models: dict[str, Any]  # model name -> (id, model_id, framework, enabled)
    variants: dict[str, Any]  # model name -> resolved variant row
    versions: dict[str, list[Any]]  # variant id -> its versions, newest first
    packages: dict[str, list[Any]]  # catalog version id -> packages
    resources: dict[str, list[Any]]  # package id -> resources


def load(session: Session, org_id: str | None, only: Sequence[str] | None = None) -> ManifestData:
    """The caller's manifest rows; `only` restricts it to those names. The stamp is read
    first, so the rows are at least as new as it (caching under it is safe)."""
    current = stamp(session, org_id)
    rows = repo.manifest_rows(session, org_id, only)
    models = {r.model_id: r for r in rows.models}
    variants = {r.name: r for r in rows.variants}
    versions: dict[str, list[Any]] = {}
    for r in rows.versions:
        versions.setdefault(r.variant_id, []).append(r)
    packages: dict[str, list[Any]] = {}
    for r in rows.packages:
        packages.setdefault(r.catalog_version_id, []).append(r)
    resources: dict[str, list[Any]] = {}
    for r in rows.resources:
        resources.setdefault(r.package_id, []).append(r)
    return ManifestData(
        current, sorted(models.keys() | variants.keys()), models, variants, versions, packages,
        resources,
    )  # fmt: skip


def load_entry(session: Session, org_id: str, model_id: str) -> ManifestData:
    """ResolveModel: the one entry for an exact, case-sensitive name, or NotFound when
    neither the org's models nor the variants visible to it have the name."""
    if not model_id:
        raise InvalidArgument.field("model_id", "is required")
    if len(model_id) > MAX_NAME:
        raise InvalidArgument.field("model_id", f"must be at most {MAX_NAME} characters")
    data = load(session, org_id, [model_id])
    if model_id not in data.models and model_id not in data.variants:
        raise NotFound(
            "model",
            names.model_name(model_id),
            f"no model or catalog variant named {model_id!r} is visible",
        )
    return data


def latest_active(versions: Sequence[Any]) -> Any | None:
    """The newest active version (versions are newest first); deprecated ones never win."""
    for v in versions:
        if v.lifecycle == "active":
            return v
    return None


def framework_of(model: Any | None, versions: Sequence[Any], packages: dict[str, list[Any]]) -> str:
    """The Model's framework, else the format of the latest version's first package (the
    latest active version, else the newest one)."""
    if model is not None and model.framework:
        return str(model.framework)
    chosen = latest_active(versions) or (versions[0] if versions else None)
    if chosen is not None:
        pkgs = packages.get(chosen.id)
        if pkgs:
            return str(pkgs[0].format)
    return ""


class ManifestCache(Generic[T]):
    """Per caller (org id, None for anonymous): the etag of its manifest at its latest seen
    stamp (many, they are small), and the built manifest itself for the most recently used
    few (they can be megabytes). Thread-safe; least recently used callers go first."""

    def __init__(self, max_etags: int = 100_000, max_bodies: int = 8) -> None:
        self._etags: OrderedDict[str | None, tuple[Stamp, str]] = OrderedDict()
        self._bodies: OrderedDict[str | None, tuple[Stamp, str, T]] = OrderedDict()
        self._max_etags = max_etags
        self._max_bodies = max_bodies
        self._lock = threading.Lock()

    def etag(self, key: Stamp) -> str | None:
        with self._lock:
            hit = self._etags.get(key[0])
            if hit is None or hit[0] != key:
                return None
            self._etags.move_to_end(key[0])
            return hit[1]

    def body(self, key: Stamp) -> tuple[str, T] | None:
        with self._lock:
            hit = self._bodies.get(key[0])
            if hit is None or hit[0] != key:
                return None
            self._bodies.move_to_end(key[0])
            return hit[1], hit[2]

    def last_body(self, caller: str | None) -> T | None:
        """The most recent manifest built for the caller, whatever its stamp (to reuse
        its unchanged parts in the next build)."""
        with self._lock:
            hit = self._bodies.get(caller)
            return hit[2] if hit is not None else None

    def put(self, key: Stamp, etag: str, body: T) -> None:
        with self._lock:
            current = self._etags.get(key[0])
            if current is not None and _newer(current[0], key):
                return  # a slower build of an older stamp finished last
            self._etags[key[0]] = (key, etag)
            self._etags.move_to_end(key[0])
            self._bodies[key[0]] = (key, etag, body)
            self._bodies.move_to_end(key[0])
            while len(self._etags) > self._max_etags:
                self._etags.popitem(last=False)
            while len(self._bodies) > self._max_bodies:
                self._bodies.popitem(last=False)


def _newer(a: Stamp, b: Stamp) -> bool:
    """Stamp a is strictly later than b (revisions only grow)."""
    return a[1] >= b[1] and a[2] >= b[2] and a != b
