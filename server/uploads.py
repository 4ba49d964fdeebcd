"""Streaming bytes of uploads into the object store: the async half of the upload path.

Every upload RPC runs in one `UploadBatch` (`async with uploads.batch() as batch`):
`batch.start(...)` opens (or resumes) an upload session and returns an `UploadWriter`;
feed it the stream's chunks with `write`, then `close()` returns the verified
`StoredFile`s, and `batch.record(...)` records them as packages and commits the batch's
sessions in one transaction (`domain.uploads.record_upload`). Leaving the block decides,
in one place for every upload RPC, what becomes of the uploads (`UploadBatch.__aexit__`):
recorded -> released; the client went away, the stream ended early (`UploadIncomplete`),
a backend outage (UNAVAILABLE with RetryInfo and the upload's committed size) or a newer
stream took the upload over -> detached, durable parts stay for a resume; any other error
(bad bytes, a refused record) -> discarded, nothing of the uploads survives.

How bytes flow: chunks are buffered up to the store's part size, then uploaded as one
multipart part from a worker thread while the next chunks arrive. Up to PARTS_IN_FLIGHT
(2) parts of one upload go up at once, so memory stays ~3 parts per upload (2 in flight,
1 filling) whatever the file size. Parts are recorded in the session row in part order,
each once it and every part before it are durable; the contiguous recorded parts are the
committed size a client resumes from. A buffer not yet flushed, or a part in flight, when
the stream drops is lost; the client resends it.

Hashing: an upload that starts a file at offset 0 hashes it on the fly (in the worker
thread, in part order) and checks the declared sha256 before the object is completed, so
a mismatch never becomes visible. A file continued from a previous stream (hash state
does not survive a stream) is read back once after completion, and deleted on mismatch.

One stream writes an upload at a time: a stream that resumes an upload takes it over from
an older stream of this process (which may not have noticed its client is gone), after
that stream's in-flight parts have landed.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy.orm import Session

from domain import uploads
from domain.artifacts import NewPackage, Recorded, StoredFile, Target, TargetState
from domain.errors import Aborted, FieldViolation, InvalidArgument, Unavailable
from server.errors import as_domain_error
from server.runtime import Runtime
from storage.db import transaction
from storage.objectstore.multipart import Multipart, PartInfo, UploadNotFound, multipart_for
from storage.orm import utcnow

log = logging.getLogger("modelregistry.uploads")

P = ParamSpec("P")
T = TypeVar("T")

DEFAULT_MAX_FILE_BYTES = 16 * 1024**3
# grpc.aio ends a request stream the same way whether the client half-closed or went away;
# the cancellation reaches the handler a moment later. Before taking the end of a stream
# as the end of a file of undeclared size, give a cancellation this long to arrive.
EOF_GRACE_SECONDS = 0.05
# Parts of one upload sent to the object store at once. One part at a time leaves the
# pipe idle while each part's request is set up, answered and recorded; two keep it busy.
PARTS_IN_FLIGHT = 2


class UploadIncomplete(InvalidArgument):
    """The stream ended before every declared byte arrived. Not discarded: the end may be
    a dropped client (indistinguishable here), so durable parts stay for a resume until
    the upload expires."""


class Lease:
    """The right of one stream to write one upload; taken over by a newer stream."""

    def __init__(self, upload_id: str) -> None:
        self.upload_id = upload_id
        self.superseded = False
        # The newest in-flight operation; each part finishes after the one before it, so
        # this one done means all are.
        self.pending: asyncio.Task[None] | None = None

    async def settle(self) -> None:
        """Wait until the in-flight parts (if any) have landed or failed."""
        task = self.pending
        if task is not None and not task.done():
            await asyncio.wait([task])


class Leases:
    """Which stream of this process currently writes each upload."""

    def __init__(self) -> None:
        self._holders: dict[str, Lease] = {}

    async def take(self, upload_id: str) -> Lease:
        lease = Lease(upload_id)
        old = self._holders.get(upload_id)
        self._holders[upload_id] = lease
        if old is not None:
            old.superseded = True
            await old.settle()
        return lease

    async def settle(self, upload_id: str) -> None:
        holder = self._holders.get(upload_id)
        if holder is not None:
            await holder.settle()

    def release(self, lease: Lease) -> None:
        if self._holders.get(lease.upload_id) is lease:
            del self._holders[lease.upload_id]

    def release_when_idle(self, lease: Lease) -> None:
        task = lease.pending
        if task is None or task.done():
            self.release(lease)
        else:
            task.add_done_callback(lambda _t: self.release(lease))


@dataclass(frozen=True)
class UploadLimits:
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES


class Uploads:
    """The server's upload machinery: one per server, shared by the upload RPCs."""

    def __init__(self, rt: Runtime, limits: UploadLimits | None = None) -> None:
        self.rt = rt
        self.limits = limits or UploadLimits()
        self.multipart: Multipart = multipart_for(rt.store)
        self.leases = Leases()
        # Hashing only (never waits on anything), so it cannot starve the worker pool.
        self.hash_pool = ThreadPoolExecutor(4, thread_name_prefix="upload-hash")

    def write_sync(
        self, fn: Callable[Concatenate[Session, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run `fn(session, ...)` in a read-write transaction (from a worker thread)."""
        with transaction(self.rt.sessions) as session:
            return fn(session, *args, **kwargs)

    def check_declared_size(self, size: int | None, field_name: str) -> None:
        if size is not None and size > self.limits.max_file_bytes:
            raise InvalidArgument(
                f"{field_name}: {size} bytes is over this server's limit of "
                f"{self.limits.max_file_bytes} bytes per file",
                [FieldViolation(field_name, f"must be at most {self.limits.max_file_bytes}")],
                reason="FILE_TOO_LARGE",
                metadata={"limit_bytes": str(self.limits.max_file_bytes)},
            )

    def batch(self) -> UploadBatch:
        """The uploads of one RPC: `async with uploads.batch() as batch: ...`."""
        return UploadBatch(self)


class _FileSink:
    """The bytes of one file of an upload."""

    def __init__(self, owner: UploadWriter, progress: uploads.FileProgress) -> None:
        self.owner = owner
        self.index = progress.index
        self.decl = progress.decl
        self.key = progress.key
        self.multipart_id = progress.multipart_id
        self.parts: list[PartInfo] = list(progress.parts)
        self.committed = progress.committed  # bytes in durable parts
        self.received = progress.committed  # bytes this server has (durable + buffered)
        self.done = progress.done
        self.sha256 = progress.sha256
        self.length = progress.length
        self.completed_here = False
        fresh = progress.committed == 0 and not progress.done
        self.hasher = hashlib.sha256() if fresh else None
        self.buffer: list[bytes] = []
        self.buffered = 0
        self.next_number = len(self.parts) + 1
        self.in_flight: list[asyncio.Task[None]] = []  # this stream's parts, oldest first
        self.hashed: asyncio.Task[None] | None = None  # the newest part's hash

    @property
    def uploads(self) -> Uploads:
        return self.owner.uploads

    async def write(self, data: bytes) -> None:
        if self.done:
            raise InvalidArgument(
                f"{self.decl.file_name}: bytes sent for a file that is already complete",
                reason="UNEXPECTED_CHUNK",
            )
        size = self.decl.size
        if size is not None and self.received + len(data) > size:
            raise InvalidArgument(
                f"{self.decl.file_name}: more bytes than the declared size_bytes {size}",
                [FieldViolation(self.owner.size_field(self.index), "size mismatch")],
                reason="SIZE_MISMATCH",
            )
        limit = self.uploads.limits.max_file_bytes
        if self.received + len(data) > limit:
            raise InvalidArgument(
                f"{self.decl.file_name}: over this server's limit of {limit} bytes per file",
                [FieldViolation(self.owner.size_field(self.index), "file too large")],
                reason="FILE_TOO_LARGE",
                metadata={"limit_bytes": str(limit)},
            )
        self.buffer.append(data)
        self.buffered += len(data)
        self.received += len(data)
        if self.buffered >= self.uploads.multipart.part_size:
            await self._flush()

    async def _flush(self) -> None:
        """Start uploading the buffer as the next part; returns once fewer than
        PARTS_IN_FLIGHT parts are in flight (raising the error of one that failed)."""
        data = b"".join(self.buffer)
        self.buffer.clear()
        self.buffered = 0
        while len(self.in_flight) >= PARTS_IN_FLIGHT:
            oldest = self.in_flight.pop(0)
            await asyncio.shield(oldest)  # if this stream is cancelled, the part still lands
        self._check_lease()
        if self.multipart_id is None:
            await self._begin()
        number = self.next_number
        self.next_number += 1
        offset = self.received - len(data)
        hashed = self._hash_after(self.hashed, data) if self.hasher is not None else None
        self.hashed = hashed
        part = self._spawn(self._part(data, number, offset, self.owner.lease.pending, hashed))
        self.in_flight.append(part)

    def _check_lease(self) -> None:
        lease = self.owner.lease
        if lease.superseded:
            raise Aborted(
                f"upload {lease.upload_id} was taken over by a newer stream",
                reason="UPLOAD_SUPERSEDED",
            )

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run `coro` as the upload's newest in-flight operation (not cancelled with the
        stream: what it uploads is still recorded)."""
        task = asyncio.ensure_future(coro)
        # Retrieved here too, so an operation failing after its stream was cancelled is not
        # reported as "never retrieved".
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        self.owner.lease.pending = task
        return task

    async def _begin(self) -> None:
        """Start the multipart upload; its id is kept even if this stream is cancelled
        meanwhile (so a discard can abort it)."""

        def keep(t: asyncio.Task[str]) -> None:
            if not t.cancelled() and t.exception() is None:
                self.multipart_id = t.result()

        task = asyncio.ensure_future(
            self.uploads.rt.transfer(self.uploads.multipart.begin, self.key)
        )
        task.add_done_callback(keep)
        await asyncio.shield(task)
        keep(task)

    def _hash_after(self, previous: asyncio.Task[None] | None, data: bytes) -> asyncio.Task[None]:
        """Hash `data` on the hash pool once the previous part's bytes are hashed (parts hash
        in order; hashlib releases the GIL, so this overlaps the uploads)."""
        hasher = self.hasher
        assert hasher is not None
        pool = self.uploads.hash_pool

        async def run() -> None:
            if previous is not None:
                await asyncio.wait([previous])
            await asyncio.get_running_loop().run_in_executor(pool, hasher.update, data)

        task = asyncio.ensure_future(run())
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return task

    async def _part(
        self,
        data: bytes,
        number: int,
        offset: int,
        previous: asyncio.Task[None] | None,
        hashed: asyncio.Task[None] | None,
    ) -> None:
        """Upload one part (alongside the previous one), then, once the previous part is
        recorded, record this one: parts are recorded in order, so the committed size only
        counts contiguous durable parts. A part whose predecessor failed is not recorded."""
        mp, multipart_id = self.uploads.multipart, self.multipart_id
        assert multipart_id is not None
        try:
            part = await self.uploads.rt.transfer(
                mp.upload_part, self.key, multipart_id, number, data
            )
        finally:
            if hashed is not None:
                await asyncio.wait([hashed])
        del data
        if previous is not None:
            await asyncio.wait([previous])
            previous.result()  # its error is this part's error: nothing after a gap is recorded
        await self.uploads.rt.call(
            self.uploads.write_sync,
            uploads.record_part,
            self.owner.org_id,
            self.owner.lease.upload_id,
            self.index,
            multipart_id,
            part,
            offset,
            model_uid=self.owner.model_uid,
        )
        self.parts.append(part)
        self.committed += part.size

    async def _wait_pending(self) -> None:
        task = self.owner.lease.pending
        if task is not None:
            # Shielded: if this stream is cancelled, the parts still land and are recorded.
            await asyncio.shield(task)

    async def _dispatch(self, fn: Callable[P, None], *args: P.args, **kwargs: P.kwargs) -> None:
        """Run `fn` in a worker thread as the upload's one in-flight operation, after every
        part landed; refused once a newer stream has taken the upload over."""
        await self._wait_pending()
        self.in_flight.clear()
        self._check_lease()
        self._spawn(self.uploads.rt.call(fn, *args, **kwargs))

    async def finish(self) -> StoredFile:
        """Flush the last part, verify size and sha256, complete the object."""
        if not self.done:
            declared = self.decl.size
            if declared is not None and self.received < declared:
                # Never flush a short part that is not the last: the buffer is dropped, as
                # when the connection drops, and the client resumes at the committed size.
                await self._wait_pending()
                committed = self.owner.committed_total()
                raise UploadIncomplete(
                    f"{self.decl.file_name}: the stream ended after {self.received} of the "
                    f"declared {declared} bytes; {committed} bytes of upload "
                    f"{self.owner.upload_id} are committed: resume at write_offset {committed}",
                    [
                        FieldViolation(
                            self.owner.size_field(self.index),
                            f"declared {declared}, received {self.received}",
                        )
                    ],
                    reason="UPLOAD_INCOMPLETE",
                    metadata={
                        "upload_id": self.owner.upload_id,
                        "committed_size": str(committed),
                    },
                )
            if self.buffered:
                await self._flush()
            await self._dispatch(self._complete)
            await self._wait_pending()
        return StoredFile(
            file_name=self.decl.file_name,
            kind=self.decl.kind,
            storage_key=self.key,
            size_bytes=self.length or 0,
            sha256=self.sha256,
        )

    def _complete(self) -> None:
        """Worker thread: checks, then complete (and read back a resumed file)."""
        size, declared = self.committed, self.decl.size
        name, field = self.decl.file_name, self.owner.size_field(self.index)
        if declared is not None and size != declared:
            raise InvalidArgument(
                f"{name}: the stream ended after {size} of the declared {declared} bytes",
                [FieldViolation(field, f"declared {declared}, received {size}")],
                reason="SIZE_MISMATCH",
                metadata={"committed_size": str(self.owner.committed_total())},
            )
        if size == 0 and self.decl.kind == "weights":
            raise InvalidArgument(
                f"{name}: a weights file must not be empty",
                [FieldViolation(field, "zero-byte weights file")],
                reason="EMPTY_FILE",
            )
        sha = self.hasher.hexdigest() if self.hasher is not None else ""
        if sha:
            self._check_sha(sha)
        mp = self.uploads.multipart
        if self.multipart_id is None:
            self.multipart_id = mp.begin(self.key)
        try:
            mp.complete(self.key, self.multipart_id, self.parts)
        except UploadNotFound:
            # An earlier stream's complete may have gone through without its answer (or
            # its mark_done) arriving: then the object is there. It is read back below.
            info = self.uploads.rt.store.stat(self.key)
            if info is None or info.size != size:
                raise
            sha = ""
        self.completed_here = True
        if not sha:
            digest = hashlib.sha256()
            for chunk in self.uploads.rt.store.get(self.key):
                digest.update(chunk)
            sha = digest.hexdigest()
            self._check_sha(sha)
        self.uploads.write_sync(
            uploads.mark_done,
            self.owner.org_id,
            self.owner.lease.upload_id,
            self.index,
            size,
            sha,
        )
        self.done, self.sha256, self.length = True, sha, size

    def _check_sha(self, sha: str) -> None:
        declared = self.decl.sha256
        if declared and sha != declared:
            raise InvalidArgument(
                f"{self.decl.file_name}: sha256 mismatch: declared {declared}, received {sha}",
                [
                    FieldViolation(
                        self.owner.sha_field(self.index), f"declared {declared}, received {sha}"
                    )
                ],
                reason="CHECKSUM_MISMATCH",
                metadata={"declared_sha256": declared, "actual_sha256": sha},
            )


class UploadWriter:
    """One stream's writes into one upload (one file, or a bundle's concatenated files)."""

    def __init__(
        self,
        uploads_: Uploads,
        org_id: str,
        state: uploads.UploadState,
        lease: Lease,
        write_offset: int,
        model_uid: str | None,
        spec_field: Callable[[int], str],
    ) -> None:
        self.uploads = uploads_
        self.org_id = org_id
        self.state = state
        self.lease = lease
        self.model_uid = model_uid
        self.files = [_FileSink(self, p) for p in state.files]
        self.skip = state.committed_bytes - write_offset  # bytes the server already has
        self.current = next((i for i, f in enumerate(self.files) if not f.done), len(self.files))
        self.spec_field = spec_field

    @property
    def upload_id(self) -> str:
        return self.lease.upload_id

    def size_field(self, index: int) -> str:
        return f"{self.spec_field(index)}.size_bytes"

    def sha_field(self, index: int) -> str:
        return f"{self.spec_field(index)}.sha256"

    def committed_total(self) -> int:
        return sum(f.committed for f in self.files)

    async def write(self, chunk: bytes) -> None:
        data = memoryview(chunk)
        if self.skip > 0:
            n = min(self.skip, len(data))
            data = data[n:]
            self.skip -= n
        while data:
            if self.current >= len(self.files):
                raise InvalidArgument(
                    "more bytes than the declared files hold", reason="UNEXPECTED_CHUNK"
                )
            sink = self.files[self.current]
            size = sink.decl.size
            last = self.current == len(self.files) - 1
            if size is None or last:
                piece = data
            else:
                room = size - sink.received
                if room <= 0:
                    await sink.finish()
                    self.current += 1
                    continue
                piece = data[:room]
            # The whole chunk as is when it all goes to one file (no copy).
            await sink.write(chunk if len(piece) == len(chunk) else bytes(piece))
            data = data[len(piece) :]

    async def close(self, *, at_eof: bool = True) -> list[StoredFile]:
        """The upload's bytes ended (`at_eof`: because the request stream ended): finish
        every file; returns them verified and complete."""
        if at_eof and any(not f.done and f.decl.size is None for f in self.files):
            await asyncio.sleep(EOF_GRACE_SECONDS)  # a cancellation lands here, if any
        return [await sink.finish() for sink in self.files]

    def detach(self) -> None:
        """The stream was cancelled: keep durable parts for a resume."""
        self.uploads.leases.release_when_idle(self.lease)

    def release(self) -> None:
        self.uploads.leases.release(self.lease)

    async def discard(self) -> None:
        """A failed upload: abort its session and remove everything it stored.

        Runs to the end even if the stream is cancelled meanwhile (it is shielded)."""
        task = asyncio.ensure_future(self._discard())
        await asyncio.shield(task)

    async def _discard(self) -> None:
        if self.lease.superseded:
            return  # a newer stream owns the upload now
        await self.lease.settle()
        try:
            refs = await self.uploads.rt.write(uploads.abort_upload, self.org_id, self.upload_id)
        except Exception:
            log.warning("could not abort upload %s", self.upload_id, exc_info=True)
            refs = uploads.ObjectRefs()
        keys = set(refs.completed_keys)
        multipart = set(refs.multipart)
        for sink in self.files:  # also what this stream did but could not record
            if sink.completed_here or sink.done:
                keys.add(sink.key)
            elif sink.multipart_id:
                multipart.add((sink.key, sink.multipart_id))
        await self.uploads.rt.call(_remove, self.uploads, sorted(keys), sorted(multipart))
        self.release()


class UploadBatch:
    """The uploads of one RPC, recorded together: the one upload-then-record path of
    UploadArtifacts, UploadBundle and UploadAndConvert.

    ::

        async with uploads.batch() as batch:
            writer = await batch.start(...)
            ...  # await writer.write(chunk) for each chunk
            files = await writer.close()
            recorded = await batch.record(org_id, target, [NewPackage(fields, files)], expect)

    Leaving the block settles every upload the batch started: see `__aexit__`.
    """

    def __init__(self, uploads_: Uploads) -> None:
        self.uploads = uploads_
        self.writers: list[UploadWriter] = []

    async def start(
        self,
        org_id: str,
        upload_id: str | None,
        write_offset: int,
        target: Target,
        fmt: str,
        files: Sequence[uploads.FileDecl],
        expect: TargetState,
        *,
        field_prefix: str,
        spec_field: Callable[[int], str],
    ) -> UploadWriter:
        """Open (or resume) an upload of `files`; `spec_field(i)` names file i's FileSpec in
        the request (for error details)."""
        if upload_id:
            uploads.parse_upload_id(upload_id, f"{field_prefix}upload_id")
            # Let an older stream of this upload finish its in-flight part first, so the
            # committed size read below is final.
            await self.uploads.leases.settle(upload_id)
        state = await self.uploads.rt.write(
            uploads.open_upload,
            org_id,
            upload_id or None,
            write_offset,
            target,
            fmt,
            files,
            field_prefix=field_prefix,
        )
        lease = await self.uploads.leases.take(state.upload_id)
        if not state.created:
            # Re-read after the takeover: the previous stream may have landed one more part.
            try:
                state = await self.uploads.rt.read(uploads.get_status, org_id, state.upload_id)
                uploads.check_open(state, utcnow())
            except BaseException:
                self.uploads.leases.release(lease)
                raise
        writer = UploadWriter(
            self.uploads, org_id, state, lease, write_offset, expect.model_uid, spec_field
        )
        self.writers.append(writer)
        return writer

    async def record(
        self,
        org_id: str,
        target: Target,
        packages: Sequence[NewPackage],
        expect: TargetState,
    ) -> Recorded:
        """Record the closed uploads as `packages` and commit every upload of the batch, in
        one transaction."""
        return await self.uploads.rt.write(
            uploads.record_upload,
            org_id,
            target,
            packages,
            expect,
            [w.upload_id for w in self.writers],
        )

    async def __aenter__(self) -> UploadBatch:
        return self

    async def __aexit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        """Released when the block ends normally. On an error the uploads stay resumable
        (detached: durable parts and the committed size stay, until the upload expires)
        when the error says nothing against the bytes:
        - the client went away (cancelled, or the response generator closed);
        - the stream ended before the declared size (`UploadIncomplete`: may be a drop);
        - the database or object store failed (answered UNAVAILABLE with RetryInfo, the
          upload id and its committed size: resume once the backend is back);
        - a newer stream took the upload over (it is that stream's now).
        Any other error (bad bytes, a refused record) discards them."""
        if exc is None:
            for w in self.writers:
                w.release()
            return None
        outage = as_domain_error(exc) if isinstance(exc, Exception) else None
        if isinstance(outage, Unavailable) or _keeps_upload(exc):
            for w in self.writers:
                w.detach()
            if isinstance(outage, Unavailable) and self.writers:
                raise self._resumable(outage) from exc
            return None
        for w in self.writers:
            await w.discard()
        return None

    def _resumable(self, outage: Unavailable) -> Unavailable:
        """`outage`, telling where the interrupted upload (the batch's newest) stands: its
        committed size as this stream knows it (a part still landing may add to it; a
        client resuming from less is fine, the server skips what it has)."""
        writer = self.writers[-1]
        committed = writer.committed_total()
        return Unavailable(
            f"{outage.message}; upload {writer.upload_id} keeps at least {committed} "
            f"committed bytes: resume it with that upload_id from the committed size "
            "QueryUploadStatus reports",
            retry_after=outage.retry_after,
            reason=outage.reason,
            metadata={
                **outage.metadata,
                "upload_id": writer.upload_id,
                "committed_size": str(committed),
            },
        )


def _keeps_upload(exc: BaseException) -> bool:
    """Errors after which an upload stays resumable (besides backend outages)."""
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit, UploadIncomplete)):
        return True
    return isinstance(exc, Aborted) and exc.reason == "UPLOAD_SUPERSEDED"


def _remove(ups: Uploads, keys: list[str], multipart: list[tuple[str, str]]) -> None:
    for key, upload_id in multipart:
        try:
            ups.multipart.abort(key, upload_id)
        except Exception:
            log.warning("could not abort multipart upload of %s", key, exc_info=True)
    for key in keys:
        try:
            ups.rt.store.delete(key)
        except Exception:
            log.warning("could not delete %s (the garbage collector will)", key, exc_info=True)
