"""A tenant's budget figures and λ as Prometheus gauges, published at most every
METRICS_INTERVAL_S per tenant: publishing costs more than a ledger call, so a busy tenant's
figures are shown at that rate, and a deferred publish makes sure the latest figures are shown
once the interval is over. Only windows the current config budgets are shown: a reload that
removes a budget (or a tenant) removes its series too, or its last figures would stay, and the
burn alerts on them keep firing."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable

from controller.budget import Pricer
from server import metrics
from server.billing.prices import PriceBook, billing_unit
from server.config import TenantConfig

METRICS_INTERVAL_S = 0.25


class BudgetGauges:
    """Publishes what `prices` last remembered for a tenant (nothing when not `enabled`)."""

    def __init__(self, prices: PriceBook, *, enabled: bool = True) -> None:
        self.prices = prices
        self.enabled = enabled
        self._published: dict[str, float] = {}
        self._trailing: dict[str, asyncio.TimerHandle] = {}
        self._windows: dict[str, frozenset[str]] | None = None  # tenant → configured windows

    def configure(self, tenants: Iterable[TenantConfig]) -> None:
        """Take the (re)loaded config's budget windows; on a reload, drop the series of windows
        and tenants no longer in it (publishes still due show only what the config keeps)."""
        reloaded = self._windows is not None
        self._windows = {
            t.id: frozenset(name for name, _ in t.budgets.windows()) if t.budgets else frozenset()
            for t in tenants
        }
        if reloaded and self.enabled:
            metrics.retain_budgets(self._windows)

    def publish(self, tenant: TenantConfig, pricer: Pricer, force: bool = False) -> None:
        if not self.enabled or (self._windows is not None and tenant.id not in self._windows):
            return  # a tenant a reload removed (a request or a deferred publish outlived it)
        now = time.monotonic()
        wait = self._published.get(tenant.id, -1e9) + METRICS_INTERVAL_S - now
        if not force and wait > 0:
            if tenant.id not in self._trailing:  # publish the latest figures once it is due
                with contextlib.suppress(RuntimeError):  # no running loop: nothing to defer
                    self._trailing[tenant.id] = asyncio.get_running_loop().call_later(
                        wait, self._flush, tenant, pricer
                    )
            return
        self._published[tenant.id] = now
        configured = self._windows.get(tenant.id) if self._windows is not None else None
        for u in self.prices.figures(tenant) or []:
            if not u.limit.limited or (configured is not None and u.name not in configured):
                continue
            metrics.set_budget(
                tenant.id,
                u.name,
                limit=u.limit.limit,
                remaining=max(0.0, u.remaining or 0.0),
                reserved=u.reserved_value,
                spent=u.spent_value,
                window_start=u.limit.span.start,
                window_end=u.limit.span.end,
                rolling=u.limit.span.rolling,
            )
        price = self.prices.price(tenant, pricer, billing_unit(tenant, pricer))
        metrics.set_price_of_compute(tenant.id, price.lam if price is not None else 0.0)

    def close(self) -> None:
        """Drop the deferred publishes: a closed provider's figures are no longer the ledger's
        (another provider, a restart's, may be publishing the same tenant by then)."""
        for pending in self._trailing.values():
            pending.cancel()
        self._trailing.clear()

    def _flush(self, tenant: TenantConfig, pricer: Pricer) -> None:
        self._trailing.pop(tenant.id, None)
        if self.prices.figures(tenant) is not None:
            self.publish(tenant, pricer, force=True)
