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
etags (and keeps recently built manifests) so an if-none-match check costs the stamp read
plus a dictionary lookup.

Building (load_index): one row per model name (the org's Model, the variant that resolves)
plus, for each variant, the key of its content: (id, content_revision, updated_at).
content_revision is bumped by database triggers on every write of the variant's versions,
packages or resources, updated_at by every write of its own fields, so equal keys mean an
equal subtree. The server keeps the serialized subtree per key (server/manifest_pb.py);
only the subtrees of keys it does not hold are loaded: their serialized bytes from the
manifest_tails table when stored under the current key and in the reader's format of the
serialization (written back after each build, so a restarted server or a new replica does
not re-serialize every variant; a release that serializes otherwise does not read them),
with the map entry last made around them and the Model row it was made with (Index.entries:
taken as it is for the same Model row), else their rows.

Rebuilds (load_changes): database triggers log every written model name per revision of
its scope (the org's, or the blessed catalog's; storage.orm.catalog.ManifestChange), so a
build that has the caller's previous manifest reads the rows of only the names changed
since that manifest's stamp and patches it (server/manifest_pb.patch), instead of one row
per model name. When the log no longer reaches back that far (only deleted names' rows are
pruned), it also reads what every entry comes from (the org's Model names, the resolving
variants' ids) to find the names deleted since. When too many names changed
(CHANGES_SHARE), it reads the whole index as above.

Stored manifests (load_stored, save_stored): each caller's whole built manifest is kept in
the database under the stamp it was built at and the format of its entries (a reader takes
only its own), stored again after later builds at most every STORE_EVERY_SECONDS per
process (StoreSchedule). A server without the caller's
manifest in memory serves the stored one while its stamp is current (one row read),
else builds with it as the previous build, so only entries whose rows changed are built.

Paging (AIP-158): a page token names the etag of the manifest it pages and the caller it
was issued to; every page of one manifest carries its etag, and a token whose manifest
changed meanwhile is ABORTED (start again from the first page).
"""

from __future__ import annotations

import base64
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from sqlalchemy.orm import Session

from domain import names
from domain.errors import Aborted, InvalidArgument, NotFound
from domain.paging import fingerprint
from storage.repos import catalog as repo

T = TypeVar("T")

Stamp = tuple[str | None, int, int]
# (variant id, content_revision, updated_at): equal keys, equal subtrees (see the module
# docstring). updated_at as storage.repos.catalog reads it for keys: epoch microseconds on
# PostgreSQL, the stored ISO text on SQLite (key_time gives the same from a row's value).
VariantKey = tuple[str, int, int | str]
# A variant's stored subtree: (its serialized bytes, the framework an entry without a
# Model's takes from it, sha256 of the bytes); server/manifest_pb.Tail.
StoredTail = tuple[bytes, str, bytes]
# The map entry a build made around a variant's stored subtree: (the Model row of the
# name it was made with (framework, enabled), or None; its bytes before the subtree; its
# part of the etag). See storage.orm.catalog.ManifestTail.
StoredEntry = tuple[tuple[str, bool] | None, bytes, bytes]
MAX_NAME = 128
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Paging. Entries are ~1 KB (one version, one file) to a few KB; a page also stops before
# PAGE_BYTES of entries, so responses stay well under gRPC clients' default 4 MiB receive
# limit whatever the page size (a single entry larger than that is sent alone).
DEFAULT_PAGE_SIZE = 1000
MAX_PAGE_SIZE = 5000
PAGE_BYTES = 2 << 20


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
    sub = group_subtrees(rows)
    return ManifestData(
        current, sorted(models.keys() | variants.keys()), models, variants, sub.versions,
        sub.packages, sub.resources,
    )  # fmt: skip


@dataclass(frozen=True)
class Subtrees:
    """Variant rows with their versions, packages and resources (layouts and orders of
    storage.repos.catalog.manifest_subtrees), grouped for building."""

    variants: dict[str, Any]  # variant id -> row
    versions: dict[str, list[Any]]  # variant id -> its versions, newest first
    packages: dict[str, list[Any]]  # catalog version id -> packages
    resources: dict[str, list[Any]]  # package id -> resources


@dataclass(frozen=True)
class Index:
    """A caller's manifest as one row per model name; for the variants whose keys the
    server did not hold, their stored serialized subtrees, else their subtrees' rows."""

    stamp: Stamp
    names: list[str]  # every model name, sorted (load_changes: the changed names only)
    models: dict[str, tuple[str, bool]]  # model name -> the Model's (framework, enabled)
    variants: dict[str, VariantKey]  # model name -> the key of the variant that resolves
    blessed: set[str]  # the ids of those variants that are blessed (shared by every org)
    stored: dict[str, StoredTail]  # variant id -> its stored subtree
    entries: dict[str, StoredEntry]  # variant id -> the entry stored around it, if any
    subtrees: Subtrees


def variant_key(row: Any) -> VariantKey:
    """The content key of a variant row with its updated_at as the driver returns it."""
    return row.id, row.content_revision, key_time(row.updated_at)


def key_time(value: datetime | str) -> int | str:
    """A timestamp as VariantKey holds it: a datetime (PostgreSQL) as epoch microseconds,
    ISO text (SQLite) as it is."""
    if isinstance(value, datetime):
        delta = value - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return value


def load_index(
    session: Session,
    org_id: str | None,
    cached: Callable[[list[VariantKey]], Collection[VariantKey]],
    entry_format: int,
) -> Index:
    """The caller's manifest index; `cached(keys)` answers which of the variants' keys the
    caller already holds built (and keeps them for it). Of the others, the serialized
    subtrees stored under their current keys in the caller's `entry_format` (the version
    of the serialization, server/manifest_pb.ENTRY_FORMAT) are read, and the rows of the
    rest. Stamp, index, stored bytes and rows come from one snapshot."""
    repo.manifest_snapshot(session)
    current = stamp(session, org_id)
    return _index(session, org_id, current, None, cached, entry_format)


# A rebuild reads the changed names' rows only while they are at most CHANGES_AT_LEAST
# names or this share of the previous build's; beyond it, reading every name's row in one
# pass is cheaper.
CHANGES_SHARE = 0.25
CHANGES_AT_LEAST = 100


def load_changes(
    session: Session,
    org_id: str | None,
    since: Stamp,
    previous: Mapping[str, Sequence[Any]],
    cached: Callable[[list[VariantKey]], Collection[VariantKey]],
    entry_format: int,
) -> Index | None:
    """The index of only the names whose entries may have changed for the caller since a
    build at stamp `since` (the change log, storage.orm.catalog.ManifestChange), for
    manifest_pb.patch; its `names` are those names (some may have left the manifest:
    neither a Model nor a variant). `previous` is that build's entries by name, each
    beginning with the Model row and the variant key it was made from (manifest_pb.Entry).
    When the log no longer reaches back to `since` (tombstones pruned past it), the names
    whose Model or variant is gone since are found by reading what every entry comes from
    (gone_sources), not every row. None when too many changed (CHANGES_SHARE), or the log
    may miss names still in the manifest (a live floor above `since`, as migration 0013
    left scopes written before it): build from the whole index instead. One snapshot, as
    load_index."""
    repo.manifest_snapshot(session)
    most = max(CHANGES_AT_LEAST, int(len(previous) * CHANGES_SHARE))
    revisions, changed, complete = repo.manifest_changes(
        session, org_id, since[1], since[2], at_most=most
    )
    current = (org_id, *revisions)
    if changed is None:
        return None
    if not complete:
        changed |= gone_sources(previous, *repo.manifest_sources(session, org_id))
        if len(changed) > most:
            return None
    return _index(session, org_id, current, changed, cached, entry_format)


def gone_sources(
    previous: Mapping[str, Sequence[Any]],
    models: Collection[str],
    variants: Collection[tuple[str, str]],
) -> set[str]:
    """The names of `previous` (load_changes) whose entry was made from a Model the org no
    longer has (`models`: the names of its Models now) or a variant that no longer
    resolves for the name (`variants`: (id, name) of those that do now). Those are the
    names whose log rows may be gone: a name still in the log changed after its row's
    revision only, and only deleted names' rows (tombstones) are pruned."""
    gone: set[str] = set()
    for name, entry in previous.items():
        model, key = entry[0], entry[1]
        if (model is not None and name not in models) or (
            key is not None and (key[0], name) not in variants
        ):
            gone.add(name)
    return gone


def _index(
    session: Session,
    org_id: str | None,
    current: Stamp,
    only: Collection[str] | None,
    cached: Callable[[list[VariantKey]], Collection[VariantKey]],
    entry_format: int,
) -> Index:
    rows = repo.manifest_index(session, org_id, only)
    # rows are (model_id, framework, enabled) and (id, content_revision, updated_at, name,
    # blessed)
    models: dict[str, tuple[str, bool]] = {r[0]: (r[1], r[2]) for r in rows.models}
    variants: dict[str, VariantKey] = {r[3]: (r[0], r[1], r[2]) for r in rows.variants}
    blessed = {r[0] for r in rows.variants if r[4]}
    have = cached(list(variants.values()))
    missing = {key[0]: key for key in variants.values() if key not in have}
    stored: dict[str, StoredTail] = {}
    entries: dict[str, StoredEntry] = {}

    def most(wanted: Collection[str]) -> bool:
        # Most of every name's variants (a cold cache): one pass over everything beats
        # long id lists. A partial index wants few by construction.
        return only is None and len(wanted) * 2 > len(variants)

    if missing:
        wanted = missing.get
        for (
            vid, revision, updated_at, data, framework, digest,
            model_framework, enabled, prefix, etag_part,
        ) in repo.manifest_tails(
            session, org_id, None if most(missing) else missing.keys(), entry_format
        ):  # fmt: skip
            key = wanted(vid)
            if key is not None and key[1] == revision and key[2] == updated_at:
                stored[vid] = (data, framework, digest)  # stored under today's key
                if prefix is not None:
                    model = None if enabled is None else (model_framework, enabled)
                    entries[vid] = (model, prefix, etag_part)
    unbuilt = [vid for vid in missing if vid not in stored]
    subtrees = Subtrees({}, {}, {}, {})
    if unbuilt:
        subtrees = group_subtrees(
            repo.manifest_subtrees(session, org_id, None if most(unbuilt) else unbuilt)
        )
    names = sorted(models.keys() | variants.keys() if only is None else only)
    return Index(current, names, models, variants, blessed, stored, entries, subtrees)


# After a write, the next build of the written caller's manifest is left to the first
# request unless it would read every name's row or patch in more names than this: then the
# server that made the write builds it in the background (ManifestBuilds.written).
WARM_AT_CHANGES = CHANGES_AT_LEAST


def large_build_ahead(session: Session, org_id: str | None, entry_format: int) -> Stamp | None:
    """The caller's current stamp when its next build on a server without its manifest
    in memory would be large: no stored manifest in `entry_format` (the reader's,
    server/manifest_pb.ENTRY_FORMAT), one the change log does not reach back to, or over
    WARM_AT_CHANGES names changed since it; else None."""
    stored = repo.stored_manifest_stamp(session, org_id, entry_format)
    if stored is None:
        return stamp(session, org_id)
    revisions, changed, complete = repo.manifest_changes(
        session, org_id, *stored, at_most=WARM_AT_CHANGES
    )
    if changed is not None and complete and len(changed) <= WARM_AT_CHANGES:
        return None
    return (org_id, *revisions)


def large_orgs(session: Session) -> list[str]:
    """The orgs with over WARM_AT_CHANGES names of their own: those whose build with no
    stored manifest may read every name's row (a smaller org's is derived from the
    anonymous caller's manifest: a patch of its few names)."""
    return repo.orgs_with_names(session, WARM_AT_CHANGES + 1)


# A background build after writes is claimed for at most this long (storage.orm.catalog.
# ManifestBuildClaim): other servers skip it meanwhile, and its server drops the claim
# once the build is stored (a server that died leaves one that expires).
BUILD_CLAIM_SECONDS = 60.0


def claim_build(
    session: Session, org_id: str | None, holder: str, seconds: float = BUILD_CLAIM_SECONDS
) -> bool:
    """Claim the building of the caller's manifest for `holder` (a random id) unless
    another holder's claim is current: True when this one builds it."""
    now = datetime.now(UTC)
    return repo.claim_manifest_build(session, org_id, holder, now, now + timedelta(seconds=seconds))


def release_build(session: Session, org_id: str | None, holder: str) -> None:
    """Drop `holder`'s claim on the caller's build (a later holder's stays)."""
    repo.release_manifest_build(session, org_id, holder)


SAVE_BATCH = 1000  # subtrees stored per transaction


def save_built(
    session: Session,
    tails: Sequence[tuple[VariantKey, StoredTail, StoredEntry | None]],
    entry_format: int,
) -> None:
    """Store serialized subtrees, each under the key it was built from, with the entry
    made around it (or none), in the `entry_format` they are in, for every server's next
    cold build (repo.save_manifest_tails)."""
    repo.save_manifest_tails(
        session, [_tail_row(key, tail, entry) for key, tail, entry in tails], entry_format
    )


def _tail_row(key: VariantKey, tail: StoredTail, entry: StoredEntry | None) -> repo.TailRow:
    """A row as repo.save_manifest_tails takes it."""
    if entry is None:
        return (*key, *tail, None, None, None, None)
    model, prefix, etag_part = entry
    return (*key, *tail, *(model or (None, None)), prefix, etag_part)


@dataclass(frozen=True)
class Stored:
    """A caller's whole manifest as stored (storage.orm.catalog.ManifestSnapshot): the
    stamp it was built at, the format of its entries (server/manifest_pb.ENTRY_FORMAT) and
    its encoding (server/manifest_snapshot.py)."""

    stamp: Stamp
    entry_format: int
    data: bytes


def load_stored(session: Session, org_id: str | None, entry_format: int) -> Stored | None:
    """The caller's stored manifest in `entry_format` (one in another is none)."""
    row = repo.stored_manifest(session, org_id, entry_format)
    return None if row is None else Stored((org_id, row[0], row[1]), entry_format, row[2])


def save_stored(session: Session, stored: Stored) -> None:
    """Store a caller's manifest unless a newer one in its format is stored already."""
    org_id, org_revision, catalog_revision = stored.stamp
    repo.store_manifest(
        session, org_id, org_revision, catalog_revision, stored.entry_format, stored.data
    )


# A caller's manifest is stored again at most this often by one process: a busy org
# changes many times a minute, and a cold build from a slightly older snapshot rebuilds
# only the entries that changed since. Larger manifests are not stored at all (their
# cold builds read the stored subtrees instead).
STORE_EVERY_SECONDS = 10.0
MAX_STORED_BYTES = 64 << 20


class StoreSchedule:
    """When to store a caller's newly built manifest: when what is stored (as last seen
    by this process) is of another stamp, and this process has not stored the caller's
    manifest in the last `every` seconds (else later, see claim). Thread-safe; remembers
    at most `max_callers`, least recently used first out (forgetting one only means
    storing it again)."""

    def __init__(self, every: float = STORE_EVERY_SECONDS, max_callers: int = 100_000) -> None:
        self._every = every
        self._max = max_callers
        # caller -> (stamp stored, when this process stored it; None: read, not written)
        self._seen: OrderedDict[str | None, tuple[Stamp, float | None]] = OrderedDict()
        self._lock = threading.Lock()

    def seen(self, stamp: Stamp) -> None:
        """What is stored for stamp[0] now (read from the database)."""
        with self._lock:
            previous = self._seen.get(stamp[0])
            self._remember(stamp, previous[1] if previous is not None else None)

    def claim(self, stamp: Stamp, now: float) -> float | None:
        """For a manifest built at `stamp`: None when there is nothing to store (that
        stamp or a newer one is stored), 0 when it is to be stored now (recorded as
        stored: the caller stores it), else the seconds after which to ask again with
        the caller's latest build (a trailing store, so the last change of a burst is
        stored too)."""
        with self._lock:
            known = self._seen.get(stamp[0])
            if known is not None:
                stored, written = known
                if at_least(stored, stamp):
                    return None
                if written is not None and now - written < self._every:
                    return self._every - (now - written)
            self._remember(stamp, now)
            return 0.0

    def failed(self, stamp: Stamp) -> None:
        """Storing the manifest built at `stamp` failed: the next build tries again."""
        with self._lock:
            known = self._seen.get(stamp[0])
            if known is not None and known[0] == stamp:
                del self._seen[stamp[0]]

    def _remember(self, stamp: Stamp, written: float | None) -> None:
        self._seen[stamp[0]] = (stamp, written)
        self._seen.move_to_end(stamp[0])
        while len(self._seen) > self._max:
            self._seen.popitem(last=False)


def group_subtrees(rows: repo.ManifestRows) -> Subtrees:
    versions: dict[str, list[Any]] = {}
    for r in rows.versions:
        versions.setdefault(r.variant_id, []).append(r)
    packages: dict[str, list[Any]] = {}
    for r in rows.packages:
        packages.setdefault(r.catalog_version_id, []).append(r)
    resources: dict[str, list[Any]] = {}
    for r in rows.resources:
        resources.setdefault(r.package_id, []).append(r)
    return Subtrees({r.id: r for r in rows.variants}, versions, packages, resources)


@dataclass(frozen=True)
class PageRequest:
    """A GetManifest request's paging: where its page starts, how many entries at most,
    and the etag of the manifest its token pages (None on a first page)."""

    offset: int
    size: int
    etag: str | None


def _caller(org_id: str | None) -> str:
    return fingerprint("manifest", org_id)


def page_request(page_size: int, page_token: str, org_id: str | None) -> PageRequest:
    """Validate the paging fields; a token must come from this caller's GetManifest."""
    if page_size < 0:
        raise InvalidArgument.field("page_size", "must not be negative")
    size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    if not page_token:
        return PageRequest(0, size, None)
    try:
        padded = page_token + "=" * (-len(page_token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        offset, etag, caller = int(data["o"]), str(data["e"]), str(data["c"])
    except (ValueError, KeyError, TypeError):
        raise InvalidArgument.field("page_token", "is not a token this server issued") from None
    if offset <= 0 or not etag:
        raise InvalidArgument.field("page_token", "is not a token this server issued")
    if caller != _caller(org_id):
        raise InvalidArgument.field("page_token", "was issued to another caller")
    return PageRequest(offset, size, etag)


def next_page_token(etag: str, offset: int, org_id: str | None) -> str:
    payload = json.dumps({"e": etag, "o": offset, "c": _caller(org_id)}).encode()
    return base64.urlsafe_b64encode(payload).decode().rstrip("=")


def check_page(request: PageRequest, etag: str, entries: int) -> None:
    """A token pages the manifest it was issued for: ABORTED once that changed (the etag
    moved on), INVALID_ARGUMENT when it points past the end."""
    if request.etag is None:
        return
    if request.etag != etag:
        raise Aborted(
            "the manifest changed since the first page was read; "
            "start again from the first page (no page_token)",
            reason="MANIFEST_CHANGED",
            metadata={"etag": etag, "page_token_etag": request.etag},
        )
    if request.offset > entries:
        raise InvalidArgument.field("page_token", "is not a token this server issued")


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
    ones up to `max_body_bytes` as `size` counts them (a 10,000-model manifest is ~10 MB,
    most are far smaller; the newest is kept whatever its size). Thread-safe; least
    recently used callers go first."""

    def __init__(
        self,
        size: Callable[[T], int],
        max_etags: int = 100_000,
        max_body_bytes: int = 256 << 20,
    ) -> None:
        self._etags: OrderedDict[str | None, tuple[Stamp, str]] = OrderedDict()
        self._bodies: OrderedDict[str | None, tuple[Stamp, str, T, int]] = OrderedDict()
        self._size = size
        self._max_etags = max_etags
        self._max_body_bytes = max_body_bytes
        self._body_bytes = 0
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

    def last(self, caller: str | None) -> tuple[Stamp, T] | None:
        """The most recent manifest built for the caller with its stamp."""
        with self._lock:
            hit = self._bodies.get(caller)
            return (hit[0], hit[2]) if hit is not None else None

    def put(self, key: Stamp, etag: str, body: T) -> None:
        size = self._size(body)
        with self._lock:
            current = self._etags.get(key[0])
            if current is not None and _newer(current[0], key):
                return  # a slower build of an older stamp finished last
            self._etags[key[0]] = (key, etag)
            self._etags.move_to_end(key[0])
            old = self._bodies.pop(key[0], None)
            if old is not None:
                self._body_bytes -= old[3]
            self._bodies[key[0]] = (key, etag, body, size)
            self._body_bytes += size
            while len(self._etags) > self._max_etags:
                self._etags.popitem(last=False)
            while self._body_bytes > self._max_body_bytes and len(self._bodies) > 1:
                self._body_bytes -= self._bodies.popitem(last=False)[1][3]


def at_least(a: Stamp, b: Stamp) -> bool:
    """Stamp a is b or later (a manifest at a may answer for one at b)."""
    return a == b or _newer(a, b)


def _newer(a: Stamp, b: Stamp) -> bool:
    """Stamp a is strictly later than b (revisions only grow)."""
    return a[1] >= b[1] and a[2] >= b[2] and a != b
