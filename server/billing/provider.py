"""The app's budget side, shared by every request's `LedgerBilling`: the ledger (opened on the
first metered request, so a config without metered tenants never touches `var/`), and what
each ledger call's figures feed: λ (server.billing.prices), the budget gauges
(server.billing.gauges), the alert webhooks (`on_usage`), plus the admin reports
(server.billing.reports), spend-log retention (server.billing.spend_logs) and the journal of
settles the store could not take (server.billing.pending), replayed from `start`.

`BudgetProvider` (server.billing.ledger) is this plus the per-request handle it hands out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from controller.budget import Ledger, Pricer, WindowUsage
from controller.budget.ledger import DEFAULT_TTL_S, SpendRecord
from controller.budget.models import LimitUnit
from controller.pacing import ComputePrice, TenantPacer
from server.billing.admission import SettleSignal
from server.billing.gauges import BudgetGauges
from server.billing.identity import Caller
from server.billing.levels import rate_levels
from server.billing.pending import PendingSettles
from server.billing.prices import PriceBook, billing_unit
from server.billing.reports import rate_report, window_rows
from server.billing.spend_logs import SpendLogs
from server.billing.unmetered import unmetered_report
from server.config import AppConfig, TenantConfig
from storage import open_stores

log = logging.getLogger("t2serve.billing")


def open_ledger(config: AppConfig, clock: Callable[[], float]) -> Ledger:
    """The ledger on the store the config's `ledger:` section names."""
    cfg = config.ledger
    store = open_stores(cfg).ledger()
    return Ledger(store, clock=clock, ttl_s=cfg.reservation_ttl_s or DEFAULT_TTL_S)


def metered(tenant: TenantConfig) -> bool:
    """Whether the tenant's requests go through the ledger at all."""
    return (
        tenant.prices is not None
        or tenant.budgets is not None
        or tenant.user_budgets is not None
        or (tenant.rate_limits is not None and tenant.rate_limits.any())
    )


