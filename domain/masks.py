"""Field masks (AIP-134): which fields an update touches."""

from __future__ import annotations

from collections.abc import Sequence

from domain.errors import InvalidArgument, Violations


def mask_paths(mask: Sequence[str], mutable: Sequence[str]) -> set[str]:
    """The paths of an update mask; `*` means every mutable field. An empty mask, an
    unknown path or an immutable one is INVALID_ARGUMENT naming the mutable fields."""
    allowed = ", ".join(mutable)
    if not mask:
        raise InvalidArgument.field("update_mask", f"is required; mutable fields: {allowed}")
    if list(mask) == ["*"]:
        return set(mutable)
    v = Violations()
    for path in mask:
        if path not in mutable:
            v.add("update_mask", f"unknown or immutable field {path!r}; mutable: {allowed}")
    v.raise_if_any()
    return set(mask)
