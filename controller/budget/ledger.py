"""The ledger: reserve a wave's worst case, then settle what the engine reported, per tenant.

The arithmetic that must be atomic (purge expired holds, sum the windows, fit as many samples as
the budget allows, hold them; or charge a wave exactly once and release its hold) lives in a
`LedgerStore` backend, one transaction (SQLite) or one Lua script (Redis) per call. `Ledger`
turns a tenant's `Budgets` and a clock into the `Limit`s a store checks, so backends never see
calendars, and a test can move the clock across a window boundary.

Invariants every backend keeps:
- hard limits: spent + reserved + new hold ≤ limit, so concurrent waves cannot overspend by
  more than the difference between a wave's worst case and its real cost, which is ≤ 0;
- settle is idempotent by (tenant, request id, wave) and charges even when its hold has expired,
  so settled spend is never lost;
- a hold lives at most `ttl_s`: after a crash, stale holds are purged on the next call.

Rate limits are checked in the same atomic step as the budgets:
- `tpm` is one more window `Limit`, in tokens (`Cost.tokens`), over a rolling minute (60 buckets
  of 1 s, sliding): held at the wave's worst case and trued up at settle like money;
- `rpm` is a `RequestLimit`: a sliding log of admitted requests per level (one entry per HTTP
  request, keyed by its id, so the jobs and waves of one request count once), exact to the
  clock's resolution. A reserve that counts a request (`Hold.count_request`) is refused when
  the log already holds `rpm` entries of the last 60 s; the entry is added only if the wave is
  granted, in the same step, so a refused request never uses up the limit.
Sliding, not fixed windows: a fixed minute lets a client send its whole limit at 00:59 and again
at 01:00, twice the rate for a moment, and every client retries at the same boundary.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

from controller.budget.models import Budgets, LimitUnit, RateLimits, WindowName
from controller.budget.pricing import ZERO, Cost
from controller.budget.windows import WindowSpan, span

DEFAULT_TTL_S = 120.0
RATE_WINDOW_S = 60.0  # rpm and tpm are per minute, sliding
TRACKED: tuple[WindowName, ...] = ("day", "month")  # always recorded, for admin and metrics
_EPS = 1e-9


@dataclass(frozen=True)
class Limit:
    """One window as a store sees it. `key` names its storage (`day`, `day~r` when rolling);
    limit ≤ 0 means tracked only (no limit)."""

    span: WindowSpan
    unit: LimitUnit
    limit: float
    hard: bool
    scope: str = ""  # "" the tenant; "key:<prefix>" or "user:<id>" a level below it
    kind: Literal["budget", "rate"] = "budget"  # rate: a `tpm` limit (unit tokens)

    @property
    def key(self) -> str:
        win = f"{self.span.name}~r" if self.span.rolling else self.span.name
        return f"{self.scope}|{win}" if self.scope else win

    @property
    def label(self) -> str:
        """How a binding limit is named: "day" for the tenant, "key:<prefix> day" below it
        ("tpm", "key:<prefix> tpm" for a tokens-per-minute limit)."""
        name = "tpm" if self.kind == "rate" else self.span.name
        return f"{self.scope} {name}" if self.scope else name

    @property
    def bucket(self) -> int:
        return int(self.span.bucket)

    @property
    def cutoff(self) -> int:
        return math.ceil(self.span.cutoff)

    @property
    def limited(self) -> bool:
        return self.limit > 0


@dataclass(frozen=True)
class RequestLimit:
    """An `rpm` limit at one level: at most `limit` admitted requests in any `window_s`."""

    scope: str
    limit: int
    window_s: float = RATE_WINDOW_S

    @property
    def label(self) -> str:
        return f"{self.scope} rpm" if self.scope else "rpm"


@dataclass
class RequestUsage:
    """An `rpm` level after a call: requests in the window (this one included if admitted) and
    when the oldest of them was admitted (it leaves the window `window_s` later)."""

    limit: RequestLimit
    count: int
    oldest: float | None = None

    @property
    def name(self) -> str:
        return self.limit.label

    @property
    def remaining(self) -> int:
        return max(0, self.limit.limit - self.count)

    def reset_in(self, now: float) -> float:
        """Seconds until the next request slot frees (the oldest entry slides out)."""
        if self.oldest is None:
            return 0.0
        return max(0.0, self.oldest + self.limit.window_s - now)


@dataclass(frozen=True)
class SpendEntry:
    """What one settled wave adds to its request's spend-log record (the store sums them in
    the settle's own transaction, so the log can never disagree with settled spend)."""

    model: str
    """The model that drew the wave (a route's waves name their own), or a verifier's model
    for its charge: the record's breakdown books the entry to it."""
    samples: int
    prompt_tokens: int
    completion_tokens: int
    key_prefix: str | None = None
    user: str | None = None
    waves: int = 1
    """Waves it adds to the record: 1 for a generation wave, 0 for a verifier's charge (its
    cost and tokens count, but it drew no wave)."""


