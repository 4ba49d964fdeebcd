"""Where GetManifest's built manifests come from: this process's memory, the manifest
stored in the database (a restarted server, a new replica), or a build; and what a build
leaves behind for the next one (tails and whole manifests stored, best effort).

A build starts from the caller's previous build in memory, else the caller's stored manifest
(served as it is when stored under the current stamp). From either it rebuilds only the
names the change log lists since that build's stamp (domain.manifest.load_changes,
manifest_pb.patch); without one, or when the log does not reach back or lists too many,
it reads the whole index and reuses the entries whose rows are unchanged. The variants'
tails it needs come from memory, manifest_tails, or rows.

After a write commits on this server (Runtime.on_commit), the written callers' manifests
are built again in the background (`warm_after` seconds later, once however many writes
land meanwhile) when their next build would be large (domain.manifest.large_build_ahead:
nothing stored, or over a hundred names changed since): the builds that read every name's
row (a caller's first, or after a bulk import) and serialize many variants then run here,
off any device's request, and leave the manifest in memory and stored for every server.
Smaller changes are left to the next request, whose patch is cheap. One server at a time
makes such a build (a claim in the database: writes spread over several servers would
have each make it). Blessed writes made without this server (`modelregistry catalog
import`, another server) are noticed by watching the blessed catalog's revision
(watch_catalog) and treated the same way; so is, when a server starts, every org with many
names of its own (one with no usable stored manifest, as after an upgrade that serializes
entries otherwise, is built then).

An org's build with no previous build of its own (in memory or stored) starts from the
anonymous caller's manifest (_blessed_base): the org's own names are patched into the
blessed catalog instead of every blessed variant's row being read.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import random
import time
import uuid
from typing import Any, Literal

from domain import manifest
from server import manifest_pb, manifest_snapshot
from server.metrics import MANIFEST_BACKGROUND_LOOKS, MANIFEST_BUILDS
from server.runtime import Runtime
from storage.orm import utcnow

log = logging.getLogger("modelregistry.manifest")
# Its own generator: the module's shared one is the process's (tests seed and watch it).
_jitter = random.Random()


class ManifestBuilds:
    def __init__(self, runtime: Runtime, warm_after: float = 0.0) -> None:
        self.rt = runtime
        self.warm_after = warm_after  # seconds; 0: no builds after writes
        self.manifests = manifest.ManifestCache(manifest_pb.Built.byte_size)
        # Serialized subtrees of blessed variants, shared by every caller's manifest.
        self.tails = manifest_pb.TailCache()
        # One build per stamp at a time: a fleet polling right after a change waits for
        # the build in progress instead of starting its own.
        self._building: dict[manifest.Stamp, asyncio.Future[manifest_pb.Built]] = {}
        self.schedule = manifest.StoreSchedule()
        self._storing: dict[str | None, asyncio.Task[None]] = {}
        self._saving: set[asyncio.Task[None]] = set()
        self._warming: dict[str | None, asyncio.Task[None]] = {}
        self._warm_again: set[str | None] = set()
        self._warm_slot = asyncio.Semaphore(1)  # one background build at a time
        self._releasing: set[asyncio.Task[None]] = set()  # claims held until stored
        self._watching: asyncio.Task[None] | None = None
        self._closed = False

    def etag(self, stamp: manifest.Stamp) -> str | None:
        """The etag of the caller's manifest at `stamp`, when this process knows it."""
        return self.manifests.etag(stamp)

    async def get(
        self, stamp: manifest.Stamp, trigger: Literal["request", "write"] = "request"
    ) -> manifest_pb.Built:
        """The caller's manifest at `stamp` or later: cached, being built, or built now
        (timed in MANIFEST_BUILDS under `trigger`: a request, or a write)."""
        cached = self.manifests.body(stamp)
        if cached is not None:
            return cached[1]
        pending = self._building.get(stamp)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[manifest_pb.Built] = asyncio.get_running_loop().create_future()
        self._building[stamp] = future
        try:
            started = time.perf_counter()
            with manifest_pb.gc_pause():
                built, at, source = await self._build(stamp)
            MANIFEST_BUILDS.labels(source, trigger).observe(time.perf_counter() - started)
            self.manifests.put(at, built.etag, built)
            future.set_result(built)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody else must
            raise
        finally:
            del self._building[stamp]
        if source != "stored":
            # In the background: the caller is answered without waiting for a write (on
            # SQLite, for the one writer's lock).
            self._save_later(built)
            self._store_later(at)
        return built

    def written(self, scopes: frozenset[str | None]) -> None:
        """Runtime.on_commit: a write changed the manifests of `scopes` (org ids; None,
        the blessed catalog: the anonymous caller's, whose build serializes the blessed
        variants every caller shares). Build each again warm_after seconds from now if
        its next build would be large, or look again after the build already pending."""
        if self.warm_after <= 0 or self._closed:
            return
        for caller in scopes:
            if caller in self._warming:
                self._warm_again.add(caller)
            else:
                self._warming[caller] = asyncio.create_task(
                    self._warm(caller), context=contextvars.Context()
                )

    def watch_catalog(self) -> None:
        """Look at the blessed catalog's revision every warm_after seconds or so (one row
        read; jittered, so servers started together look at different times), and when it
        moved, or on the first look, act as after a blessed write of this server (written):
        imports and other writers of blessed rows that bypass this server leave the
        anonymous caller's large build, whose serialized blessed variants every caller
        shares, to the background too. The first look also acts so for every org with
        many names of its own (domain.manifest.large_orgs): one with no stored manifest in
        this release's format (after an upgrade that serializes entries otherwise) or far
        behind gets it built before its devices ask. Off with builds after writes."""
        if self.warm_after > 0 and self._watching is None and not self._closed:
            self._watching = asyncio.create_task(
                self._watch_catalog(), context=contextvars.Context()
            )

    async def _watch_catalog(self) -> None:
        seen: int | None = None
        failing = False
        while True:
            await asyncio.sleep(self.warm_after * (0.5 + _jitter.random()))
            try:
                revision = (await self.rt.read_single(manifest.stamp, None))[2]
                orgs = await self.rt.read(manifest.large_orgs) if seen is None else []
            except Exception:
                if not failing:  # once per outage, not every few seconds
                    log.warning("could not look at the catalog's revision", exc_info=True)
                failing = True
                continue
            failing = False
            if revision != seen:
                seen = revision
                self.written(frozenset([None, *orgs]))

    async def _warm(self, caller: str | None) -> None:
        try:
            while True:
                await asyncio.sleep(self.warm_after)
                self._warm_again.discard(caller)
                outcome = "small"
                try:
                    async with self._warm_slot:
                        ahead = await self.rt.read(
                            manifest.large_build_ahead, caller, manifest_pb.ENTRY_FORMAT
                        )
                        if ahead is not None:
                            outcome = "built"
                            if not await self._build_claimed(ahead):
                                # Another server builds it, perhaps at an older stamp: look
                                # again once it may have stored that.
                                outcome = "claimed"
                                self._warm_again.add(caller)
                except Exception:
                    outcome = "failed"
                    log.warning(
                        "could not build the manifest of %s after a write", caller, exc_info=True
                    )
                MANIFEST_BACKGROUND_LOOKS.labels(outcome).inc()
                if caller not in self._warm_again:
                    return
        finally:
            # With no await since the check above: a write landing now starts a new task.
            self._warming.pop(caller, None)

    async def _build_claimed(self, stamp: manifest.Stamp) -> bool:
        """Build the caller's manifest at `stamp` and store it, unless another server has
        claimed the caller's build (domain.manifest.claim_build): False then. This
        server's claim is held until what the build stores is stored, which may be later
        than the build's end (_release_when_stored)."""
        caller, holder = stamp[0], str(uuid.uuid4())
        # Shielded: a server stopping (close) while the claim's transaction waits for the
        # database would otherwise leave it to commit unseen, held for nobody until it
        # expires, so that every server skipped the caller's build meanwhile.
        claiming = asyncio.ensure_future(self.rt.write(manifest.claim_build, caller, holder))
        try:
            if not await asyncio.shield(claiming):
                return False
            await self.get(stamp, trigger="write")
        except BaseException:
            await self._drop_claim(claiming, caller, holder)
            raise
        stores = [t for t in (self._storing.get(caller), *self._saving) if t is not None]
        task = asyncio.create_task(
            self._release_when_stored(stores, claiming, caller, holder),
            context=contextvars.Context(),
        )
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)
        return True

    async def _release_when_stored(
        self,
        stores: list[asyncio.Task[None]],
        claiming: asyncio.Future[bool],
        caller: str | None,
        holder: str,
    ) -> None:
        """Drop the claim once the build's stores ended. Apart from the build: the store
        of a caller this process stored in the last STORE_EVERY_SECONDS waits out the
        schedule, and the one background build slot held meanwhile would hold back every
        other caller's build (a server starting with many large orgs queues them all)."""
        try:
            if stores:
                await asyncio.wait(stores)  # each logs its own failure
        finally:
            await self._drop_claim(claiming, caller, holder)

    async def _drop_claim(
        self, claiming: asyncio.Future[bool], caller: str | None, holder: str
    ) -> None:
        """Once the claim's transaction ended: drop the claim if it was taken."""
        try:
            if not await claiming:
                return
        except (Exception, asyncio.CancelledError):
            return  # not taken (failed, or cancelled before it ran)
        try:
            await self.rt.write(manifest.release_build, caller, holder)
        except Exception:
            log.warning("could not drop the build claim of %s (it expires)", caller)

    async def _build(self, stamp: manifest.Stamp) -> tuple[manifest_pb.Built, manifest.Stamp, str]:
        """(the manifest, the stamp it is at, where it came from: "stored" as it was,
        "patch" from a previous build and the change log, "index" from every name's row).
        get runs it under manifest_pb.gc_pause, from decoding the stored manifest to the
        build that reuses it: a collection between the steps would walk all they made."""
        last = self.manifests.last(stamp[0])
        if last is None:
            last = await self._stored(stamp[0])
            if last is not None and manifest.at_least(last[0], stamp):
                return last[1], last[0], "stored"
        if last is None and stamp[0] is not None:
            last = await self._blessed_base(stamp[0])
        previous = last[1] if last is not None else None
        pinned: dict[manifest.VariantKey, manifest_pb.Tail] = {}

        def cached_tails(keys: list[manifest.VariantKey]) -> dict[manifest.VariantKey, Any]:
            pinned.update(self.tails.pin(keys, previous))
            return pinned

        if last is not None:
            since, built = last
            changes = await self.rt.read(
                manifest.load_changes,
                stamp[0],
                since,
                built.entries,
                cached_tails,
                manifest_pb.ENTRY_FORMAT,
            )
            if changes is not None:
                built = await self.rt.call(
                    manifest_pb.patch, built, changes, pinned, utcnow(), self.tails
                )
                return built, changes.stamp, "patch"
        index = await self.rt.read(
            manifest.load_index, stamp[0], cached_tails, manifest_pb.ENTRY_FORMAT
        )
        built = await self.rt.call(
            manifest_pb.build,
            index,
            pinned,
            utcnow(),
            previous,
            self.tails,
        )
        return built, index.stamp, "index"

    async def _stored(self, caller: str | None) -> tuple[manifest.Stamp, manifest_pb.Built] | None:
        """The caller's stored manifest, decoded, with its stamp (None: nothing stored, or
        of another layout or entry format)."""
        stored = await self.rt.read(manifest.load_stored, caller, manifest_pb.ENTRY_FORMAT)
        if stored is None:
            return None
        self.schedule.seen(stored.stamp)
        decoded = await self.rt.call(manifest_snapshot.decode, stored.data)
        return None if decoded is None else (stored.stamp, decoded)

    async def _blessed_base(self, org_id: str) -> tuple[manifest.Stamp, manifest_pb.Built] | None:
        """For an org's build with no manifest of its own to start from: the anonymous
        caller's (in memory, else stored), as the org's at org revision 0. An org with no
        rows of its own sees exactly the blessed catalog, and the change log lists every
        name the org ever wrote (else its floor is above 0 and load_changes says so), so
        the org's first build patches in its own names instead of reading the row of every
        blessed variant; with too many of its own, the whole index is read as before, and
        the blessed entries are reused."""
        base = self.manifests.last(None)
        if base is None:
            base = await self._stored(None)
            if base is None:
                return None
            self.manifests.put(base[0], base[1].etag, base[1])
        (_, _, catalog_revision), built = base
        return (org_id, 0, catalog_revision), built

    async def _save_tails(self, built: manifest_pb.Built) -> None:
        """Store the subtrees this build serialized, for every server's next cold build.
        Best effort: they are a cache, and a caller whose manifest is built must get it
        even if the write fails (SQLite busy with another writer, a variant deleted
        meanwhile); the next build serializes and tries again."""
        unsaved = built.unsaved()
        if not unsaved:
            return
        try:
            # Short transactions: a first build can store 10,000s (SQLite has one writer).
            for i in range(0, len(unsaved), manifest.SAVE_BATCH):
                await self.rt.write(
                    manifest.save_built,
                    unsaved[i : i + manifest.SAVE_BATCH],
                    manifest_pb.ENTRY_FORMAT,
                )
        except Exception:
            log.warning("could not store %d manifest subtrees", len(unsaved), exc_info=True)

    def _save_later(self, built: manifest_pb.Built) -> None:
        """_save_tails in the background."""
        task = asyncio.create_task(self._save_tails(built), context=contextvars.Context())
        self._saving.add(task)
        task.add_done_callback(self._saving.discard)

    def _store_later(self, stamp: manifest.Stamp) -> None:
        """Store the caller's latest build in the background: now, or once the schedule
        allows (manifest.StoreSchedule); one pending store per caller."""
        caller = stamp[0]
        if caller in self._storing:
            return
        task = asyncio.create_task(self._store(caller), context=contextvars.Context())
        self._storing[caller] = task
        task.add_done_callback(lambda _: self._storing.pop(caller, None))

    async def _store(self, caller: str | None) -> None:
        while True:
            last = self.manifests.last(caller)
            if last is None:
                return
            stamp, built = last
            delay = self.schedule.claim(stamp, time.monotonic())
            if delay is None:
                return
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            if built.byte_size() > manifest.MAX_STORED_BYTES:
                return
            try:
                data = await self.rt.call(manifest_snapshot.encode, built)
                await self.rt.write(
                    manifest.save_stored, manifest.Stored(stamp, manifest_pb.ENTRY_FORMAT, data)
                )
            except Exception:
                self.schedule.failed(stamp)
                log.warning("could not store the manifest of %s", caller, exc_info=True)
            return

    async def close(self) -> None:
        """Stop pending stores and builds after writes (they are a cache: the next build
        stores again)."""
        self._closed = True
        tasks = [*self._storing.values(), *self._saving, *self._warming.values(), *self._releasing]
        if self._watching is not None:
            tasks.append(self._watching)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
