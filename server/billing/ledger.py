"""The billing protocol (server/billing/protocol.py) on top of the budget ledger.

Per wave: reserve the worst case (prompt + w × max_tokens, priced) → the ledger grants the most
samples the tenant's hard budgets still cover (fewer than asked = a smaller wave; none = 429
`insufficient_quota` with Retry-After = when the binding window frees budget) → settle at the
tokens the engine reported, idempotently by (request id, wave), which releases the rest.

Tenants with neither prices nor budgets stay on `UnmeteredBilling` (no ledger I/O at all). The
ledger store is opened on the first metered request, so a config without metered tenants never
touches `var/`. The price of compute comes from `controller.pacing`, computed from the figures
the ledger returned on this replica's last call for the tenant; the request's policy converts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from contextvars import ContextVar
from dataclasses import dataclass, field

from controller.budget import (
    Cost,
    WindowUsage,
)
from controller.budget.ledger import (
    RequestUsage,
    ReserveOutcome,
    SpendEntry,
    affordable,
)
from controller.budget.models import LimitUnit, RequestBudget
from controller.budget.pending import PendingFinish, PendingSettle
from controller.pacing import ComputePrice
from controller.shield import shielded
from controller.stores import StoreUnavailable
from server.billing.admission import HOLD_RETRY_S, POLL_S
from server.billing.identity import current_caller
from server.billing.levels import budget_levels, rate_levels
from server.billing.prices import billing_unit, count_spend
from server.billing.protocol import Billing, SettlePending, WaveHold
from server.billing.provider import BudgetProviderBase
from server.billing.ratelimit import go_duration, ratelimit_headers
from server.billing.unmetered import UnmeteredBilling
from server.config import TenantConfig
from server.errors import InsufficientQuota, LedgerDown, RateLimited

log = logging.getLogger("t2serve.billing")
VERIFIER_WAVES = 1_000_000  # settlement keys of verifier charges, apart from generation waves
SETTLE_RETRIES_S = (0.05, 0.25, 1.0)  # waits between tries of an (idempotent) settle


class BudgetProvider(BudgetProviderBase):
    """`BillingProvider` backed by the ledger (server.billing.provider): a `LedgerBilling` per
    metered request, `UnmeteredBilling` for the rest."""

    def for_request(self, tenant: TenantConfig, model: str, request_id: str) -> Billing:
        caller = current_caller()
        if not self.metered(tenant) and not caller.key_budgets and not caller.key_rate_limits:
            return UnmeteredBilling()
        return LedgerBilling(self, tenant, model, request_id)


def _budget_param(scope: str, window: str | None) -> str:
    """Which budget bound, as its config/admin field: `budgets.day` (the tenant's),
    `key.budgets.day` (the key's own), `user_budgets.day` (the tenant's per-user budget)."""
    kind = scope.partition(":")[0]
    base = {"key": "key.budgets", "user": "user_budgets"}.get(kind, "budgets")
    return f"{base}.{window}"


@dataclass
class RequestCommitted:
    """What one HTTP request has spent and holds, across all its answers (`n`) and prompts:
    what its per-request budgets are checked against (one `LedgerBilling` per answer shares it).
    """

    spent: Cost = field(default_factory=Cost)
    held: dict[tuple[str, int], Cost] = field(default_factory=dict)

    def total(self) -> Cost:
        return sum(self.held.values(), self.spent)


_COMMITTED: ContextVar[tuple[str, RequestCommitted] | None] = ContextVar(
    "t2_request_committed", default=None
)


def request_committed(request_id: str) -> RequestCommitted:
    """The HTTP request's shared tally: the answers' handles are opened in its context, one
    after another, so each finds the one the first made."""
    bound = _COMMITTED.get()
    if bound is None or bound[0] != request_id:
        bound = (request_id, RequestCommitted())
        _COMMITTED.set(bound)
    return bound[1]


class LedgerBilling:
    """One request's billing handle (see server/billing/protocol.py for the call order)."""

    def __init__(
        self, provider: BudgetProvider, tenant: TenantConfig, model: str, request_id: str
    ) -> None:
        self.provider = provider
        self.tenant = tenant
        self.request_id = request_id
        self.pricer = provider.pricer(tenant, model)
        self.caller = current_caller()
        self.cost_unit: LimitUnit = billing_unit(tenant, self.pricer)
        priced = tenant.prices or tenant.budgets or tenant.user_budgets or self.caller.key_budgets
        if not priced:  # metered only for rate limits: cost counts tokens, as when unmetered
            self.cost_unit = "tokens"
        self.unit: str = self.cost_unit  # the protocol's name for it (metrics file spend by it)
        self.model = model
        self.levels, self.level_names = budget_levels(tenant, self.caller)
        self.rates = rate_levels(tenant, self.caller)
        self.group = self.caller.request_id or request_id  # what rpm counts once
        self.requests: list[RequestUsage] = []  # the rpm logs at this request's admission
        self.last_usage: list[WindowUsage] = []
        self.held: dict[int, Cost] = {}
        self.spent = Cost()
        self.committed = request_committed(self.group)  # the whole HTTP request's, for caps
        self.unsettled: dict[int, tuple[Cost, SpendEntry]] = {}  # failed, and not journaled
        self.journaled: set[int] = set()  # settles the journal owns now (server.billing.pending)
        self.settled_waves = 0
        self._counted: set[int] = set()  # settlement keys already in t2_spend_total
        self.ending: tuple[str | None, int, int] | None = None
        self._soft_warned: set[str] = set()

    def quote(self, prompt_tokens: int, completion_tokens: int, model: str | None = None) -> float:
        pricer = self.pricer if model is None else self.provider.pricer(self.tenant, model)
        return pricer.cost(prompt_tokens, completion_tokens).of(self.cost_unit)

    def use_model(self, model: str) -> None:
        """Charge the next waves to `model` (its prices and N; spend logs name it per wave)."""
        if model != self.model:
            self.model = model
            self.pricer = self.provider.pricer(self.tenant, model)

    def _request_budgets(self) -> list[tuple[str, RequestBudget]]:
        """The per-request ceilings of every level: the tenant's, its key's, its user's."""
        out: list[tuple[str, RequestBudget]] = []
        if self.tenant.budgets is not None and self.tenant.budgets.request is not None:
            out.append(("", self.tenant.budgets.request))
        out += [(scope, b.request) for scope, b in self.levels if b.request is not None]
        return out

    def _request_cap(self, samples: int, fixed: Cost, per: Cost) -> int:
        """Apply the per-request budgets of every level: hard shrinks the wave (or refuses),
        soft only warns."""
        committed = self.committed.total()
        for scope, rb in self._request_budgets():
            left = rb.limit - committed.of(rb.unit) - fixed.of(rb.unit)
            unit_cost = per.of(rb.unit)
            fits = affordable(left, unit_cost, samples)
            if fits >= samples:
                continue
            if not rb.hard:
                self._warn_soft(f"{scope} request".strip(), rb.limit)
                continue
            if fits < 1:
                level = self.level_names.get(scope, f"Tenant '{self.tenant.id}'")
                raise InsufficientQuota(
                    f"{level[0].upper()}{level[1:]}: one more sample would exceed the "
                    f"per-request budget of {rb.limit:g} {self._unit_name(rb.unit)}.",
                    retry_after_s=None,
                    window="request",
                    param=_budget_param(scope, "request"),
                )
            samples = fits
        return samples

    async def _fit_request_cap(self, samples: int, fixed: Cost, per: Cost, give_up: float) -> int:
        """`_request_cap`, waiting (as ledger admission does) while the request's other answers
        hold what the cap would otherwise grant this one: their holds settle below it."""
        while True:
            try:
                return self._request_cap(samples, fixed, per)
            except InsufficientQuota:
                mine = {(self.request_id, key) for key in self.held}
                others = any(claim not in mine for claim in self.committed.held)
                left_s = give_up - time.monotonic()
                if not others or left_s <= 0:
                    raise
                await self.provider.settles.wait(self.tenant.id, min(POLL_S, left_s))

    async def reserve(self, hold: WaveHold) -> WaveHold:
        fixed = self.pricer.cost(hold.prompt_tokens, 0)
        per = self.pricer.cost(0, hold.max_tokens)
        give_up = time.monotonic() + self.provider.config.ledger.admission_wait_s
        samples = await self._fit_request_cap(max(1, hold.samples), fixed, per, give_up)
        ledger = self.provider.ledger
        while True:
            out = await self._hold(hold.wave, samples, fixed, per, hold.wave == 0)
            self.last_usage = out.usage
            if out.requests:
                self.requests = out.requests
            self.provider.remember(self.tenant, out.usage, self.pricer)
            binding = next((u for u in out.usage if u.name == out.binding), None)
            held = binding.reserved_value if binding is not None else 0.0
            left_s = give_up - time.monotonic()
            if out.granted >= 1 or held <= 0 or left_s <= 0:
                break
            # refused only because other waves hold budget: wait for them (see admission.py)
            await self.provider.settles.wait(self.tenant.id, min(POLL_S, left_s))
        if out.granted < 1 and self._rate_bound(out.binding, binding):
            raise self._rate_limited(out.binding, binding, held, samples, fixed, per)
        if out.granted < 1:
            now = ledger.clock()
            retry = binding.reset_in(now) if binding is not None else None
            if held > 0 and retry is not None:  # holds outstanding: they free it up sooner
                retry = min(retry, HOLD_RETRY_S)
            left = binding.remaining if binding is not None else None
            unit = self._unit_name(binding.limit.unit if binding else self.cost_unit)
            scope = binding.limit.scope if binding else ""
            level = self.level_names.get(scope, f"tenant '{self.tenant.id}'")
            window = binding.limit.span.name if binding else out.binding
            raise InsufficientQuota(
                f"You exceeded your current quota: {level} has "
                f"{max(0.0, left or 0.0):.6g} {unit} "
                f"left in its {window} budget, less than one sample's worst case; "
                f"it frees up in {math.ceil(retry or 0)} s.",
                retry_after_s=retry,
                window=window,
                param=_budget_param(scope, window),
            )
        self._check_soft(out.usage)
        return WaveHold(hold.wave, min(out.granted, samples), hold.prompt_tokens, hold.max_tokens)

    async def _hold(
        self, key: int, samples: int, fixed: Cost, per: Cost, first: bool = False
    ) -> ReserveOutcome:
        """Reserve at the ledger under settlement key `key`, shielded from cancellation: the
        hold is recorded (so `close` releases it) before a cancel that arrived meanwhile is
        re-raised. The request-wide tally is claimed before the await, so concurrent answers
        of one request cannot both pass its per-request cap."""
        claim = (self.request_id, key)
        self.committed.held[claim] = fixed + per.scale(samples)
        try:
            out, cancelled = await shielded(
                self.provider.ledger.reserve(
                    self.tenant.id,
                    self.tenant.budgets,
                    self.request_id,
                    key,
                    samples,
                    fixed,
                    per,
                    self.levels,
                    self.rates,
                    self.group if first else None,
                )
            )
        except StoreUnavailable as exc:
            del self.committed.held[claim]
            log.warning("holding wave %s of %s: %s", key, self.request_id, exc)
            raise LedgerDown() from exc
        except BaseException:
            del self.committed.held[claim]
            raise
        self.provider.pending.wake()  # the store answers: replay what waits for it now
        if out.granted >= 1:
            self.held[key] = self.committed.held[claim] = out.held
        else:
            del self.committed.held[claim]
        if cancelled:
            raise asyncio.CancelledError
        return out

    async def hold_charge(
        self, model: str, wave: int, *, prompt_tokens: int, completion_tokens: int
    ) -> None:
        """Hold a verifier's worst case for wave `wave` at every level (hard windows, tpm, the
        per-request cap); InsufficientQuota when it does not fit (no waiting: the request
        degrades to a plain vote instead)."""
        pricer = self.provider.pricer(self.tenant, model)
        fixed, per = pricer.cost(prompt_tokens, 0), pricer.cost(0, completion_tokens)
        self._request_cap(1, fixed, per)
        out = await self._hold(VERIFIER_WAVES + wave, 1, fixed, per)
        self.last_usage = out.usage
        self.provider.remember(self.tenant, out.usage, self.pricer)
        if out.granted < 1:
            raise InsufficientQuota(
                f"the {out.binding} budget cannot hold the verifier's worst case",
                retry_after_s=None,
                window=out.binding or "",
                param=_budget_param("", out.binding),
            )

    async def settle(self, hold: WaveHold, *, prompt_tokens: int, completion_tokens: int) -> float:
        cost = self.pricer.cost(prompt_tokens, completion_tokens)
        entry = SpendEntry(
            self.model,
            hold.samples,
            prompt_tokens,
            completion_tokens,
            self.caller.key_prefix,
            self.caller.user,
        )
        return await self._settle(hold.wave, cost, entry)

    async def charge(
        self, model: str, wave: int, *, prompt_tokens: int, completion_tokens: int
    ) -> float:
        """Settle a verifier's work on wave `wave` (releasing what `hold_charge` held), at the
        tenant's price for `model`, as its own spend-log entry."""
        cost = self.provider.pricer(self.tenant, model).cost(prompt_tokens, completion_tokens)
        entry = SpendEntry(
            model,
            0,
            prompt_tokens,
            completion_tokens,
            self.caller.key_prefix,
            self.caller.user,
            waves=0,  # the verifier scored a wave; it drew none
        )
        return await self._settle(VERIFIER_WAVES + wave, cost, entry)

    async def _settle(self, key: int, cost: Cost, entry: SpendEntry) -> float:
        """Charge `cost` under settlement key `key`, retrying (the ledger's settle is idempotent
        by key, so a try that committed before failing is not billed twice). A settle that
        still fails is written to the replica's journal, which replays it until the ledger
        takes it (SettlePending: its cost is billed then); its hold stays, so the budget stays
        covered meanwhile. Only when the journal cannot take it either is it kept here for
        `close` to try once more (the error is raised for the loop to report)."""
        ledger = self.provider.ledger
        for wait in (*SETTLE_RETRIES_S, None):
            try:
                out = await ledger.settle(
                    self.tenant.id,
                    self.tenant.budgets,
                    self.request_id,
                    key,
                    cost,
                    entry,
                    self.levels,
                    self.rates,
                )
                break
            except Exception:
                if wait is None:
                    if await self._journal(key, cost, entry):
                        raise SettlePending(cost.of(self.cost_unit)) from None
                    self.unsettled[key] = (cost, entry)
                    raise
                log.warning("settling %s of %s failed; retrying", key, self.request_id)
                await asyncio.sleep(wait)
        self.unsettled.pop(key, None)
        self._count_spend(key, out.cost)
        self.settled_waves += 1
        self.last_usage = out.usage
        self.held.pop(key, None)
        self.committed.held.pop((self.request_id, key), None)
        self.spent = self.spent + out.cost
        self.committed.spent = self.committed.spent + out.cost
        self.provider.remember(self.tenant, out.usage, self.pricer)
        self.provider.settles.fire(self.tenant.id)
        return out.cost.of(self.cost_unit)

    async def _journal(self, key: int, cost: Cost, entry: SpendEntry) -> bool:
        """Hand a settle the ledger did not take to the journal (the windows of now, when it
        was spent). From then on it is the journal's: its hold is neither released here nor
        its spend counted (the replay does both), and the request's cap counts it as spent."""
        hold = self.provider.ledger.settle_hold(
            self.tenant.id,
            self.tenant.budgets,
            self.request_id,
            key,
            entry,
            self.levels,
            self.rates,
        )
        if not await self.provider.pending.keep(PendingSettle(hold, cost, self.cost_unit)):
            return False
        self.unsettled.pop(key, None)
        self.journaled.add(key)
        self._counted.add(key)  # t2_spend_total: the replay counts it when the ledger takes it
        self.held.pop(key, None)
        self.committed.held.pop((self.request_id, key), None)
        self.spent = self.spent + cost
        self.committed.spent = self.committed.spent + cost
        self.provider.settles.fire(self.tenant.id)  # its hold left the request's tally
        return True

    def _count_spend(self, key: int, cost: Cost) -> None:
        """Add a settle the ledger accepted to t2_spend_total, once per settlement key: here,
        not in the sampling loop, so a settle retried when the request closes counts too, and
        a try that committed before failing (the ledger answers the retry as a duplicate with
        what it charged then) counts once, as the ledger does."""
        if key in self._counted:
            return
        self._counted.add(key)
        count_spend(self.tenant.id, self.cost_unit, cost)

    def finish(self, stop_reason: str | None, status: int, samples: int) -> None:
        self.ending = (stop_reason, status, samples)

    # -- rate limits -------------------------------------------------------------------------

    def _rate_bound(self, name: str | None, window: WindowUsage | None) -> bool:
        """Whether a refusal was an rpm (a request log's name) or tpm limit's, not a budget's."""
        if window is not None:
            return window.limit.kind == "rate"
        return any(r.name == name for r in self.requests)

    def _rate_limited(
        self,
        name: str | None,
        window: WindowUsage | None,
        held: float,
        samples: int,
        fixed: Cost,
        per: Cost,
    ) -> RateLimited:
        """The 429 for an rpm or tpm refusal, worded and headed as OpenAI's."""
        now = self.provider.ledger.clock()
        headers = ratelimit_headers(self.requests, self.last_usage, now)
        if window is None:  # rpm: the next slot frees when the oldest request slides out
            r = next(r for r in self.requests if r.name == name)
            scope, limit, kind, short = r.limit.scope, r.limit.limit, "requests", "RPM"
            used, asked = r.count, 1
            retry = r.reset_in(now)
        else:
            scope, limit, kind, short = window.limit.scope, int(window.limit.limit), "tokens", "TPM"
            used = math.ceil(window.spent_value + window.reserved_value)
            asked = math.ceil(fixed.tokens + per.tokens)
            retry = window.reset_in(now) if window.oldest_bucket is not None else HOLD_RETRY_S
            if held > 0:  # holds outstanding: they settle below their worst case soon
                retry = min(retry, HOLD_RETRY_S)
            if asked > limit:
                retry = 60.0
        level = self.level_names.get(scope, f"tenant '{self.tenant.id}'")
        field = "key.rate_limits" if scope else "rate_limits"
        return RateLimited(
            f"Rate limit reached for {kind} per min ({short}) of {level}: Limit {limit}, "
            f"Used {used}, Requested {asked}. Please try again in {go_duration(retry)}.",
            kind,
            retry_after_s=max(retry, 0.001),
            headers=headers,
            param=f"{field}.{short.lower()}",
        )

    def rate_limit_headers(self) -> dict[str, str]:
        if not self.rates:
            return {}
        return ratelimit_headers(self.requests, self.last_usage, self.provider.ledger.clock())

    async def close(self) -> None:
        """Settle again what failed to settle in its wave and the journal could not take;
        note how the request ended on its spend-log record (after those settles, so a record
        they create or complete gets its status and stop reason: through the journal, behind
        them, when any of its settles waits there); release holds of waves reserved but never
        settled."""
        for key, (cost, entry) in list(self.unsettled.items()):
            try:
                await self._settle(key, cost, entry)
            except SettlePending:  # the journal took it this time
                pass
            except Exception:  # its hold stays until its TTL: the budget is never overspent
                log.error("settling %s of %s failed for good", key, self.request_id)
                self.held.pop(key, None)
        if self.ending is not None and (self.settled_waves or self.journaled):
            await self._finish_log(*self.ending)
        for wave in list(self.held):
            try:
                await self.provider.ledger.release(self.tenant.id, self.request_id, wave)
            except Exception:  # the hold still expires by its TTL
                log.exception("releasing wave %s of %s failed", wave, self.request_id)
            del self.held[wave]
            self.committed.held.pop((self.request_id, wave), None)
            self.provider.settles.fire(self.tenant.id)

    async def _finish_log(self, stop_reason: str | None, status: int, samples: int) -> None:
        """Note how the request ended: now, or through the journal when a settle of it waits
        there (or when the ledger does not answer this either)."""
        finish = PendingFinish(self.tenant.id, self.request_id, stop_reason, status, samples)
        if not self.journaled:
            try:
                await self.provider.ledger.store.finish_log(
                    self.tenant.id, self.request_id, stop_reason, status, samples
                )
            except Exception:
                log.exception("noting the end of %s in the spend log failed", self.request_id)
            else:
                with contextlib.suppress(Exception):
                    await self.provider.purge_logs()
                return
        if not await self.provider.pending.keep_finish(finish):
            log.error("the spend log of %s keeps no status", self.request_id)

    def _tightest(self) -> tuple[float, str] | None:
        """The least left in any hard window of any level (this request's key and user too)."""
        usage = self.last_usage or self.provider.window_figures(self.tenant)
        left = [
            (u.remaining, u.limit.scope)
            for u in usage
            if u.limit.hard and u.limit.unit == self.cost_unit and u.remaining is not None
        ]
        return min(left) if left else None

    def remaining(self) -> float | None:
        tightest = self._tightest()
        return max(0.0, tightest[0]) if tightest else None

    def remaining_level(self) -> str | None:
        tightest = self._tightest()
        return (tightest[1].partition(":")[0] or "tenant") if tightest else None

    def price_of_compute(self) -> ComputePrice | None:
        return self.provider.price(self.tenant, self.pricer, self.cost_unit)

    def _check_soft(self, usage: list[WindowUsage]) -> None:
        for u in usage:
            if u.limit.kind == "rate":
                continue
            left = u.remaining
            if u.limit.limited and not u.limit.hard and left is not None and left < 0:
                self._warn_soft(u.name, u.limit.limit)

    def _warn_soft(self, window: str, limit: float) -> None:
        if window in self._soft_warned:
            return
        self._soft_warned.add(window)
        log.warning(
            "tenant %s is over its soft %s budget (%g); allowed, alerting",
            self.tenant.id,
            window,
            limit,
        )

    def _unit_name(self, unit: LimitUnit) -> str:
        if unit == "tokens":
            return "tokens"
        if unit == "flops":
            return "FLOPs"
        return self.tenant.prices.currency if self.tenant.prices else "currency units"
