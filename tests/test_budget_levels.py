"""Budgets at three levels (tenant, key, end user) on both real backends: the tightest hard
window binds, every level is charged, one key's holds never count against another key, and
concurrent waves never overspend any level; over HTTP the 429 names the binding level."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import httpx
import pytest

from controller.budget import Budget, Budgets, Cost, Ledger, LedgerStore
from server import metrics
from server.app import create_app, serve_in_loop
from server.config import hash_key, parse_config
from tests.fakes import ScriptedEngine, cycle

PER = Cost(1.0, 0.0)  # one sample's worst case: 1 unit


@pytest.fixture
def ledger(store: LedgerStore) -> Ledger:
    return Ledger(store, ttl_s=60)


def day(limit: float) -> Budgets:
    return Budgets(day=Budget(limit=limit))


async def spent(ledger: Ledger, budgets: Budgets, levels: list[tuple[str, Budgets]]) -> list[float]:
    usage = await ledger.usage("acme", budgets, levels)
    return [u.spent_value for u in usage if u.limit.limited]


async def test_the_tightest_level_binds_and_every_level_is_charged(ledger: Ledger) -> None:
    tenant = day(100)
    k1 = [("key:k1", day(5))]
    k2 = [("key:k2", day(50)), ("user:u", day(3))]
    out = await ledger.reserve("acme", tenant, "r1", 0, 8, Cost(), PER, k1)
    assert out.granted == 5 and out.binding == "key:k1 day"
    # k1's hold does not count against k2; k2's own user budget binds instead
    out2 = await ledger.reserve("acme", tenant, "r2", 0, 8, Cost(), PER, k2)
    assert out2.granted == 3 and out2.binding == "user:u day"
    await ledger.settle("acme", tenant, "r1", 0, Cost(4.0, 0), None, k1)
    await ledger.settle("acme", tenant, "r2", 0, Cost(2.0, 0), None, k2)
    assert await spent(ledger, tenant, k1) == [6.0, 4.0]  # tenant, key k1
    assert await spent(ledger, tenant, k2) == [6.0, 2.0, 2.0]  # tenant, key k2, user u
    # the tenant is now the tightest for k2: 100 - 6 left, but k2 has 48 and u has 1
    out3 = await ledger.reserve("acme", tenant, "r3", 0, 8, Cost(), PER, k2)
    assert out3.granted == 1 and out3.binding == "user:u day"
    # a tight tenant binds over roomy levels
    out4 = await ledger.reserve("acme", day(7), "r4", 0, 8, Cost(), PER, [("key:k3", day(50))])
    assert out4.binding == "day" and out4.granted == 0  # 6 spent + r3's 1 held = 7
    # settling is idempotent at every level
    await ledger.settle("acme", tenant, "r1", 0, Cost(4.0, 0), None, k1)
    assert await spent(ledger, tenant, k1) == [6.0, 4.0]
    await ledger.release("acme", "r3", 0)
    assert (await ledger.usage("acme", tenant, k2))[2].reserved_value == 0.0


async def test_concurrent_waves_never_overspend_a_key_or_a_user(ledger: Ledger) -> None:
    tenant = day(1000)
    rng = random.Random(7)

    async def request(i: int) -> None:
        levels = [("key:k", day(40)), (f"user:{i % 2}", day(25))]
        out = await ledger.reserve("acme", tenant, f"r{i}", 0, 3, Cost(), PER, levels)
        await asyncio.sleep(rng.random() / 100)
        if out.granted:
            used = Cost(out.granted * rng.choice([0.5, 1.0]), 0)
            await ledger.settle("acme", tenant, f"r{i}", 0, used, None, levels)

    await asyncio.gather(*(request(i) for i in range(120)))
    key = await spent(ledger, tenant, [("key:k", day(40))])
    users = [await spent(ledger, tenant, [(f"user:{u}", day(25))]) for u in (0, 1)]
    assert key[1] <= 40.0 and users[0][1] <= 25.0 and users[1][1] <= 25.0
    assert key[1] == pytest.approx(users[0][1] + users[1][1]) == pytest.approx(key[0])
    assert key[1] >= 20.0  # most of it was used: holds are worst cases, so not all


ADMIN = {"Authorization": "Bearer levels-admin"}
ACME = "levels-acme"


async def test_the_429_names_the_binding_level(tmp_path: Path) -> None:
    config = parse_config(
        {
            "models": [{"id": "m", "path": "models/tiny-arith"}],
            "ledger": {"backend": "sqlite", "path": str(tmp_path / "ledger.sqlite")},
            "admin": {"key_sha256": hash_key("levels-admin")},
            "defaults": {"policy": "fixed:2", "max_tokens": 10},
            "tenants": [
                {
                    "id": "acme",
                    "api_keys": [{"sha256": hash_key(ACME)}],
                    # a sample's worst case is 10 units; a request of 2 samples is 20
                    "prices": {"models": {"*": {"completion_per_1m": 1e6}}},
                    "budgets": {"day": {"limit": 1000}},
                    "user_budgets": {"day": {"limit": 25}},
                }
            ],
        }
    )
    engine = ScriptedEngine(cycle("A: 6"))

    def chat(user: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "Q: 1+5=?"}]}
        return {**body, "user": user} if user else body

    async with (
        serve_in_loop(create_app(config, engine=engine)) as live,
        httpx.AsyncClient(base_url=live.base_url, timeout=30) as http,
    ):
        made = await http.post(
            "/admin/tenants/acme/keys",
            json={"label": "small", "budgets": {"day": {"limit": 15}}},
            headers=ADMIN,
        )
        key = {"Authorization": f"Bearer {made.json()['key']}"}
        tenant = {"Authorization": f"Bearer {ACME}"}
        # user bob: 25 units → 2 + 1 samples... then refused, naming the user level
        statuses = []
        for _ in range(4):
            r = await http.post("/v1/chat/completions", json=chat("bob"), headers=tenant)
            statuses.append(r.status_code)
        assert statuses[:2] == [200, 200] and statuses[-1] == 429
        err = r.json()["error"]
        assert err["code"] == "insufficient_quota" and err["param"] == "user_budgets.day"
        assert "user 'bob'" in err["message"] and "Retry-After" in r.headers
        # another user and no user at all are still served
        alice = await http.post("/v1/chat/completions", json=chat("alice"), headers=tenant)
        assert alice.status_code == 200
        nobody = await http.post("/v1/chat/completions", json=chat(), headers=tenant)
        assert nobody.status_code == 200
        # the key's own budget (15) binds: one full request, a shrunk one, then 429
        first = await http.post("/v1/chat/completions", json=chat(), headers=key)
        assert first.status_code == 200 and first.headers["x-t2-budget-remaining"] == "11"
        assert first.headers["x-t2-budget-level"] == "key"
        assert alice.headers["x-t2-budget-level"] == "user"
        assert nobody.headers["x-t2-budget-level"] == "tenant"
        for _ in range(3):
            r = await http.post("/v1/chat/completions", json=chat(), headers=key)
        assert r.status_code == 429
        err = r.json()["error"]
        assert err["param"] == "key.budgets.day"
        assert f"key {made.json()['prefix']}" in err["message"]
        # keys and users never become metric labels, nor enter the tenant's pacing figures
        body, _ = metrics.render_latest()
        assert b'window="day"' in body and b"key:" not in body and b"user:" not in body
        provider = live.app.state.t2.billing
        assert all(not u.limit.scope for u in provider.window_figures(config.tenants[0]))
