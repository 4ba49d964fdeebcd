"""Who is calling: the org an API key belongs to."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Principal:
    """The caller of an RPC. `org_id` is None for anonymous callers (public RPCs only)."""

    org_id: str | None
    org_name: str | None = None
    key_id: str | None = None
    admin: bool = False

    @property
    def anonymous(self) -> bool:
        return self.org_id is None

    def require_org(self) -> str:
        """The org id; anonymous principals never reach org-scoped code (auth rejects them)."""
        if self.org_id is None:
            from domain.errors import Unauthenticated

            raise Unauthenticated("this RPC needs an API key: authorization: Bearer <key>")
        return self.org_id


ANONYMOUS = Principal(org_id=None)
