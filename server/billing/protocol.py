"""The billing seam, as protocols only (implementations: `unmetered`, `ledger`).

The sampling loop calls, per request:

    billing = provider.for_request(tenant, model, request_id)
    for each wave:
        hold = await billing.reserve(WaveHold(wave=i, samples=w, prompt_tokens=p, max_tokens=m))
        ...  # draw hold.samples samples (1 ≤ hold.samples ≤ w)
        cost = await billing.settle(hold, prompt_tokens=p_used, completion_tokens=c_used)
        await billing.hold_charge(model, i, prompt_tokens=..., completion_tokens=...)  # verifier
        cost = await billing.charge(model, i, prompt_tokens=..., completion_tokens=...)
    billing.finish(stop_reason, status, samples)
    await billing.close()

`reserve` holds the wave's worst case (prompt + w × max_tokens, priced). It may grant fewer
samples than asked when the budget is short (degrade before refusing) and raises
`server.errors.InsufficientQuota` when not even one fits: the API answers 429 with Retry-After.
`settle` takes the hold `reserve` returned and is called exactly once per reserved wave, also
when the wave was cut short by a disconnect or a deadline, with the tokens the engine actually
reported; it returns that wave's cost and releases the rest. Settlement is keyed by (request id,
wave), so a retry is idempotent. A settle the ledger did not take after its retries raises
`SettlePending` when it was kept to be charged later (its cost is known and will be billed), or
another error when even that failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from controller.budget.ledger import SpendRecord
    from controller.pacing import ComputePrice
    from server.config import AppConfig, TenantConfig


class SettlePending(Exception):
    """A settle (or verifier charge) the ledger did not take in time, kept on this replica and
    charged once the ledger is back (server.billing.pending): `cost` is what it will bill."""

    def __init__(self, cost: float) -> None:
        super().__init__(f"settle pending ({cost:g})")
        self.cost = cost


@dataclass(frozen=True)
class WaveHold:
    """One wave's reservation: `samples` samples of `prompt_tokens` + up to `max_tokens` each.

    Passed to `reserve` with the samples asked for; returned with the samples granted; passed
    back to `settle` as it was returned.
    """

    wave: int
    samples: int
    prompt_tokens: int
    max_tokens: int


class Billing(Protocol):
    """One request's billing handle; see the module docstring for the call order.

    `unit` names what costs are counted in: "currency" (the tenant's price unit), "flops", or
    "tokens" (unmetered); metrics file spend under it.
    """

    unit: str

    def quote(self, prompt_tokens: int, completion_tokens: int, model: str | None = None) -> float:
        """The cost of this many tokens for this tenant and model (or `model`: a route prices
        each candidate), with no side effects."""
        ...

    def use_model(self, model: str) -> None:
        """The waves from now on are drawn by `model` and charged at its prices (a route
        moving a question to another candidate); the cost unit stays the request's."""
        ...

    async def reserve(self, hold: WaveHold) -> WaveHold:
        """Hold the wave's worst case; return the hold with the samples granted (≥ 1)."""
        ...

    async def settle(self, hold: WaveHold, *, prompt_tokens: int, completion_tokens: int) -> float:
        """Charge what the engine reported for this wave, release the rest; return its cost."""
        ...

    async def hold_charge(
        self, model: str, wave: int, *, prompt_tokens: int, completion_tokens: int
    ) -> None:
        """Hold the worst case of work about to be done on another model for this request (a
        verifier's reward model or judge scoring wave `wave`), priced for `model`; raises
        `InsufficientQuota` when a hard budget cannot cover it (the caller then skips it)."""
        ...

    async def charge(
        self, model: str, wave: int, *, prompt_tokens: int, completion_tokens: int
    ) -> float:
        """Bill that work once done, priced for `model` (its price entry, else 2·N FLOPs per
        token), settling the hold `hold_charge` took for the same `wave`: the charge is keyed
        by the generation wave it scored, so a retry cannot bill it twice."""
        ...

    def finish(self, stop_reason: str | None, status: int, samples: int) -> None:
        """How the request ended (the sampling loop's stop reason and status, the samples it
        drew), noted on its spend-log record by `close`."""
        ...

    async def close(self) -> None:
        """Release anything still held (called once, even after errors)."""
        ...

    def remaining(self) -> float | None:
        """Budget left after this request (tightest window), or None when unlimited."""
        ...

    def remaining_level(self) -> str | None:
        """Which level that tightest window is at: "tenant", "key" or "user" (None: unlimited)."""
        ...

    def price_of_compute(self) -> ComputePrice | None:
        """The budget's price of compute, per unit of this billing's cost (the request's policy
        converts it, pricing a sample at its worst-case `quote`), or None: no pressure."""
        ...

    def rate_limit_headers(self) -> dict[str, str]:
        """OpenAI's x-ratelimit-* headers for this request's rpm/tpm ({} when none apply)."""
        ...


class BillingProvider(Protocol):
    """What the app holds: a `Billing` per request, and the operator's view of a tenant."""

    def metered(self, tenant: TenantConfig) -> bool:
        """Whether this tenant's requests are priced and budgeted at all."""
        ...

    def for_request(self, tenant: TenantConfig, model: str, request_id: str) -> Billing: ...

    async def report(self, tenant: TenantConfig) -> dict[str, Any]:
        """Spend, reserved, limit and remaining per window, and the price of compute."""
        ...

    def reload(self, config: AppConfig) -> None:
        """Take a new config; budgets apply from the next reserve."""
        ...

    async def spend_logs(
        self, tenant_ids: list[str], since: float, until: float
    ) -> list[SpendRecord]:
        """The tenants' spend-log records with since ≤ time < until, oldest first (by id: a
        tenant deleted through the admin API keeps its records)."""
        ...

    async def start(self) -> None:
        """At server start (the budget ledger replays the settles an earlier run left)."""
        ...

    async def close(self) -> None:
        """Release what the provider opened (the ledger store)."""
        ...
