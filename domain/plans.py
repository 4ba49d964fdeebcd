"""Plans and their limits. A plan sets the default quota of a new org."""

from __future__ import annotations

from types import MappingProxyType

# model_versions_monthly: versions an org's uploads may create per calendar month (UTC).
PLANS = MappingProxyType(
    {
        "free": {"model_versions_monthly": 20},
        "team": {"model_versions_monthly": 500},
        "enterprise": {"model_versions_monthly": 100_000},
    }
)
DEFAULT_PLAN = "free"
