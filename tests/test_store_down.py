"""A store that cannot be reached: the backends say so (`StoreUnavailable`) on real failures, a
Redis server frozen or gone and a SQLite file locked past its busy timeout, and the app answers
503 instead of a 500 or a hang: `ledger_unavailable` to the official client's completion,
`store_unavailable` on the admin API."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
from pathlib import Path

import httpx
import openai
import pytest

from controller.budget import Budget, Budgets, Cost, Ledger
from controller.stores import StoreUnavailable
from server.app import create_app
from server.config import hash_key, parse_config
from storage.redis.ledger import RedisStore
from storage.sqlite.ledger import SQLiteStore
from tests.fakes import ScriptedEngine, cycle
from tests.fixtures.redis import RedisServer
from tests.fixtures.server import OpenClient, serve_in_loop

FIXED, PER = Cost(0.01, 100.0), Cost(0.1, 1000.0)
BUDGETS = Budgets(day=Budget(limit=100.0))
GIVE_UP_S = 60  # far beyond the store's own timeouts: a hang fails here instead of blocking


async def reserve(ledger: Ledger, wave: int) -> int:
    out = await asyncio.wait_for(
        ledger.reserve("acme", BUDGETS, "r", wave, 1, FIXED, PER), GIVE_UP_S
    )
    return out.granted


async def test_a_frozen_then_gone_redis_ledger_is_unavailable(own_redis: RedisServer) -> None:
    store = RedisStore(own_redis.url())
    ledger = Ledger(store)
    try:
        assert await reserve(ledger, 0) == 1
        os.kill(own_redis.process.pid, signal.SIGSTOP)  # up, but answering nothing
        try:
            with pytest.raises(StoreUnavailable, match="Timeout"):
                await reserve(ledger, 1)
        finally:
            os.kill(own_redis.process.pid, signal.SIGCONT)
        assert await reserve(ledger, 1) == 1  # thawed: the same client serves again
        own_redis.process.kill()
        own_redis.process.wait()
        with pytest.raises(StoreUnavailable, match=r"(?i)connect"):
            await reserve(ledger, 2)
    finally:
        await store.close()


async def test_a_sqlite_ledger_locked_past_its_busy_timeout_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    store = SQLiteStore(path, busy_timeout_ms=100)
    ledger = Ledger(store)
    other = sqlite3.connect(path, isolation_level=None)  # another process's writer
    try:
        assert await reserve(ledger, 0) == 1
        other.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StoreUnavailable, match="locked"):
            await reserve(ledger, 1)
        other.execute("ROLLBACK")
        assert await reserve(ledger, 1) == 1  # the lock gone, the same wave is held
    finally:
        other.close()
        await store.close()


async def test_the_api_answers_an_unreachable_store_with_503(
    own_redis: RedisServer, openai_client: OpenClient
) -> None:
    config = parse_config(
        {
            "models": [{"id": "m", "path": "/nonexistent"}],
            "ledger": {"backend": "redis", "redis_url": own_redis.url()},
            "admin": {"key_sha256": hash_key("admin")},
            "defaults": {"policy": "fixed:2", "extractor": "last_number"},
            "tenants": [
                {
                    "id": "acme",
                    "api_keys": [{"sha256": hash_key("k")}],
                    "budgets": {"day": {"limit": 1e6}},
                    "prices": {"models": {"m": {"prompt_per_1m": 1.0, "completion_per_1m": 1.0}}},
                }
            ],
        },
        "test",
    )
    app = create_app(config, engine=ScriptedEngine(cycle("A: 2")))
    messages: list[dict[str, str]] = [{"role": "user", "content": "Q: 1+1=?"}]
    async with serve_in_loop(app) as live:
        api = openai_client(live.v1, "k", timeout=GIVE_UP_S)
        ok = await api.chat.completions.create(model="m", messages=messages)  # type: ignore[arg-type]
        assert ok.choices[0].message.content == "A: 2"
        own_redis.process.kill()
        own_redis.process.wait()
        with pytest.raises(openai.InternalServerError) as down:
            await api.chat.completions.create(model="m", messages=messages)  # type: ignore[arg-type]
        assert down.value.status_code == 503 and down.value.code == "ledger_unavailable"
        assert down.value.response.headers["retry-after"] == "5"
        admin = {"Authorization": "Bearer admin"}
        async with httpx.AsyncClient(base_url=live.base_url, headers=admin, timeout=60) as http:
            report = await http.get("/admin/tenants/acme")  # reads the ledger's windows
            change = await http.put("/admin/tenants/acme/budgets", json={"day": {"limit": 2}})
        for resp in (report, change):
            error = resp.json()["error"]
            assert resp.status_code == 503 and error["code"] == "store_unavailable", resp.text
            assert resp.headers["retry-after"] == "5" and "127.0.0.1" not in error["message"]
