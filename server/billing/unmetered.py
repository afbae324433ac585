"""No budget: every wave is granted in full and cost is counted in tokens, so `max_cost` and
the `t2.cost` field still mean something for tenants with neither prices nor budgets."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from server.billing.protocol import Billing, WaveHold

if TYPE_CHECKING:
    from controller.budget.ledger import SpendRecord
    from controller.pacing import ComputePrice
    from server.config import AppConfig, TenantConfig


class UnmeteredBilling:
    """Grants every wave; one unit per token."""

    unit = "tokens"

    def __init__(self) -> None:
        self.spent = 0.0

    def quote(self, prompt_tokens: int, completion_tokens: int, model: str | None = None) -> float:
        return float(prompt_tokens + completion_tokens)

    def use_model(self, model: str) -> None:
        return None

    async def reserve(self, hold: WaveHold) -> WaveHold:
        return hold

    async def settle(self, hold: WaveHold, *, prompt_tokens: int, completion_tokens: int) -> float:
        cost = self.quote(prompt_tokens, completion_tokens)
        self.spent += cost
        return cost

    async def hold_charge(
        self, model: str, wave: int, *, prompt_tokens: int, completion_tokens: int
    ) -> None:
        return None

    async def charge(
        self, model: str, wave: int, *, prompt_tokens: int, completion_tokens: int
    ) -> float:
        cost = self.quote(prompt_tokens, completion_tokens)
        self.spent += cost
        return cost

    def finish(self, stop_reason: str | None, status: int, samples: int) -> None:
        return None

    async def close(self) -> None:
        return None

    def remaining(self) -> float | None:
        return None

    def remaining_level(self) -> str | None:
        return None

    def price_of_compute(self) -> ComputePrice | None:
        return None

    def rate_limit_headers(self) -> dict[str, str]:
        return {}


def unmetered_report(tenant: TenantConfig) -> dict[str, Any]:
    """The admin view of a tenant nothing is billed for."""
    return {"id": tenant.id, "metered": False, "windows": [], "price_of_compute": None}


class UnmeteredProvider:
    """The provider for a deployment without a ledger: `UnmeteredBilling` for every tenant."""

    def metered(self, tenant: TenantConfig) -> bool:
        return False

    def for_request(self, tenant: TenantConfig, model: str, request_id: str) -> Billing:
        return UnmeteredBilling()

    async def report(self, tenant: TenantConfig) -> dict[str, Any]:
        return unmetered_report(tenant)

    def reload(self, config: AppConfig) -> None:
        return None

    async def spend_logs(
        self, tenant_ids: list[str], since: float, until: float
    ) -> list[SpendRecord]:
        return []  # nothing is metered, nothing is logged

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None
