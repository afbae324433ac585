"""Spend logs: reading the tenants' records, and retention (records past
`ledger.spend_log_retention_days` dropped, at most hourly, from the requests' own close)."""

from __future__ import annotations

import math
from collections.abc import Callable

from controller.budget import Ledger
from controller.budget.ledger import SpendRecord

LOG_PURGE_EVERY_S = 3600.0


class SpendLogs:
    """The spend-log side of the ledger `ledger()` opens (on first use)."""

    def __init__(self, ledger: Callable[[], Ledger]) -> None:
        self._ledger = ledger
        self._purged_at = -math.inf

    async def records(self, tenant_ids: list[str], since: float, until: float) -> list[SpendRecord]:
        """These tenants' records with since ≤ time < until, oldest first."""
        out: list[SpendRecord] = []
        for tenant_id in tenant_ids:
            out += await self._ledger().store.spend_logs(tenant_id, since, until)
        out.sort(key=lambda r: (r.time, r.tenant, r.request_id))
        return out

    async def purge(self, now: float, keep_s: float, force: bool = False) -> int:
        """Drop records older than `keep_s` at `now` (the ledger's clock), at most every
        LOG_PURGE_EVERY_S unless `force`."""
        if not force and now - self._purged_at < LOG_PURGE_EVERY_S:
            return 0
        self._purged_at = now
        return await self._ledger().store.purge_logs(now - keep_s)
