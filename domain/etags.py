"""Strong etags (AIP-154) derived from a row's uid and revision counter."""

from __future__ import annotations

import hashlib

from domain.errors import Aborted


def etag_of(uid: str, revision: int) -> str:
    return hashlib.sha256(f"{uid}:{revision}".encode()).hexdigest()[:20]


def check_etag(given: str, uid: str, revision: int, resource: str) -> None:
    """A write carrying an etag proceeds only if the resource has not changed since."""
    if given and given != etag_of(uid, revision):
        raise Aborted(
            f"{resource} was modified since the etag was read; read it again and retry",
            reason="ETAG_MISMATCH",
            metadata={"resource_name": resource},
        )
