"""The seam between the sampling loop and whoever bills for it.

The orchestrator calls, per request:

    billing = provider.for_request(tenant, model, request_id)
    for each wave:
        granted = await billing.reserve(wave=i, samples=w, prompt_tokens=p, max_tokens=m)
        ...  # draw `granted` samples (1 ≤ granted ≤ w)
        cost = await billing.settle(wave=i, prompt_tokens=p_used, completion_tokens=c_used)
    await billing.close()

`reserve` holds the wave's worst case (prompt + w × max_tokens, priced). It may grant fewer samples
than asked when the budget is short (degrade before refusing) and raises `InsufficientQuota` when
not even one fits: the API answers 429 `insufficient_quota` with `Retry-After`. `settle` is called
exactly once per reserved wave, also when the wave was cut short by a disconnect or a deadline,
with the tokens the engine actually reported; it returns that wave's cost and releases the rest.
Settlement is keyed by (request_id, wave) so a retry is idempotent.

Tenants without a budget get `UnmeteredBilling`, which grants everything and prices one unit per
token, so `max_cost` and the `t2.cost` field still mean something in the demo.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from controller.pacing import ComputePrice
    from server.config import TenantConfig


class InsufficientQuota(Exception):
    """Not even one sample fits the tenant's budget; retry after `retry_after_s` (window reset)."""

    def __init__(
        self, message: str, retry_after_s: float | None = None, window: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s
        self.window = window


class Billing(Protocol):
    """Per-request billing handle; see the module docstring for the call order.

    `unit` names what costs are counted in: "currency" (the tenant's price unit), "flops", or
    "tokens" (unmetered); metrics file spend under it.
    """

    unit: str

    def quote(self, prompt_tokens: int, completion_tokens: int) -> float:
        """The cost of this many tokens for this tenant and model (no side effects)."""
        ...

    async def reserve(self, *, wave: int, samples: int, prompt_tokens: int, max_tokens: int) -> int:
        """Hold the wave's worst case; return how many samples (1..samples) may be drawn."""
        ...

    async def settle(self, *, wave: int, prompt_tokens: int, completion_tokens: int) -> float:
        """Charge what the engine reported for this wave, release the rest; return its cost."""
        ...

    async def close(self) -> None:
        """Release anything still held (called once, even after errors)."""
        ...

    def remaining(self) -> float | None:
        """Budget left after this request (tightest window), or None when unlimited."""
        ...

    def price_of_compute(self) -> ComputePrice | None:
        """The budget's price of compute, per unit of this billing's cost (the request's policy
        converts it, pricing a sample at its worst-case `quote`), or None: no pressure."""
        ...


class BillingProvider(Protocol):
    """Builds a `Billing` per request; the app holds one (replaced by the budgets module)."""

    def for_request(self, tenant: TenantConfig, model: str, request_id: str) -> Billing: ...


class UnmeteredBilling:
    """No budget: every wave is granted in full; cost is counted in tokens."""

    unit = "tokens"

    def __init__(self) -> None:
        self.spent = 0.0

    def quote(self, prompt_tokens: int, completion_tokens: int) -> float:
        return float(prompt_tokens + completion_tokens)

    async def reserve(self, *, wave: int, samples: int, prompt_tokens: int, max_tokens: int) -> int:
        return samples

    async def settle(self, *, wave: int, prompt_tokens: int, completion_tokens: int) -> float:
        cost = self.quote(prompt_tokens, completion_tokens)
        self.spent += cost
        return cost

    async def close(self) -> None:
        return None

    def remaining(self) -> float | None:
        return None

    def price_of_compute(self) -> ComputePrice | None:
        return None


class UnmeteredProvider:
    """The default provider: `UnmeteredBilling` for every tenant."""

    def for_request(self, tenant: TenantConfig, model: str, request_id: str) -> Billing:
        return UnmeteredBilling()
