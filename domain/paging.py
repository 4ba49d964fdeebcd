"""Page tokens (AIP-158): opaque, bound to the query they came from.

A token encodes the offset of the next page and a fingerprint of the request's filters,
so a token reused with different filters is rejected instead of silently skipping rows.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass

from domain.errors import InvalidArgument

MAX_PAGE_SIZE = 1000


@dataclass(frozen=True)
class Page:
    offset: int
    size: int
    fingerprint: str

    def next_token(
        self, returned: int, total: int | None = None, *, has_more: bool | None = None
    ) -> str:
        """Token for the page after this one, or '' when this was the last."""
        more = (
            has_more
            if has_more is not None
            else (total is not None and self.offset + returned < total)
        )
        if not more:
            return ""
        payload = json.dumps({"o": self.offset + returned, "f": self.fingerprint}).encode()
        return base64.urlsafe_b64encode(payload).decode().rstrip("=")


def fingerprint(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def page_of(
    page_size: int,
    page_token: str,
    *filters: object,
    default_size: int = 50,
    size_field: str = "page_size",
    token_field: str = "page_token",
) -> Page:
    """Validate paging fields of a request and decode its token. `size_field` and
    `token_field` name the request's fields in errors (a response paging a nested list,
    e.g. `device_page_size`)."""
    if page_size < 0:
        raise InvalidArgument.field(size_field, "must not be negative")
    size = min(page_size or default_size, MAX_PAGE_SIZE)
    fp = fingerprint(*filters)
    if not page_token:
        return Page(0, size, fp)
    try:
        padded = page_token + "=" * (-len(page_token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        offset = int(data["o"])
        token_fp = str(data["f"])
    except (ValueError, KeyError, TypeError):
        raise InvalidArgument.field(token_field, "is not a token this server issued") from None
    if offset < 0:
        raise InvalidArgument.field(token_field, "is not a token this server issued")
    if token_fp != fp:
        raise InvalidArgument.field(
            token_field, "was issued for a request with different filters or order"
        )
    return Page(offset, size, fp)