@dataclass
class ModelSpend:
    """One model's share of a request's spend-log record: what the entries that named it added
    (its generation waves, and verifier charges at its price)."""

    samples: int = 0
    waves: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    money: float = 0.0
    flops: float = 0.0


@dataclass
class SpendRecord:
    """One request's spend-log record: the sum of its settled waves, then how it ended.

    `model` is the model of the request's last generation wave (for a route, the model that
    answered; for a single model, that model). `by_model` splits the figures by the model each
    entry named, summed in the same atomic step as the totals, so a route that escalated shows
    each model's own spend. Its samples are the samples each model's waves drew; when the
    request ends, the last model's are trued up so they sum to `samples` (the samples drawn).
    Records written before the breakdown existed have none stored: they read as one model,
    `model`, with the record's totals (all their waves were booked to it)."""

    request_id: str
    tenant: str
    time: float
    model: str
    key_prefix: str | None
    user: str | None
    samples: int
    waves: int
    prompt_tokens: int
    completion_tokens: int
    money: float
    flops: float
    stop_reason: str | None = None
    status: int | None = None
    by_model: dict[str, ModelSpend] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.by_model:  # no breakdown stored (an older record): all of it is `model`'s
            self.by_model = {
                self.model: ModelSpend(
                    self.samples,
                    self.waves,
                    self.prompt_tokens,
                    self.completion_tokens,
                    self.money,
                    self.flops,
                )
            }


@dataclass(frozen=True)
class Hold:
    """One wave of one request as a store sees it, with the limits current at `now`.

    For reserve: hold up to `samples` samples costing `fixed + n · per_sample` for `ttl_s`.
    For settle: charge a cost to `limits` (built at settle time: samples=0, zero costs).
    """

    tenant: str
    request_id: str
    wave: int
    samples: int
    fixed: Cost
    per_sample: Cost
    limits: tuple[Limit, ...]
    now: float
    ttl_s: float
    entry: SpendEntry | None = None  # settle only: log this wave under its request
    count_request: str | None = None  # reserve only: count this HTTP request id against rpm
    request_limits: tuple[RequestLimit, ...] = ()


@dataclass
class WindowUsage:
    """A window's state after a call: settled spend and live holds, in the limit's unit."""

    limit: Limit
    spent: Cost
    reserved: Cost
    oldest_bucket: float | None = None

    @property
    def name(self) -> str:
        return self.limit.label

    @property
    def spent_value(self) -> float:
        return self.spent.of(self.limit.unit)

    @property
    def reserved_value(self) -> float:
        return self.reserved.of(self.limit.unit)

    @property
    def remaining(self) -> float | None:
        if not self.limit.limited:
            return None
        return self.limit.limit - self.spent_value - self.reserved_value

    def reset_in(self, now: float) -> float:
        return self.limit.span.reset_in(now, self.oldest_bucket)


@dataclass
class ReserveOutcome:
    """How many samples were granted (0 = refused) and, if fewer than asked, which window bound."""

    granted: int
    held: Cost
    binding: str | None
    usage: list[WindowUsage] = field(default_factory=list)
    requests: list[RequestUsage] = field(default_factory=list)


@dataclass
class SettleOutcome:
    cost: Cost
    duplicate: bool
    usage: list[WindowUsage] = field(default_factory=list)


def affordable(left: float, per: float, samples: int) -> int:
    """How many of `samples` at `per` each fit in `left` (all of them when a sample is free).
    Capped before rounding: a huge limit over a tiny price is more than any wave, not an
    overflow."""
    if per <= 0:
        return samples
    return max(0, math.floor(min(left / per, samples) + _EPS))


