"""The ledger's contract, run against both real backends: a SQLite file and a real redis-server.

Hold, shrink, refuse, settle exactly once, expire stale holds, reset windows at their boundary
(with a clock the test moves) and slide rolling windows.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from controller.budget import Budget, Budgets, Cost, Ledger, LedgerStore, WindowUsage

FIXED = Cost(0.01, 100.0)  # prompt part of a wave
PER = Cost(0.1, 1000.0)  # one sample's worst case


class ManualClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(utc(2026, 3, 14, 12, 0, 0))


def day_budget(limit: float = 1.0, **kw: object) -> Budgets:
    return Budgets(day=Budget(limit=limit, **kw))  # type: ignore[arg-type]


def usage_of(usage: list[WindowUsage], name: str) -> WindowUsage:
    return next(u for u in usage if u.name == name)


async def test_reserve_then_settle_charges_actual_and_releases_hold(
    store: LedgerStore, clock: ManualClock
) -> None:
    ledger = Ledger(store, clock=clock)
    budgets = day_budget()
    out = await ledger.reserve("acme", budgets, "r1", 0, 4, FIXED, PER)
    assert out.granted == 4
    assert out.held.money == pytest.approx(0.41)
    assert usage_of(out.usage, "day").reserved_value == pytest.approx(0.41)
    settled = await ledger.settle("acme", budgets, "r1", 0, Cost(0.2, 2000.0))
    assert not settled.duplicate
    day = usage_of(settled.usage, "day")
    assert day.spent_value == pytest.approx(0.2)
    assert day.reserved_value == pytest.approx(0.0)
    assert day.remaining == pytest.approx(0.8)
    assert usage_of(settled.usage, "month").spent.money == pytest.approx(0.2)
    assert usage_of(settled.usage, "month").spent.flops == pytest.approx(2000.0)
    assert await store.reserved_holds("acme") == 0


async def test_shrinks_the_wave_then_refuses(store: LedgerStore, clock: ManualClock) -> None:
    ledger = Ledger(store, clock=clock)
    budgets = day_budget()
    first = await ledger.reserve("acme", budgets, "r1", 0, 16, FIXED, PER)
    assert first.granted == 9  # 0.01 + 9 × 0.1 ≤ 1.0 < 0.01 + 10 × 0.1
    assert first.binding == "day"
    second = await ledger.reserve("acme", budgets, "r2", 0, 4, FIXED, PER)
    assert second.granted == 0
    assert second.binding == "day"
    assert await store.reserved_holds("acme") == 1
    # settling below the worst case frees budget for the next wave
    await ledger.settle("acme", budgets, "r1", 0, Cost(0.31, 0.0))
    third = await ledger.reserve("acme", budgets, "r2", 0, 16, FIXED, PER)
    assert third.granted == 6  # 1.0 − 0.31 − 0.01 = 0.68 → 6 samples


async def test_settle_is_idempotent_by_request_and_wave(
    store: LedgerStore, clock: ManualClock
) -> None:
    ledger = Ledger(store, clock=clock)
    budgets = day_budget()
    await ledger.reserve("acme", budgets, "r1", 0, 2, FIXED, PER)
    a = await ledger.settle("acme", budgets, "r1", 0, Cost(0.05, 1.0))
    b = await ledger.settle("acme", budgets, "r1", 0, Cost(0.5, 9.0))  # a retried settle
    assert (a.duplicate, b.duplicate) == (False, True)
    assert b.cost == Cost(0.05, 1.0)
    assert usage_of(b.usage, "day").spent_value == pytest.approx(0.05)
    c = await ledger.settle("acme", budgets, "r1", 1, Cost(0.05, 1.0))  # the next wave counts
    assert usage_of(c.usage, "day").spent_value == pytest.approx(0.10)


async def test_a_retried_reserve_does_not_hold_twice(
    store: LedgerStore, clock: ManualClock
) -> None:
    ledger = Ledger(store, clock=clock)
    budgets = day_budget()
    a = await ledger.reserve("acme", budgets, "r1", 0, 3, FIXED, PER)
    b = await ledger.reserve("acme", budgets, "r1", 0, 3, FIXED, PER)
    assert a.granted == b.granted == 3
    assert usage_of(b.usage, "day").reserved_value == pytest.approx(0.31)


async def test_stale_holds_expire_and_late_settles_still_charge(
    store: LedgerStore, clock: ManualClock
) -> None:
    ledger = Ledger(store, clock=clock, ttl_s=30)
    budgets = day_budget()
    out = await ledger.reserve("acme", budgets, "crashed", 0, 9, FIXED, PER)
    assert out.granted == 9
    assert (await ledger.reserve("acme", budgets, "other", 0, 1, FIXED, PER)).granted == 0
    clock.advance(31)
    assert await ledger.purge_expired() == 1
    assert await store.reserved_holds() == 0
    usage = await ledger.usage("acme", budgets)
    assert usage_of(usage, "day").reserved_value == pytest.approx(0.0)
    assert (await ledger.reserve("acme", budgets, "other", 1, 1, FIXED, PER)).granted == 1
    late = await ledger.settle("acme", budgets, "crashed", 0, Cost(0.3, 0.0))
    assert usage_of(late.usage, "day").spent_value == pytest.approx(0.3)  # never lost


async def test_release_drops_a_hold_without_charging(
    store: LedgerStore, clock: ManualClock
) -> None:
    ledger = Ledger(store, clock=clock)
    budgets = day_budget()
    await ledger.reserve("acme", budgets, "r1", 0, 5, FIXED, PER)
    await ledger.release("acme", "r1", 0)
    usage = await ledger.usage("acme", budgets)
    assert usage_of(usage, "day").reserved_value == pytest.approx(0.0)
    assert usage_of(usage, "day").spent_value == pytest.approx(0.0)


async def test_calendar_window_resets_at_the_utc_boundary(store: LedgerStore) -> None:
    clock = ManualClock(utc(2026, 3, 14, 23, 59, 50))
    ledger = Ledger(store, clock=clock)
    budgets = Budgets(day=Budget(limit=1.0), month=Budget(limit=10.0))
    await ledger.reserve("acme", budgets, "r1", 0, 9, FIXED, PER)
    await ledger.settle("acme", budgets, "r1", 0, Cost(0.95, 0.0))
    refused = await ledger.reserve("acme", budgets, "r2", 0, 1, FIXED, PER)
    assert refused.granted == 0 and refused.binding == "day"
    assert usage_of(refused.usage, "day").reset_in(clock()) == pytest.approx(10.0)
    clock.advance(10.0)  # 00:00:00 UTC: a new day, the same month
    fresh = await ledger.reserve("acme", budgets, "r2", 0, 4, FIXED, PER)
    assert fresh.granted == 4
    assert usage_of(fresh.usage, "day").spent_value == pytest.approx(0.0)
    assert usage_of(fresh.usage, "month").spent_value == pytest.approx(0.95)


async def test_settle_charges_the_windows_current_at_settle_time(store: LedgerStore) -> None:
    clock = ManualClock(utc(2026, 3, 14, 23, 59, 50))
    ledger = Ledger(store, clock=clock)
    budgets = day_budget()
    await ledger.reserve("acme", budgets, "r1", 0, 9, FIXED, PER)  # held on March 14
    clock.advance(20.0)  # settled on March 15
    settled = await ledger.settle("acme", budgets, "r1", 0, Cost(0.3, 0.0))
    assert usage_of(settled.usage, "day").reserved_value == pytest.approx(0.0)
    day = usage_of(await ledger.usage("acme", budgets), "day")  # counts March 15 only
    assert day.spent_value == pytest.approx(0.3)


async def test_month_budget_binds_across_days(store: LedgerStore) -> None:
    clock = ManualClock(utc(2026, 2, 27, 12))
    ledger = Ledger(store, clock=clock)
    budgets = Budgets(day=Budget(limit=1.0), month=Budget(limit=1.5))
    await ledger.reserve("acme", budgets, "r1", 0, 9, FIXED, PER)
    await ledger.settle("acme", budgets, "r1", 0, Cost(0.91, 0.0))
    clock.advance(86400)  # Feb 28
    out = await ledger.reserve("acme", budgets, "r2", 0, 9, FIXED, PER)
    assert out.granted == 5 and out.binding == "month"  # 1.5 − 0.91 − 0.01 = 0.58
    await ledger.release("acme", "r2", 0)
    await ledger.settle("acme", budgets, "r3", 0, Cost(0.59, 0.0))
    refused = await ledger.reserve("acme", budgets, "r4", 0, 1, FIXED, PER)
    assert refused.granted == 0 and refused.binding == "month"
    month = usage_of(refused.usage, "month")
    assert month.reset_in(clock()) == pytest.approx(utc(2026, 3, 1) - clock())
    clock.now = utc(2026, 3, 1, 0, 0, 1)
    assert (await ledger.reserve("acme", budgets, "r4", 0, 1, FIXED, PER)).granted == 1


async def test_rolling_window_slides(store: LedgerStore, clock: ManualClock) -> None:
    ledger = Ledger(store, clock=clock)
    budgets = Budgets(minute=Budget(limit=0.5, rolling=True))
    await ledger.settle("acme", budgets, "r1", 0, Cost(0.45, 0.0))
    refused = await ledger.reserve("acme", budgets, "r2", 0, 1, FIXED, PER)
    assert refused.granted == 0 and refused.binding == "minute"
    wait = usage_of(refused.usage, "minute").reset_in(clock())
    assert 59.0 <= wait <= 61.0
    clock.advance(30)
    assert (await ledger.reserve("acme", budgets, "r2", 0, 1, FIXED, PER)).granted == 0
    clock.advance(31)  # the spend slid out of the last minute
    out = await ledger.reserve("acme", budgets, "r2", 1, 4, FIXED, PER)
    assert out.granted == 4
    assert usage_of(out.usage, "minute").spent_value == pytest.approx(0.0)


async def test_soft_budget_allows_and_flops_budget_binds(
    store: LedgerStore, clock: ManualClock
) -> None:
    ledger = Ledger(store, clock=clock)
    soft = Budgets(day=Budget(limit=0.05, hard=False))
    out = await ledger.reserve("soft", soft, "r1", 0, 8, FIXED, PER)
    assert out.granted == 8
    assert (usage_of(out.usage, "day").remaining or 0) < 0
    flops = Budgets(hour=Budget(limit=3500.0, unit="flops"))
    out = await ledger.reserve("flopper", flops, "r1", 0, 8, FIXED, PER)
    assert out.granted == 3 and out.binding == "hour"  # 100 + 3 × 1000 ≤ 3500


async def test_tenants_are_isolated(store: LedgerStore, clock: ManualClock) -> None:
    ledger = Ledger(store, clock=clock)
    budgets = day_budget()
    assert (await ledger.reserve("a", budgets, "r", 0, 9, FIXED, PER)).granted == 9
    assert (await ledger.reserve("b", budgets, "r", 0, 9, FIXED, PER)).granted == 9
