"""Each tenant's price of compute on this replica, from the ledger figures it saw last.

The figures come back from every ledger call (`remember`); λ and `remaining` read them without a
ledger call of their own. One `TenantPacer` per tenant (controller.pacing) keeps its state
across requests and is dropped when the tenant's pacing settings change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from controller.budget import Cost, Pricer, Unit, WindowUsage
from controller.budget.models import LimitUnit
from controller.pacing import ComputePrice, TenantPacer, default_initial_price
from server import metrics
from server.config import TenantConfig


def billing_unit(tenant: TenantConfig, pricer: Pricer) -> Unit:
    """The unit `quote`, `t2.cost` and λ are expressed in: the first budget's, else by price."""
    budgets = tenant.budgets
    if budgets is not None:
        windows = budgets.windows()
        if windows:
            return windows[0][1].unit
        if budgets.request is not None:
            return budgets.request.unit
    if pricer.per_token("currency") > 0 or pricer.per_token("flops") <= 0:
        return "currency"
    return "flops"


def count_spend(tenant: str, unit: str, cost: Cost) -> None:
    """Add a charge the ledger accepted to t2_spend_total, in the request's cost unit (a
    request counted in tokens has no spend to count). Callers count each settlement key once."""
    if unit == "currency":
        metrics.add_spend(tenant, currency=cost.money)
    elif unit == "flops":
        metrics.add_spend(tenant, flops=cost.flops)


class PriceBook:
    """The last window figures per tenant, and the pacer that turns them into λ."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._pacers: dict[str, TenantPacer] = {}
        self._usage: dict[str, list[WindowUsage]] = {}

    def reload(self, tenants: Iterable[TenantConfig]) -> None:
        """Drop the pacers whose tenant's pacing settings changed (they restart from defaults)."""
        for tenant in tenants:
            pacer = self._pacers.get(tenant.id)
            if pacer is not None and pacer.settings != tenant.pacing:
                del self._pacers[tenant.id]

    def remember(self, tenant: TenantConfig, usage: list[WindowUsage]) -> None:
        self._usage[tenant.id] = usage

    def figures(self, tenant: TenantConfig) -> list[WindowUsage] | None:
        """The ledger figures this replica saw last for the tenant (None: none yet)."""
        return self._usage.get(tenant.id)

    def pacer(self, tenant: TenantConfig, pricer: Pricer) -> TenantPacer:
        pacer = self._pacers.get(tenant.id)
        if pacer is None:
            initial: dict[str, float] = {
                "currency": default_initial_price(pricer.per_token("currency")),
                "flops": default_initial_price(pricer.per_token("flops")),
            }
            pacer = self._pacers[tenant.id] = TenantPacer(tenant.pacing, initial)
        return pacer

    def price(self, tenant: TenantConfig, pricer: Pricer, unit: LimitUnit) -> ComputePrice | None:
        """The tenant's price of compute now, from the last ledger figures this replica saw
        (None: nothing limited, pacing off, or a cap not under pressure, or no budget at all)."""
        usage = self._usage.get(tenant.id)
        if not usage or unit == "tokens":
            return None
        other: Unit = "flops" if unit == "currency" else "currency"
        ratio = pricer.per_token(unit) / pricer.per_token(other) if pricer.per_token(other) else 0
        return self.pacer(tenant, pricer).price(usage, self.clock(), unit, ratio)