def fit_samples(
    samples: int, fixed: Cost, per_sample: Cost, usage: Sequence[WindowUsage]
) -> tuple[int, str | None]:
    """The most samples (≤ `samples`) every hard limit still covers, and the binding window.

    Shared by the backends that compute in Python (SQLite); the Redis Lua script mirrors it.
    """
    granted, binding = samples, None
    for u in usage:
        lim = u.limit
        if not (lim.hard and lim.limited):
            continue
        available = lim.limit - u.spent_value - u.reserved_value - fixed.of(lim.unit)
        per = per_sample.of(lim.unit)
        overdrawn = available < -_EPS * max(1.0, lim.limit)
        fits = 0 if overdrawn else affordable(available, per, samples)
        if fits < granted:
            granted, binding = max(0, fits), u.name
    return granted, binding


def scopes_of(limits: Sequence[Limit]) -> list[str]:
    """The distinct scopes of a hold's limits, tenant ("") first: a hold is kept in each."""
    seen = dict.fromkeys(["", *(lim.scope for lim in limits)])
    return list(seen)


class LedgerStore(Protocol):
    """A storage backend; each method is one atomic step (see the module docstring)."""

    async def reserve(self, hold: Hold) -> ReserveOutcome:
        """Every step raises StoreUnavailable when the backend cannot be used; before this one,
        nothing is drawn, so the server can refuse the request and charge nothing."""
        ...

    async def settle(self, hold: Hold, cost: Cost) -> SettleOutcome:
        """Charge `cost` once per (tenant, request id, wave) and release the wave's hold. With
        `hold.entry`, add it to the request's spend-log record in the same step: to the totals
        and to the breakdown of `entry.model`; a generation entry (`waves` ≥ 1) of a wave not
        older than the one that last set it makes `entry.model` the record's `model`."""
        ...

    async def release(self, tenant: str, request_id: str, wave: int) -> None: ...

    async def usage(
        self, tenant: str, limits: Sequence[Limit], now: float
    ) -> list[WindowUsage]: ...

    async def purge_expired(self, now: float) -> int: ...

    async def requests(
        self, tenant: str, limits: Sequence[RequestLimit], now: float
    ) -> list[RequestUsage]:
        """The `rpm` logs of these levels at `now` (read only)."""
        ...

    async def reserved_holds(self, tenant: str | None = None) -> int: ...

    async def finish_log(
        self, tenant: str, request_id: str, stop_reason: str | None, status: int, samples: int
    ) -> None:
        """Note how a logged request ended and the samples it drew (no money moves); in the same
        step, true up the samples of the record's `model` in its breakdown so the breakdown's
        sum to `samples` (never below 0)."""
        ...

    async def spend_logs(self, tenant: str, since: float, until: float) -> list[SpendRecord]:
        """The tenant's records with since ≤ time < until, oldest first."""
        ...

    async def purge_logs(self, before: float) -> int:
        """Retention: drop records older than `before`."""
        ...

    async def close(self) -> None: ...


