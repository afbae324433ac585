"""Rate limits in the ledger, against both real backends (SQLite file, real redis-server), on a
clock the test moves: `rpm` is a sliding log of admitted requests, `tpm` a rolling minute of
tokens held at the worst case and trued up at settle, both checked in the reserve's own step."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from controller.budget import Budget, Budgets, Cost, Ledger, LedgerStore
from controller.budget.admin_state import StoredKey
from controller.budget.models import RateLimits
from storage import Stores
from storage.sqlite.ledger import SQLiteStore
from tests.test_ledger_backends import ManualClock, utc

FIXED = Cost(0.0, 0.0, 10.0)  # a 10-token prompt
PER = Cost(0.0, 0.0, 20.0)  # max_tokens 20 per sample


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(utc(2026, 3, 14, 12, 0, 30))


def tenant(rpm: int | None = None, tpm: int | None = None) -> list[tuple[str, RateLimits]]:
    return [("", RateLimits(rpm=rpm, tpm=tpm))]


async def admit(ledger: Ledger, rid: str, rates: list[tuple[str, RateLimits]], n: int = 1) -> int:
    out = await ledger.reserve("acme", None, rid, 0, n, FIXED, PER, rates=rates, count_request=rid)
    return out.granted


async def test_rpm_is_a_sliding_minute_of_admitted_requests(
    store: LedgerStore, clock: ManualClock
) -> None:
    ledger = Ledger(store, clock=clock)
    rates = tenant(rpm=3)
    for i in range(3):  # at t = 0, 20, 40 s
        assert await admit(ledger, f"r{i}", rates) == 1
        clock.advance(20)
    clock.advance(-0.5)  # t = 59.5: r0 is still in the window
    out = await ledger.reserve(
        "acme", None, "r3", 0, 1, FIXED, PER, rates=rates, count_request="r3"
    )
    assert (out.granted, out.binding) == (0, "rpm")
    [rpm] = out.requests
    assert (rpm.count, rpm.remaining) == (3, 0)
    assert rpm.reset_in(clock()) == pytest.approx(0.5)  # when r0 slides out
    assert await store.reserved_holds("acme") == 3  # the refusal held nothing
    clock.advance(0.5)  # t = 60: r0 has left; a fixed window would have reset all three
    assert await admit(ledger, "r3", rates) == 1
    assert await admit(ledger, "r4", rates) == 0
    [now] = await ledger.requests("acme", rates)
    assert now.count == 3


async def test_one_request_counts_once_whatever_its_jobs_and_retries(
    store: LedgerStore, clock: ManualClock
) -> None:
    ledger = Ledger(store, clock=clock)
    rates = tenant(rpm=2)
    for job in ("g1-0-0", "g1-0-1", "g1-1-0"):  # n = 2 and two prompts: one HTTP request
        out = await ledger.reserve(
            "acme", None, job, 0, 1, FIXED, PER, rates=rates, count_request="g1"
        )
        assert out.granted == 1
    again = await ledger.reserve(
        "acme", None, "g1-0-0", 0, 1, FIXED, PER, rates=rates, count_request="g1"
    )
    assert again.granted == 1  # a retried reserve answers as the first did
    assert (await ledger.requests("acme", rates))[0].count == 1
    assert await admit(ledger, "g2", rates) == 1
    assert await admit(ledger, "g3", rates) == 0


async def test_a_request_refused_by_its_budget_does_not_use_up_rpm(
    store: LedgerStore, clock: ManualClock
) -> None:
    ledger = Ledger(store, clock=clock)
    rates = tenant(rpm=1)
    budgets = Budgets(day=Budget(limit=0.5))
    costly = Cost(1.0, 0.0, 1.0)
    out = await ledger.reserve(
        "acme", budgets, "r1", 0, 1, costly, costly, rates=rates, count_request="r1"
    )
    assert (out.granted, out.binding) == (0, "day")
    assert (await ledger.requests("acme", rates))[0].count == 0
    assert await admit(ledger, "r2", rates) == 1


async def test_tpm_holds_the_worst_case_shrinks_the_wave_and_trues_up_at_settle(
    store: LedgerStore, clock: ManualClock
) -> None:
    ledger = Ledger(store, clock=clock)
    rates = tenant(tpm=100)
    first = await ledger.reserve("acme", None, "r1", 0, 8, FIXED, PER, rates=rates)
    assert (first.granted, first.binding) == (4, "tpm")  # 10 + 4 × 20 = 90 ≤ 100 < 110
    assert first.held.tokens == 90
    second = await ledger.reserve("acme", None, "r2", 0, 1, FIXED, PER, rates=rates)
    assert (second.granted, second.binding) == (0, "tpm")  # 90 held + 10 + 20 > 100
    settled = await ledger.settle("acme", None, "r1", 0, Cost(0.0, 0.0, 30.0), rates=rates)
    tpm = next(u for u in settled.usage if u.limit.kind == "rate")
    assert (tpm.spent_value, tpm.reserved_value, tpm.remaining) == (30, 0, 70)
    third = await ledger.reserve("acme", None, "r2", 0, 8, FIXED, PER, rates=rates)
    assert third.granted == 3  # 100 − 30 − 10 = 60 → 3 samples of 20
    await ledger.release("acme", "r2", 0)
    clock.advance(59)
    assert (await ledger.reserve("acme", None, "r3", 0, 8, FIXED, PER, rates=rates)).granted == 3
    await ledger.release("acme", "r3", 0)
    clock.advance(1.0)  # the settled 30 tokens slide out of the rolling minute
    assert (await ledger.reserve("acme", None, "r4", 0, 8, FIXED, PER, rates=rates)).granted == 4


async def test_key_limits_bind_below_the_tenant_and_are_charged_at_both(
    store: LedgerStore, clock: ManualClock
) -> None:
    ledger = Ledger(store, clock=clock)
    key = [("", RateLimits(rpm=10, tpm=1000)), ("key:t2-abc", RateLimits(rpm=1, tpm=50))]
    out = await ledger.reserve("acme", None, "k1", 0, 8, FIXED, PER, rates=key, count_request="k1")
    assert (out.granted, out.binding) == (2, "key:t2-abc tpm")
    refused = await ledger.reserve(
        "acme", None, "k2", 0, 1, FIXED, PER, rates=key, count_request="k2"
    )
    assert (refused.granted, refused.binding) == (0, "key:t2-abc rpm")
    assert await admit(ledger, "t1", tenant(rpm=10, tpm=1000)) == 1  # other callers go on
    [tenant_rpm, key_rpm] = await ledger.requests("acme", key)
    assert (tenant_rpm.count, key_rpm.count) == (2, 1)
    await ledger.settle("acme", None, "k1", 0, Cost(0.0, 0.0, 25.0), rates=key)
    usage = await ledger.usage("acme", None, rates=key)
    by_name = {u.name: u for u in usage}
    assert by_name["tpm"].spent_value == 25 and by_name["key:t2-abc tpm"].spent_value == 25
    assert by_name["tpm"].reserved_value == 30  # t1's hold, at the tenant only
    assert by_name["key:t2-abc tpm"].reserved_value == 0


async def test_tpm_shares_storage_with_a_rolling_minute_budget_without_double_charging(
    store: LedgerStore, clock: ManualClock
) -> None:
    ledger = Ledger(store, clock=clock)
    budgets = Budgets(minute=Budget(limit=10.0, rolling=True))
    rates = tenant(tpm=1000)
    await ledger.reserve("acme", budgets, "r1", 0, 1, FIXED, PER, rates=rates)
    out = await ledger.settle("acme", budgets, "r1", 0, Cost(1.0, 5.0, 25.0), rates=rates)
    by_name = {u.name: u for u in out.usage}
    assert by_name["minute"].spent_value == 1.0
    assert by_name["tpm"].spent_value == 25.0


OLD_LEDGER = """
CREATE TABLE spend (
    tenant TEXT NOT NULL, win TEXT NOT NULL, bucket INTEGER NOT NULL,
    money REAL NOT NULL DEFAULT 0, flops REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, win, bucket)
) WITHOUT ROWID;
CREATE TABLE reservations (
    tenant TEXT NOT NULL, request_id TEXT NOT NULL, wave INTEGER NOT NULL,
    money REAL NOT NULL, flops REAL NOT NULL, granted INTEGER NOT NULL, expires_at REAL NOT NULL,
    scope TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (tenant, request_id, wave, scope)
);
CREATE TABLE settlements (
    tenant TEXT NOT NULL, request_id TEXT NOT NULL, wave INTEGER NOT NULL,
    money REAL NOT NULL, flops REAL NOT NULL, settled_at REAL NOT NULL,
    PRIMARY KEY (tenant, request_id, wave)
) WITHOUT ROWID;
CREATE TABLE api_keys (
    sha256 TEXT PRIMARY KEY, tenant TEXT NOT NULL, prefix TEXT NOT NULL UNIQUE,
    label TEXT NOT NULL, created_at REAL NOT NULL, expires_at REAL, revoked_at REAL,
    budgets TEXT, last_used_at REAL
);
"""


async def test_a_ledger_file_from_before_rate_limits_keeps_its_spend_and_gains_them(
    tmp_path: Path, clock: ManualClock
) -> None:
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:
        conn.executescript(OLD_LEDGER)
        day = int(utc(2026, 3, 14))
        conn.execute("INSERT INTO spend VALUES ('acme', 'day', ?, 0.25, 9.0)", (day,))
        conn.execute(
            "INSERT INTO api_keys VALUES ('ab', 'acme', 't2-old', 'old', 1.0, NULL, NULL, NULL, "
            "NULL)"
        )
    store = SQLiteStore(path)
    try:
        ledger = Ledger(store, clock=clock)
        budgets = Budgets(day=Budget(limit=1.0))
        rates = tenant(rpm=1, tpm=100)
        out = await ledger.reserve(
            "acme", budgets, "r1", 0, 8, FIXED, PER, rates=rates, count_request="r1"
        )
        assert out.granted == 4
        assert next(u for u in out.usage if u.name == "day").spent_value == 0.25  # kept
        settled = await ledger.settle("acme", budgets, "r1", 0, Cost(0.1, 1.0, 30.0), rates=rates)
        assert next(u for u in settled.usage if u.name == "tpm").spent_value == 30
        assert await admit(ledger, "r2", rates) == 0  # rpm 1, counted in the old file
    finally:
        await store.close()
    admin = Stores("sqlite", path=path).admin()
    try:
        [old] = (await admin.snapshot()).keys
        assert old.prefix == "t2-old" and old.rate_limits is None
        await admin.create_key(
            StoredKey("cd", "acme", "t2-new", "new", 2.0, rate_limits={"rpm": 3}), 2.0
        )
        new = next(k for k in (await admin.snapshot()).keys if k.prefix == "t2-new")
        assert new.rate_limits == {"rpm": 3}
    finally:
        await admin.close()
