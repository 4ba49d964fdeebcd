"""The manifest as protobuf: ManifestEntry messages (ResolveModel) and GetManifest responses
assembled from pre-serialized bytes, with the manifest's content etag.

Protobuf's wire format lets a message be written as the concatenation of its fields, and a
map entry is a length-delimited message {1: key, 2: value}. So a GetManifest response is
built by joining bytes: per model name, the entry's fields 1-4 (model_id, model, enabled,
framework; a few dozen bytes from the Model row) and fields 5-7 (variant, latest_version,
versions: the heavy part) serialized once per variant content key
(domain.manifest.VariantKey), kept with the build (and a blessed variant's in a TailCache
shared by every caller). A rebuild after a change serializes only what changed: entries
whose (Model row, variant key) equal the previous build's are taken from it as they are.

Each entry's bytes are exactly its deterministic serialization (fields in number order,
the same bytes the protobuf library writes; tests/test_manifest_bytes.py checks it against
messages filled field by field). The etag is a sha256 over the names in order, each with
its entry's digest: the sha256 of the entry's fields 1-4 followed by the sha256 of its
fields 5-7 (entry_digest), so a variant's part is hashed once, when it is serialized, and
its digest kept beside its bytes. It is a pure function of the content, the same on every
server.

A page (Built.page, AIP-158 paging of GetManifest) is the etag, a run of consecutive map
entries' bytes, generate_time and next_page_token, joined; the servicer returns those bytes
as they are (model_service.add_to_server gives GetManifest a serializer that passes bytes
through).

Field semantics match server/convert.py's variant/package/resource converters; tests
compare the two.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from google.protobuf import timestamp_pb2

from domain import manifest
from domain.etags import etag_of
from modelregistry.v1 import catalog_pb2, manifest_pb2
from modelregistry.v1 import model_service_pb2 as pb

# The version of the bytes an entry is serialized to from its rows. Serialized subtrees and
# whole manifests are stored for every server (storage.orm.catalog.ManifestTail,
# ManifestSnapshot) under it, and a server uses only those of its own: bump it in the
# change that makes the same rows serialize otherwise (a field filled that was not, a
# value converted otherwise), or servers keep serving the old bytes, beside new ones,
# until each variant changes. tests/test_manifest_bytes.py holds the digest of a fixed
# manifest per format and fails when the bytes change under the same number.
ENTRY_FORMAT = 1

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NAIVE_EPOCH = datetime(1970, 1, 1)
_STATES = {
    "active": catalog_pb2.CatalogVersion.STATE_ACTIVE,
    "deprecated": catalog_pb2.CatalogVersion.STATE_DEPRECATED,
}


def _dt(value: str | datetime) -> datetime:
    """A raw timestamp (storage.repos.catalog._raw): ISO text in naive UTC, or a datetime."""
    return datetime.fromisoformat(value) if type(value) is str else value  # type: ignore[return-value]


def _ts(msg: timestamp_pb2.Timestamp, value: str | datetime) -> None:
    dt = _dt(value)
    delta = dt - (_NAIVE_EPOCH if dt.tzinfo is None else _EPOCH)
    msg.seconds = delta.days * 86_400 + delta.seconds
    msg.nanos = delta.microseconds * 1000


def _etag_revision(value: str | datetime) -> int:
    """As domain.catalog.variant_etag_revision / convert.variant compute it."""
    dt = _dt(value)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1_000_000)


def _json(value: Any) -> Any:
    if type(value) is str:
        return None if value in ("[]", "{}") else json.loads(value)
    return value


# ---------------------------------------------------------------------------------------
# messages, field by field


def _fill_variant(
    entry: manifest_pb2.ManifestEntry,
    name: str,
    variant: Any,
    versions: Sequence[Any],
    packages: dict[str, list[Any]],
    resources: dict[str, list[Any]],
) -> None:
    """Fields 5-7 of an entry: the resolved variant, latest_version, versions."""
    vid = variant.id
    v = entry.variant
    v.name = f"variants/{vid}"
    v.uid = vid
    v.model_id = name
    v.blessed = variant.org_id is None
    if variant.family:
        v.family = variant.family
    taxonomy = _json(variant.task_taxonomy)
    if taxonomy:
        v.task_taxonomy.extend(taxonomy)
    if variant.parameter_count:
        v.parameter_count = variant.parameter_count
    if variant.license:
        v.license = variant.license
    if variant.description:
        v.description = variant.description
    _ts(v.create_time, variant.created_at)
    _ts(v.update_time, variant.updated_at)
    v.etag = etag_of(vid, _etag_revision(variant.updated_at))
    latest = manifest.latest_active(versions)
    if latest is not None:
        entry.latest_version = latest.version
    for cv in versions:
        mv = entry.versions.add()
        mv.version_id = cv.version
        version_name = f"variants/{vid}/versions/{cv.id}"
        mv.catalog_version = version_name
        mv.state = _STATES[cv.lifecycle]
        for p in packages.get(cv.id, ()):
            pm = mv.packages.add()
            package_name = f"{version_name}/packages/{p.id}"
            pm.name = package_name
            pm.uid = p.id
            pm.format = p.format
            pm.quantization = p.quantization
            if p.runtime:
                pm.runtime = p.runtime
            pm.source = p.source
            metrics = _json(p.metrics)
            if metrics:
                pm.metrics.update(metrics)
            else:
                pm.metrics.SetInParent()  # as convert.package: present, empty
            _ts(pm.create_time, p.created_at)
            for r in resources.get(p.id, ()):
                rm = pm.resources.add()
                rm.name = f"{package_name}/resources/{r.id}"
                rm.uid = r.id
                rm.kind = r.kind
                rm.file_name = r.file_name
                if r.size_bytes:
                    rm.size_bytes = r.size_bytes
                if r.sha256:
                    rm.sha256 = r.sha256
                rm.required = r.required
                if r.load_order:
                    rm.load_order = r.load_order
                rm.stored = bool(r.stored)
                _ts(rm.create_time, r.created_at)


def _fill(entry: manifest_pb2.ManifestEntry, data: manifest.ManifestData, name: str) -> None:
    entry.model_id = name
    model = data.models.get(name)
    if model is not None:
        entry.model = f"models/{name}"
        entry.enabled = model.enabled
    else:
        entry.enabled = True
    variant = data.variants.get(name)
    versions = data.versions.get(variant.id, []) if variant is not None else []
    framework = manifest.framework_of(model, versions, data.packages)
    if framework:
        entry.framework = framework
    if variant is not None:
        _fill_variant(entry, name, variant, versions, data.packages, data.resources)


def entry(data: manifest.ManifestData, name: str) -> manifest_pb2.ManifestEntry:
    """One entry (ResolveModel), filled field by field."""
    out = manifest_pb2.ManifestEntry()
    _fill(out, data, name)
    return out


# ---------------------------------------------------------------------------------------
# wire format


def _encode_varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# Every one- and two-byte varint (lengths below 16 KiB: names, heads, most entries),
# looked up rather than computed 40,000 times per build.
_VARINTS = [_encode_varint(i) for i in range(1 << 14)]


def _varint(n: int) -> bytes:
    return _VARINTS[n] if n < 16384 else _encode_varint(n)


def _field(tag: bytes, value: bytes) -> bytes:
    """A length-delimited field; `tag` is the byte (field number << 3) | 2."""
    return tag + _varint(len(value)) + value


# ManifestEntry: model_id = 1, model = 2, enabled = 3 (varint), framework = 4.
_MODEL_ID, _MODEL, _ENABLED_TRUE, _FRAMEWORK = b"\x0a", b"\x12", b"\x18\x01", b"\x22"
# GetManifestResponse: etag = 1, models = 3 (map entries: key = 1, value = 2),
# generate_time = 4, next_page_token = 5.
_ETAG, _MODELS, _KEY, _VALUE = b"\x0a", b"\x1a", b"\x0a", b"\x12"
_GENERATE_TIME, _NEXT_PAGE_TOKEN = b"\x22", b"\x2a"


# A variant's part of an entry, serialized: (data: ManifestEntry fields 5-7,
# deterministic; framework: the entry's framework when its Model has none (framework_of);
# digest: sha256 of data). A plain tuple of atoms, which the garbage collector stops
# tracking: a server holds 100,000s (TailCache, built manifests), and every tracked one is
# walked by each full collection (a NamedTuple's instances stay tracked: in bench-manifest
# 30,000 of them held 120,000 of the 920,000 references a 130 ms collection walked).
# The same tuple as domain.manifest stores and reads (StoredTail).
Tail = manifest.StoredTail


NO_TAIL_DIGEST = hashlib.sha256(b"").digest()


def entry_digest(head: bytes, tail_digest: bytes) -> bytes:
    """An entry's part of the etag, from its fields 1-4 and the sha256 of its fields 5-7
    (both deterministic serializations)."""
    return hashlib.sha256(head + tail_digest).digest()


def message_digest(entry: manifest_pb2.ManifestEntry) -> bytes:
    """entry_digest of an entry message (for checks against messages filled field by
    field)."""
    head, rest = manifest_pb2.ManifestEntry(), manifest_pb2.ManifestEntry()
    head.CopyFrom(entry)
    rest.CopyFrom(entry)
    head.ClearField("variant")
    head.ClearField("latest_version")
    head.ClearField("versions")
    rest.ClearField("model_id")
    rest.ClearField("model")
    rest.ClearField("enabled")
    rest.ClearField("framework")
    tail_bytes = rest.SerializeToString(deterministic=True)
    return entry_digest(
        head.SerializeToString(deterministic=True), hashlib.sha256(tail_bytes).digest()
    )


def tail(name: str, variant: Any, subtrees: manifest.Subtrees) -> Tail:
    """The variant's part of an entry: fields 5-7 filled and serialized deterministically.
    (Writing the bytes directly in Python measured slower than upb filling messages.)"""
    versions = subtrees.versions.get(variant.id, [])
    out = manifest_pb2.ManifestEntry()
    _fill_variant(out, name, variant, versions, subtrees.packages, subtrees.resources)
    data = out.SerializeToString(deterministic=True)
    framework = manifest.framework_of(None, versions, subtrees.packages)
    return data, framework, hashlib.sha256(data).digest()


class TailCache:
    """VariantKey -> Tail of blessed variants, for every caller (an org's own variants'
    tails are kept with its builds), least recently used first out beyond `max_bytes`.
    Thread-safe."""

    def __init__(self, max_bytes: int = 256 << 20) -> None:
        self._items: OrderedDict[manifest.VariantKey, Tail] = OrderedDict()
        self._bytes = 0
        self._max_bytes = max_bytes
        self._lock = threading.Lock()

    def pin(
        self, keys: Iterable[manifest.VariantKey], previous: Built | None = None
    ) -> dict[manifest.VariantKey, Tail]:
        """The tails held for `keys` (the previous build's first), kept for the caller
        whatever is evicted meanwhile."""
        found: dict[manifest.VariantKey, Tail] = {}
        held = previous.tails if previous is not None else {}
        items = self._items
        with self._lock:
            for key in keys:
                t = held.get(key)
                if t is None:
                    t = items.get(key)
                    if t is None:
                        continue
                    items.move_to_end(key)
                found[key] = t
        return found

    def put(self, tails: dict[manifest.VariantKey, Tail]) -> None:
        with self._lock:
            for key, t in tails.items():
                old = self._items.pop(key, None)
                if old is not None:
                    self._bytes -= len(old[0])
                self._items[key] = t
                self._bytes += len(t[0])
            while self._bytes > self._max_bytes and self._items:
                _, gone = self._items.popitem(last=False)
                self._bytes -= len(gone[0])

    def __len__(self) -> int:
        return len(self._items)


# An entry of a build: the rows it came from (the Model's (framework, enabled), the
# variant's key), its map entry's bytes before the tail, the tail bytes, and its part of
# the etag (name length, name, entry_digest).
Entry = tuple[tuple[str, bool] | None, manifest.VariantKey | None, bytes, bytes, bytes]


@dataclass(frozen=True)
class Built:
    """A built manifest: per name, in name order, the bytes of its `models` map entry
    (split before the shared tail bytes), and what the next build may reuse."""

    etag: str
    # Tuples, not lists: once their items are untracked (as Tail says), the garbage
    # collector stops tracking them too, where a list's 10,000 items are walked by every
    # full collection for as long as the manifest is kept.
    names: tuple[str, ...]
    order: tuple[Entry, ...]  # in name order
    entries: dict[str, Entry]
    tails: dict[manifest.VariantKey, Tail]
    generate_time: bytes  # the serialized Timestamp
    # The tails this build serialized from rows, and the entries it made around tails it
    # read or serialized that are to be stored beside them (_entry_of): what
    # domain.manifest.save_built stores.
    fresh: dict[manifest.VariantKey, Tail]
    made: dict[manifest.VariantKey, manifest.StoredEntry]

    def unsaved(self) -> list[tuple[manifest.VariantKey, Tail, manifest.StoredEntry | None]]:
        """What domain.manifest.save_built stores for this build."""
        made = self.made
        rows = [(key, t, made.get(key)) for key, t in self.fresh.items()]
        rows += [(key, self.tails[key], e) for key, e in made.items() if key not in self.fresh]
        return rows

    def byte_size(self) -> int:
        """The entries' bytes (the whole manifest's, but for a few dozen bytes)."""
        return sum([len(e[2]) + len(e[3]) for e in self.order])

    def page(
        self, offset: int, size: int, token: Callable[[int], str], budget: int = manifest.PAGE_BYTES
    ) -> bytes:
        """A serialized GetManifestResponse with up to `size` entries from `offset`,
        stopping before `budget` bytes of entries (at least one entry), and
        next_page_token = token(next offset) when entries remain."""
        order = self.order
        out = [_field(_ETAG, self.etag.encode())]
        end, total, limit = offset, 0, min(len(order), offset + size)
        while end < limit:
            e = order[end]
            total += len(e[2]) + len(e[3])
            if total > budget and end > offset:
                break
            out.append(e[2])
            out.append(e[3])
            end += 1
        out.append(_field(_GENERATE_TIME, self.generate_time))
        if end < len(order):
            out.append(_field(_NEXT_PAGE_TOKEN, token(end).encode()))
        return b"".join(out)

    def response(self) -> bytes:
        """The whole manifest as one serialized GetManifestResponse."""
        return self.page(0, len(self.order), lambda _: "", budget=1 << 62)

    def message(self) -> pb.GetManifestResponse:
        return pb.GetManifestResponse.FromString(self.response())


_framework_fields: dict[str, bytes] = {}  # framework -> its field's bytes (a few distinct)


def _framework_field(framework: str) -> bytes:
    field = _framework_fields.get(framework)
    if field is None:
        field = _field(_FRAMEWORK, framework.encode())
        if len(_framework_fields) < 1024:
            _framework_fields[framework] = field
    return field


def _entry(
    name: str,
    model: tuple[str, bool] | None,
    key: manifest.VariantKey | None,
    t: Tail | None,
) -> Entry:
    encoded = name.encode()
    length = _varint(len(encoded))
    framework = ""
    if model is None:
        head = b"".join((_MODEL_ID, length, encoded, _ENABLED_TRUE))
    else:
        framework = model[0]
        head = b"".join(
            (
                _MODEL_ID, length, encoded,
                _MODEL, _varint(len(encoded) + 7), b"models/", encoded,
                _ENABLED_TRUE if model[1] else b"",
            )
        )  # fmt: skip
    if t is None:
        tail_bytes, tail_digest = b"", NO_TAIL_DIGEST
    else:
        tail_bytes, tail_digest = t[0], t[2]
        framework = framework or t[1]
    if framework:
        head += _framework_field(framework)
    size = len(head) + len(tail_bytes)
    inner_size = 1 + len(length) + len(encoded) + 1 + len(_varint(size))
    prefix = b"".join(
        (
            _MODELS, _varint(inner_size + size),
            _KEY, length, encoded, _VALUE, _varint(size),
            head,
        )
    )  # fmt: skip
    digest = hashlib.sha256(head + tail_digest).digest()  # entry_digest, inlined
    etag_part = b"".join((len(encoded).to_bytes(2, "big"), encoded, digest))
    return model, key, prefix, tail_bytes, etag_part


def _entry_of(
    name: str,
    model: tuple[str, bool] | None,
    key: manifest.VariantKey | None,
    tails: dict[manifest.VariantKey, Tail],
    index: manifest.Index,
    fresh: dict[manifest.VariantKey, Tail],
    made: dict[manifest.VariantKey, manifest.StoredEntry],
) -> Entry:
    """The entry of `name` with `model` and the variant of `key`: as stored around the
    variant's tail when made with the same Model row (Index.entries), else made. One made
    around a tail read from the database or serialized now goes to `made`, to be stored
    with the tail, when the variant is the caller's own or the name has no Model: the one
    entry every caller gets around a blessed tail but those with a Model of the name, so
    callers never take turns overwriting it."""
    if key is None:
        return _entry(name, model, None, None)
    t = tails[key]
    stored = index.entries.get(key[0])
    if stored is not None and stored[0] == model:
        return model, key, stored[1], t[0], stored[2]
    e = _entry(name, model, key, t)
    if (model is None or key[0] not in index.blessed) and (key in fresh or key[0] in index.stored):
        made[key] = (model, e[2], e[4])
    return e


def _tails(
    index: manifest.Index, pinned: dict[manifest.VariantKey, Tail], cache: TailCache
) -> tuple[dict[manifest.VariantKey, Tail], dict[manifest.VariantKey, Tail]]:
    """(every tail of the index's variants, those serialized from rows now): from
    `pinned` (TailCache.pin), the index's stored bytes, or its subtrees' rows. Blessed
    variants' tails not pinned are cached for every caller; an org's own are not (its
    later builds take them from this build, or from its stored manifest)."""
    tails = dict(pinned)
    subtrees = index.subtrees
    fresh: dict[manifest.VariantKey, Tail] = {}
    if subtrees.variants or index.stored:
        stored = index.stored.get
        for name, vkey in index.variants.items():
            if vkey not in tails:
                held = stored(vkey[0])
                if held is not None:
                    tails[vkey] = held
                else:
                    tails[vkey] = fresh[vkey] = tail(name, subtrees.variants[vkey[0]], subtrees)
        blessed = index.blessed
        cache.put({key: tails[key] for key in index.variants.values() if key[0] in blessed})
    return tails, fresh


def _built(
    names: Sequence[str],
    order: Sequence[Entry],
    entries: dict[str, Entry],
    tails: dict[manifest.VariantKey, Tail],
    generated: datetime,
    fresh: dict[manifest.VariantKey, Tail],
    made: dict[manifest.VariantKey, manifest.StoredEntry],
) -> Built:
    """The etag hashes, in name order, each name with its entry_digest (generate_time is
    not part of it)."""
    etag = hashlib.sha256(b"".join([e[4] for e in order])).hexdigest()
    stamp = timestamp_pb2.Timestamp()
    _ts(stamp, generated)
    return Built(
        f"m-{etag[:32]}",
        tuple(names),
        tuple(order),
        entries,
        tails,
        stamp.SerializeToString(),
        fresh,
        made,
    )


def build(
    index: manifest.Index,
    pinned: dict[manifest.VariantKey, Tail],
    generated: datetime,
    previous: Built | None,
    cache: TailCache,
) -> Built:
    """The manifest of `index`: tails from `pinned` (TailCache.pin) or serialized from the
    index's subtrees (and cached), entries from `previous` when their rows are unchanged,
    else as _entry_of gives them."""
    tails, fresh = _tails(index, pinned, cache)
    made: dict[manifest.VariantKey, manifest.StoredEntry] = {}
    old_entry = (previous.entries if previous is not None else {}).get
    model_of = index.models.get
    key_of = index.variants.get
    entries: dict[str, Entry] = {}
    order: list[Entry] = []
    append = order.append
    for name in index.names:
        model = model_of(name)
        key = key_of(name)
        e = old_entry(name)
        if e is None or e[0] != model or e[1] != key:
            e = _entry_of(name, model, key, tails, index, fresh, made)
        entries[name] = e
        append(e)
    return _built(index.names, order, entries, tails, generated, fresh, made)


def patch(
    previous: Built,
    changes: manifest.Index,
    pinned: dict[manifest.VariantKey, Tail],
    generated: datetime,
    cache: TailCache,
) -> Built:
    """`previous` with the entries of `changes` (domain.manifest.load_changes: the rows
    of only the names that may have changed since it) rebuilt, added or removed: the
    manifest build gives from the whole index at changes.stamp, without touching the
    other names' rows."""
    new_tails, fresh = _tails(changes, pinned, cache)
    made: dict[manifest.VariantKey, manifest.StoredEntry] = {}
    entries = dict(previous.entries)
    tails = dict(previous.tails)
    renamed = False  # names joined or left the manifest
    rebuilt: list[tuple[str, tuple[str, bool] | None, manifest.VariantKey | None]] = []
    for name in changes.names:
        model = changes.models.get(name)
        key = changes.variants.get(name)
        old = entries.get(name)
        if old is not None:
            if old[0] == model and old[1] == key:
                continue
            if old[1] is not None:
                tails.pop(old[1], None)
        if model is None and key is None:
            if old is not None:
                del entries[name]
                renamed = True
        else:
            renamed = renamed or old is None
            rebuilt.append((name, model, key))
    # After every pop above: a renamed variant may keep its key under its new name.
    for name, model, key in rebuilt:
        if key is not None:
            tails[key] = new_tails[key]
        entries[name] = _entry_of(name, model, key, tails, changes, fresh, made)
    names = sorted(entries) if renamed else previous.names
    order = [entries[name] for name in names]
    return _built(names, order, entries, tails, generated, fresh, made)


_gc_lock = threading.Lock()
_gc_pausers = 0
_gc_was_enabled = False


@contextlib.contextmanager
def gc_pause() -> Iterator[None]:
    """Python's cyclic garbage collector paused while the block runs (on any thread, and
    across awaits: ManifestBuilds holds it for a whole build, whose steps run on worker
    threads).

    Loading and building a manifest allocates tens of thousands of short-lived, acyclic
    objects (rows, tuples, bytes); each burst triggers collections, and the oldest
    generation's walks over every object of the process cost more than the work itself
    (measured: a 10,000-model index read took 37 ms of CPU without them, 105 ms with).
    Reference counting still frees everything; the collector resumes, if it was on, when
    the last pause ends.
    """
    global _gc_pausers, _gc_was_enabled
    with _gc_lock:
        _gc_pausers += 1
        if _gc_pausers == 1:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pausers -= 1
            if _gc_pausers == 0 and _gc_was_enabled:
                gc.enable()


def serialize_response(response: pb.GetManifestResponse | bytes) -> bytes:
    """GetManifest's response serializer: built pages are bytes already."""
    return response if isinstance(response, bytes) else response.SerializeToString()