class BudgetProviderBase:
    """Everything `BudgetProvider` is but the per-request handle; one per app (or per test).

    `model_params` gives N per model id for FLOPs pricing (2·N per token) where a tenant's
    price entry does not; the app counts it from the weights (server.engine.weights).
    """

    def __init__(
        self,
        config: AppConfig,
        *,
        ledger: Ledger | None = None,
        clock: Callable[[], float] = time.time,
        publish_metrics: bool = True,
        model_params: Mapping[str, float | None] | None = None,
    ) -> None:
        self._ledger = ledger
        self.clock = clock
        self._params: dict[str, float | None] = dict(model_params or {})
        self.prices = PriceBook(lambda: self.clock())  # late: tests move the clock
        self.gauges = BudgetGauges(self.prices, enabled=publish_metrics, refresh=self.read_figures)
        self.logs = SpendLogs(lambda: self.ledger)
        self.settles = SettleSignal()
        stores = open_stores(config.ledger)
        self.pending = PendingSettles(
            stores.pending_path, stores.pending_settles, lambda: self.ledger.store, self.settles
        )
        # told the tenant's window figures after each ledger call (the alert webhooks)
        self.on_usage: Callable[[TenantConfig, list[WindowUsage]], None] | None = None
        self.reload(config)

    def reload(self, config: AppConfig) -> None:
        """Take a new config (budgets apply from the next reserve; the backend stays)."""
        self.config = config
        self.default_policy = config.defaults.policy
        self.prices.reload(config.tenants)
        self.gauges.configure(config.tenants)

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            self._ledger = open_ledger(self.config, self.clock)
        return self._ledger

    def metered(self, tenant: TenantConfig) -> bool:
        return metered(tenant)

    def pricer(self, tenant: TenantConfig, model: str) -> Pricer:
        return Pricer(tenant.prices, model, self._params.get(model))

    def window_figures(self, tenant: TenantConfig) -> list[WindowUsage]:
        """The ledger figures this replica saw last for the tenant (no ledger call)."""
        return self.prices.figures(tenant) or []

    def pacer(self, tenant: TenantConfig, pricer: Pricer) -> TenantPacer:
        return self.prices.pacer(tenant, pricer)

    def price(self, tenant: TenantConfig, pricer: Pricer, unit: LimitUnit) -> ComputePrice | None:
        return self.prices.price(tenant, pricer, unit)

    def remember(
        self, tenant: TenantConfig, usage: list[WindowUsage], pricer: Pricer, force: bool = False
    ) -> None:
        """Keep the ledger's latest figures for λ and `remaining`, check the alerts and publish
        the gauges. Only the tenant's own budget windows: keys and users never become labels,
        nor drive λ, and rate limits are no budget (no pacing, no alerts, no budget metrics)."""
        usage = [u for u in usage if not u.limit.scope and u.limit.kind == "budget"]
        self.prices.remember(tenant, usage)
        if self.on_usage is not None and tenant.alerts is not None:
            try:
                self.on_usage(tenant, usage)
            except Exception:  # alerts never fail a request
                log.exception("budget alert check failed for %s", tenant.id)
        self.gauges.publish(tenant, pricer, force)

    def tenant_pricer(self, tenant: TenantConfig) -> Pricer:
        """The pricer of the tenant's first model (any served model if it may use all): the
        unit and λ of a view of the tenant outside a request."""
        model = tenant.models[0] if tenant.models and tenant.models[0] != "*" else ""
        return self.pricer(tenant, model or self.config.model_ids[0])

    async def read_figures(self, tenant_id: str) -> None:
        """Read the tenant's budget windows from the ledger and publish them, outside any
        request (the gauges ask, for rolling windows whose spend slides out)."""
        tenant = next((t for t in self.config.tenants if t.id == tenant_id), None)
        if tenant is None or tenant.budgets is None:
            return  # removed by a reload meanwhile
        usage = await self.ledger.usage(tenant.id, tenant.budgets)
        self.remember(tenant, usage, self.tenant_pricer(tenant), force=True)

    async def report(self, tenant: TenantConfig) -> dict[str, Any]:
        """Spend, reserved, limit and remaining per window, and λ: the admin view of a tenant."""
        if not self.metered(tenant):
            return unmetered_report(tenant)
        pricer = self.tenant_pricer(tenant)
        unit = billing_unit(tenant, pricer)
        rates = rate_levels(tenant, Caller())  # the tenant's own, no key's
        usage = await self.ledger.usage(tenant.id, tenant.budgets, rates=rates)
        self.remember(tenant, usage, pricer, force=True)
        price = self.price(tenant, pricer, unit)
        return {
            "id": tenant.id,
            "unit": unit,
            "currency": tenant.prices.currency if tenant.prices else None,
            "metered": True,
            "windows": window_rows(usage, self.clock()),
            "price_of_compute": price.lam if price is not None else None,
            "pacing_mode": tenant.pacing.mode,
            "rate_limits": await rate_report(self.ledger, tenant, rates, usage),
        }

    async def spend_logs(
        self, tenant_ids: list[str], since: float, until: float
    ) -> list[SpendRecord]:
        """Spend-log records of these tenants with since ≤ time < until, oldest first (an
        unmetered tenant has records too where its keys carry budgets or rate limits)."""
        return await self.logs.records(tenant_ids, since, until)

    async def purge_logs(self, force: bool = False) -> int:
        """Retention: drop records past `ledger.spend_log_retention_days`, at most hourly."""
        keep_s = self.config.ledger.spend_log_retention_days * 86400
        return await self.logs.purge(self.clock(), keep_s, force)

    async def start(self) -> None:
        """At server start: replay the settles an earlier run left in the journal."""
        await self.pending.start()

    async def close(self) -> None:
        await self.gauges.close()
        await self.pending.close()
        if self._ledger is not None:
            await self._ledger.close()
            self._ledger = None
