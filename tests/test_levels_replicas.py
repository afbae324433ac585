"""Two replicas (the real app over HTTP, each with its own scripted engine and admin poller) on one
real Redis, under 200 concurrent requests: per-key and per-user hard budgets are never overspent
(spent ≤ limit + 0), and a key revoked on replica A is refused by replica B from the first
admin snapshot B loads after it (B polls every POLL_S, 0.5 s: the 2 s promise) while the load
runs."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from controller.budget import Budgets
from server.app import create_app, serve_in_loop
from server.billing.identity import Caller
from server.billing.levels import budget_levels
from server.config import hash_key, parse_config
from tests.fakes import ScriptedEngine, cycle

pytestmark = pytest.mark.redis

ADMIN = {"Authorization": "Bearer replicas-levels-admin"}
TENANT_KEY = "replicas-levels-acme"
KEY_LIMIT, USER_LIMIT = 120.0, 90.0  # units; one sample's worst case is 8, a request's 16
REQUESTS = 200


def config(redis_url: str) -> dict[str, Any]:
    return {
        "models": [{"id": "m", "path": "models/tiny-arith"}],
        "ledger": {"backend": "redis", "redis_url": redis_url},
        "admin": {"key_sha256": hash_key("replicas-levels-admin")},
        "defaults": {"policy": "fixed:2", "max_tokens": 8},
        "tenants": [
            {
                "id": "acme",
                "api_keys": [{"sha256": hash_key(TENANT_KEY)}],
                "prices": {"models": {"*": {"completion_per_1m": 1e6}}},
                "budgets": {"day": {"limit": 1e6}},
                "user_budgets": {"day": {"limit": USER_LIMIT}},
            }
        ],
    }


async def test_two_replicas_hold_key_and_user_budgets_and_revocations(redis_url: str) -> None:
    cfg = parse_config(config(redis_url))
    engine_a = ScriptedEngine(cycle("A: 6", "7+8=15;A: 6"), token_s=0.002)
    engine_b = ScriptedEngine(cycle("A: 6", "7+8=15;A: 6"), token_s=0.002)
    async with (
        serve_in_loop(create_app(cfg, engine=engine_a)) as a,
        serve_in_loop(create_app(cfg, engine=engine_b)) as b,
        httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64)) as http,
    ):
        made = await http.post(
            f"{a.base_url}/admin/tenants/acme/keys",
            json={"label": "budgeted", "budgets": {"day": {"limit": KEY_LIMIT}}},
            headers=ADMIN,
        )
        doomed = await http.post(
            f"{a.base_url}/admin/tenants/acme/keys", json={"label": "doomed"}, headers=ADMIN
        )
        budgeted = {"Authorization": f"Bearer {made.json()['key']}"}
        victim = {"Authorization": f"Bearer {doomed.json()['key']}"}
        tenant = {"Authorization": f"Bearer {TENANT_KEY}"}
        for replica in (a, b):  # both replicas know both keys before the load starts
            deadline = time.monotonic() + 2
            while (await http.get(f"{replica.base_url}/v1/models", headers=victim)).is_error:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)

        gate = asyncio.Semaphore(64)

        async def one(i: int) -> int:
            base = (a if i % 2 else b).base_url
            headers, body = (budgeted, {}) if i % 3 == 0 else (tenant, {"user": f"u{i % 2}"})
            async with gate:
                r = await http.post(
                    f"{base}/v1/chat/completions",
                    json={"model": "m", "messages": [{"role": "user", "content": "Q: 1?"}], **body},
                    headers=headers,
                )
            assert r.status_code in (200, 429), r.text
            return r.status_code

        b_admin = b.app.state.t2.admin

        async def revoke_during_load() -> float:
            await asyncio.sleep(0.2)
            prefix = doomed.json()["prefix"]
            gone = await http.delete(
                f"{a.base_url}/admin/tenants/acme/keys/{prefix}", headers=ADMIN
            )
            assert gone.status_code == 200
            start, revoked_at = time.monotonic(), await b_admin.store.version()
            while b_admin.snapshot.version < revoked_at:  # B's poll, every POLL_S (0.5 s)
                await asyncio.sleep(0.01)
            refused = await http.get(f"{b.base_url}/v1/models", headers=victim)
            assert refused.status_code == 401  # in force from the first snapshot that holds it
            return time.monotonic() - start

        *statuses, lag = await asyncio.gather(
            *(one(i) for i in range(REQUESTS)), revoke_during_load()
        )
        # The 2 s promise is B's next poll (POLL_S) plus one snapshot read, the revocation in
        # force from that snapshot on (asserted above). On a loaded box one event loop runs
        # both replicas, 200 requests and the client, so the wall clock only guards against a
        # poller that stopped; the time itself is a benchmark's to measure, not a test's.
        assert lag < 30, f"replica B accepted a revoked key for {lag:.2f} s"
        assert statuses.count(429) > 0 and statuses.count(200) > 0

        ledger = a.app.state.t2.billing.ledger
        t = cfg.tenants[0]
        key_scope = f"key:{made.json()['prefix']}"
        key_usage = await ledger.usage(
            "acme", t.budgets, [(key_scope, Budgets.model_validate({"day": {"limit": KEY_LIMIT}}))]
        )
        key_spent = next(u for u in key_usage if u.limit.scope == key_scope).spent_value
        assert 0 < key_spent <= KEY_LIMIT + 0
        for user in ("u0", "u1"):
            levels, _ = budget_levels(t, Caller(user=user))
            usage = await ledger.usage("acme", t.budgets, levels)
            spent = next(u for u in usage if u.limit.scope).spent_value
            assert 0 < spent <= USER_LIMIT + 0, user
        assert await ledger.store.reserved_holds("acme") == 0
