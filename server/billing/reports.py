"""The admin view of a metered tenant: spend, reserved, limit and remaining per budget window,
and its rpm/tpm with what the last minute used of them."""

from __future__ import annotations

from typing import Any

from controller.budget import Ledger, WindowUsage
from controller.budget.models import RateLimits
from server.config import TenantConfig


def window_rows(usage: list[WindowUsage], now: float) -> list[dict[str, Any]]:
    """One row per budget window (rate windows are reported by `rate_report`)."""
    return [
        {
            "window": u.name,
            "rolling": u.limit.span.rolling,
            "unit": u.limit.unit,
            "hard": u.limit.hard if u.limit.limited else None,
            "limit": u.limit.limit if u.limit.limited else None,
            "spent": u.spent_value,
            "spent_money": u.spent.money,
            "spent_flops": u.spent.flops,
            "reserved": u.reserved_value,
            "remaining": u.remaining,
            "window_start": u.limit.span.start,
            "resets_in_s": u.reset_in(now),
        }
        for u in usage
        if u.limit.kind != "rate"
    ]


async def rate_report(
    ledger: Ledger,
    tenant: TenantConfig,
    rates: list[tuple[str, RateLimits]],
    usage: list[WindowUsage],
) -> dict[str, Any] | None:
    """The tenant's rpm/tpm and what the last 60 s used of them (requests admitted; tokens
    settled plus held)."""
    if not rates:
        return None
    limits = rates[0][1]
    requests = await ledger.requests(tenant.id, rates)
    tpm = next((u for u in usage if u.limit.kind == "rate"), None)
    return {
        "rpm": limits.rpm,
        "tpm": limits.tpm,
        "requests_last_minute": requests[0].count if requests else None,
        "tokens_last_minute": (tpm.spent_value + tpm.reserved_value) if tpm else None,
    }
