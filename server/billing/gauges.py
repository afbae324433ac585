"""A tenant's budget figures and λ as Prometheus gauges, published at most every
METRICS_INTERVAL_S per tenant: publishing costs more than a ledger call, so a busy tenant's
figures are shown at that rate, and a deferred publish makes sure the latest figures are shown
once the interval is over. Only windows the current config budgets are shown: a reload that
removes a budget (or a tenant) removes its series too, or its last figures would stay, and the
burn alerts on them keep firing.

A rolling window's spend also falls with no request at all, as it slides out of the window: while
a published rolling window shows spend, its figures are read again from the ledger each time some
of it may have slid out (at most every REFRESH_MIN_S), so its gauges, and the rolling burn
alerts on them, follow it down. When that read fails (the ledger's store is down), those windows'
figures are marked unknown (NaN: metrics.set_budget_unknown) until a read succeeds: shown as they
were, they would keep the rolling alerts firing on spend that has slid out since. Calendar windows
keep their figures: their spend does not fall before their reset."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

from controller.budget import Pricer, WindowUsage
from server import metrics
from server.billing.prices import PriceBook, billing_unit
from server.config import TenantConfig

log = logging.getLogger("t2serve.billing")

METRICS_INTERVAL_S = 0.25
REFRESH_MIN_S = 15.0
"""The least time between two reads of a tenant's rolling figures (the shipped scrape interval:
fresher figures than Prometheus samples would only cost ledger reads)."""
REFRESH_RETRY_S = 60.0
"""After a read of the rolling figures failed (the store is down), the next try."""


class BudgetGauges:
    """Publishes what `prices` last remembered for a tenant (nothing when not `enabled`)."""

    def __init__(
        self,
        prices: PriceBook,
        *,
        enabled: bool = True,
        refresh: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        """`refresh(tenant id)` reads the tenant's figures from the ledger again and publishes
        them (through `publish`); without it, rolling figures change only with requests."""
        self.prices = prices
        self.enabled = enabled
        self.refresh = refresh
        self._published: dict[str, float] = {}
        self._trailing: dict[str, asyncio.TimerHandle] = {}
        self._windows: dict[str, frozenset[str]] | None = None  # tenant → configured windows
        self._rereads: dict[str, asyncio.TimerHandle] = {}  # tenant → next read of its figures
        self._sliding: dict[str, tuple[str, ...]] = {}  # tenant → rolling windows read again
        self._reading: set[asyncio.Task[None]] = set()
        self._closed = False

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
        for tenant_id in [t for t in self._rereads if t not in self._windows]:
            self._rereads.pop(tenant_id).cancel()
        for tenant_id in [t for t in self._sliding if t not in self._windows]:
            del self._sliding[tenant_id]

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
        sliding: list[WindowUsage] = []  # rolling windows shown with spend that will slide out
        for u in self.prices.figures(tenant) or []:
            if not u.limit.limited or (configured is not None and u.name not in configured):
                continue
            if u.limit.span.rolling and u.spent_value > 0:
                sliding.append(u)
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
        self._reread_when_sliding(tenant.id, sliding)

    def _reread_when_sliding(self, tenant_id: str, sliding: list[WindowUsage]) -> None:
        """Schedule the next read of the tenant's figures for when the oldest spend of a rolling
        window shown may slide out; a publish in the meantime (a request's) reschedules it."""
        pending = self._rereads.pop(tenant_id, None)
        if pending is not None:
            pending.cancel()
        if self.refresh is None or not sliding:
            self._sliding.pop(tenant_id, None)
            return
        self._sliding[tenant_id] = tuple(u.name for u in sliding)
        now = self.prices.clock()
        delay = max(REFRESH_MIN_S, min(u.reset_in(now) for u in sliding))
        self._schedule_read(tenant_id, delay)

    def _schedule_read(self, tenant_id: str, delay: float) -> None:
        if self._closed:  # a read that finished as its provider closed: nothing after it
            return
        with contextlib.suppress(RuntimeError):  # no running loop: no request can outlive it
            loop = asyncio.get_running_loop()
            self._rereads[tenant_id] = loop.call_later(delay, self._read, tenant_id)

    def _read(self, tenant_id: str) -> None:
        self._rereads.pop(tenant_id, None)
        task = asyncio.get_running_loop().create_task(self._read_figures(tenant_id))
        self._reading.add(task)
        task.add_done_callback(self._reading.discard)

    async def _read_figures(self, tenant_id: str) -> None:
        assert self.refresh is not None
        try:
            await self.refresh(tenant_id)
        except Exception as e:  # a ledger outage: its sliding figures are unknown until read
            log.warning(
                "reading %s's rolling budget figures failed (%s); they show as unknown (NaN) "
                "until the next try, in %.0f s",
                tenant_id, e, REFRESH_RETRY_S,
            )  # fmt: skip
            if tenant_id in self._rereads:  # a request's publish rescheduled it: read since
                return
            if self.enabled and not self._closed:
                configured = self._windows.get(tenant_id) if self._windows is not None else None
                for window in self._sliding.get(tenant_id, ()):
                    if configured is None or window in configured:
                        metrics.set_budget_unknown(tenant_id, window)
            self._schedule_read(tenant_id, REFRESH_RETRY_S)

    async def close(self) -> None:
        """Drop the deferred publishes and reads: a closed provider's figures are no longer the
        ledger's (another provider, a restart's, may be publishing the same tenant by then). A
        read under way finishes first, as it uses the ledger that closes next."""
        self._closed = True
        for pending in [*self._trailing.values(), *self._rereads.values()]:
            pending.cancel()
        self._trailing.clear()
        self._rereads.clear()
        if self._reading:
            await asyncio.gather(*self._reading, return_exceptions=True)

    def _flush(self, tenant: TenantConfig, pricer: Pricer) -> None:
        self._trailing.pop(tenant.id, None)
        if self.prices.figures(tenant) is not None:
            self.publish(tenant, pricer, force=True)