class Ledger:
    """A store plus a clock: resolves a tenant's budgets into limits at the current time."""

    def __init__(
        self,
        store: LedgerStore,
        *,
        clock: Callable[[], float] = time.time,
        ttl_s: float = DEFAULT_TTL_S,
    ) -> None:
        if ttl_s <= 0:
            raise ValueError("reservation TTL must be > 0")
        self.store = store
        self.clock = clock
        self.ttl_s = ttl_s

    def limits(
        self,
        budgets: Budgets | None,
        now: float | None = None,
        levels: Sequence[tuple[str, Budgets]] = (),
        rates: Sequence[tuple[str, RateLimits]] = (),
    ) -> tuple[Limit, ...]:
        """The tenant's window limits at `now`, plus calendar day/month tracked without a limit;
        then each level's (a key's, a user's) windows, every one checked and charged too; then
        each level's `tpm` (scope "" the tenant's), a hard rolling minute in tokens."""
        now = self.clock() if now is None else now
        out: list[Limit] = []
        configured = budgets.windows() if budgets is not None else []
        for name, budget in configured:
            out.append(
                Limit(span(name, budget.rolling, now), budget.unit, budget.limit, budget.hard)
            )
        names = {(name, b.rolling) for name, b in configured}
        for name in TRACKED:
            if (name, False) not in names:
                out.append(Limit(span(name, False, now), "currency", 0.0, False))
        for scope, level in levels:
            for name, budget in level.windows():
                window = span(name, budget.rolling, now)
                out.append(Limit(window, budget.unit, budget.limit, budget.hard, scope))
        for scope, rate in rates:
            if rate.tpm is not None:
                window = span("minute", True, now)
                out.append(Limit(window, "tokens", float(rate.tpm), True, scope, "rate"))
        return tuple(out)

    @staticmethod
    def request_limits(rates: Sequence[tuple[str, RateLimits]]) -> tuple[RequestLimit, ...]:
        return tuple(RequestLimit(scope, r.rpm) for scope, r in rates if r.rpm is not None)

    def hold(
        self,
        tenant: str,
        budgets: Budgets | None,
        request_id: str,
        wave: int,
        samples: int = 0,
        fixed: Cost = ZERO,
        per_sample: Cost = ZERO,
        levels: Sequence[tuple[str, Budgets]] = (),
        rates: Sequence[tuple[str, RateLimits]] = (),
        count_request: str | None = None,
    ) -> Hold:
        """A wave's `Hold` with the tenant's limits at the current time (what a store checks)."""
        now = self.clock()
        limits = self.limits(budgets, now, levels, rates)
        return Hold(
            tenant,
            request_id,
            wave,
            samples,
            fixed,
            per_sample,
            limits,
            now,
            self.ttl_s,
            count_request=count_request,
            request_limits=self.request_limits(rates) if count_request is not None else (),
        )

    async def reserve(
        self,
        tenant: str,
        budgets: Budgets | None,
        request_id: str,
        wave: int,
        samples: int,
        fixed: Cost,
        per_sample: Cost,
        levels: Sequence[tuple[str, Budgets]] = (),
        rates: Sequence[tuple[str, RateLimits]] = (),
        count_request: str | None = None,
    ) -> ReserveOutcome:
        """Hold the wave at every level at once: the tightest hard window binds. With
        `count_request` (an HTTP request id), also admit that request against each level's
        `rpm` in the same step (a request already admitted is not counted again)."""
        hold = self.hold(
            tenant,
            budgets,
            request_id,
            wave,
            samples,
            fixed,
            per_sample,
            levels,
            rates,
            count_request,
        )
        return await self.store.reserve(hold)

    async def settle(
        self,
        tenant: str,
        budgets: Budgets | None,
        request_id: str,
        wave: int,
        cost: Cost,
        entry: SpendEntry | None = None,
        levels: Sequence[tuple[str, Budgets]] = (),
        rates: Sequence[tuple[str, RateLimits]] = (),
    ) -> SettleOutcome:
        """Charge `cost` to the windows current now (not those of the reserve), at every level,
        exactly once, and add `entry` to the request's spend-log record in the same step."""
        hold = self.settle_hold(tenant, budgets, request_id, wave, entry, levels, rates)
        return await self.store.settle(hold, cost)

    def settle_hold(
        self,
        tenant: str,
        budgets: Budgets | None,
        request_id: str,
        wave: int,
        entry: SpendEntry | None = None,
        levels: Sequence[tuple[str, Budgets]] = (),
        rates: Sequence[tuple[str, RateLimits]] = (),
    ) -> Hold:
        """The `Hold` `settle` passes its store: the windows current now, `entry` to log. A
        settle the store could not take is kept as this (`controller.budget.pending`), so its
        replay charges the windows of when the spend happened."""
        hold = self.hold(tenant, budgets, request_id, wave, levels=levels, rates=rates)
        return replace(hold, entry=entry) if entry is not None else hold

    async def release(self, tenant: str, request_id: str, wave: int) -> None:
        await self.store.release(tenant, request_id, wave)

    async def usage(
        self,
        tenant: str,
        budgets: Budgets | None,
        levels: Sequence[tuple[str, Budgets]] = (),
        rates: Sequence[tuple[str, RateLimits]] = (),
    ) -> list[WindowUsage]:
        now = self.clock()
        return await self.store.usage(tenant, self.limits(budgets, now, levels, rates), now)

    async def requests(
        self, tenant: str, rates: Sequence[tuple[str, RateLimits]]
    ) -> list[RequestUsage]:
        """Each level's `rpm` log as it stands now (no request counted)."""
        now = self.clock()
        return await self.store.requests(tenant, self.request_limits(rates), now)

    async def purge_expired(self) -> int:
        return await self.store.purge_expired(self.clock())

    async def close(self) -> None:
        await self.store.close()
