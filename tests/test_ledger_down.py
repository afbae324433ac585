"""A ledger that cannot be reached: each store says so (`LedgerUnavailable`) on a real failure,
a Redis server gone or frozen and a SQLite file locked past its busy timeout, and the app
answers the official client with a 503 `ledger_unavailable` instead of a 500 or a hang."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
from pathlib import Path

import openai
import pytest

from controller.budget import Budget, Budgets, Cost, Ledger
from controller.budget.ledger import LedgerUnavailable
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
            with pytest.raises(LedgerUnavailable, match="Timeout"):
                await reserve(ledger, 1)
        finally:
            os.kill(own_redis.process.pid, signal.SIGCONT)
        own_redis.process.kill()
        own_redis.process.wait()
        with pytest.raises(LedgerUnavailable, match=r"(?i)connect"):
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
        with pytest.raises(LedgerUnavailable, match="locked"):
            await reserve(ledger, 1)
        other.execute("ROLLBACK")
        assert await reserve(ledger, 1) == 1  # the lock gone, the same wave is held
    finally:
        other.close()
        await store.close()


async def test_the_api_answers_an_unreachable_ledger_with_503(
    own_redis: RedisServer, openai_client: OpenClient
) -> None:
    config = parse_config(
        {
            "models": [{"id": "m", "path": "/nonexistent"}],
            "ledger": {"backend": "redis", "redis_url": own_redis.url()},
            "defaults": {"policy": "fixed:2", "extractor": "last_number"},
            "tenants": [
                {
                    "id": "acme",
                    "api_keys": [{"sha256": hash_key("k")}],
                    "budgets": {"day": {"limit": 1e6}},
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
