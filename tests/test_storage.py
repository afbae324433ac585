"""The one store factory (`storage.open_stores`): the config's `ledger:` section puts the ledger,
the admin store and t2's learned state in the same place (one SQLite file, one Redis), with
real SQLite and a real redis-server."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import redis

from controller.budget import Budget, Budgets, Cost, Ledger
from controller.budget.admin_state import StoredKey
from server.config import AppConfig, parse_config
from storage import Stores, open_stores
from storage.redis.ledger import RedisStore

NOW = 1_800_000_000.0


def config(ledger: dict[str, object]) -> AppConfig:
    tenant = {"id": "acme", "api_keys": [{"sha256": "0" * 64}]}
    data = {"models": [{"id": "m", "path": "models/m"}], "ledger": ledger, "tenants": [tenant]}
    return parse_config(data, "test")


async def use_every_store(stores: Stores) -> None:
    """One step in each store, so each leaves its mark where it lives."""
    ledger = Ledger(stores.ledger(), clock=lambda: NOW)
    admin, learned = stores.admin(), stores.learned()
    try:
        budgets = Budgets(day=Budget(limit=1.0))
        await ledger.reserve("acme", budgets, "r1", 0, 1, Cost(0.1, 0.0), Cost(0.1, 0.0))
        await admin.create_key(StoredKey("ab" * 32, "acme", "t2-ab", "ci", NOW), NOW)
        await learned.add("acme", "m", (4, 2), NOW)
    finally:
        await ledger.close()
        await admin.close()
        await learned.close()


async def test_sqlite_puts_every_store_in_the_one_configured_file(tmp_path: Path) -> None:
    path = tmp_path / "state" / "ledger.sqlite"
    await use_every_store(open_stores(config({"backend": "sqlite", "path": str(path)}).ledger))
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM reservations").fetchone()[0] == 1
        assert conn.execute("SELECT prefix FROM api_keys").fetchall() == [("t2-ab",)]
        assert conn.execute("SELECT n, c, count FROM t2_learned").fetchall() == [(4, 2, 1)]
    assert [p.name for p in path.parent.glob("*.sqlite")] == [path.name]


@pytest.mark.redis
async def test_redis_puts_every_store_in_the_one_configured_redis(redis_url: str) -> None:
    cfg = config({"backend": "redis", "redis_url": redis_url, "spend_log_retention_days": 2})
    stores = open_stores(cfg.ledger)
    ledger = stores.ledger()
    assert isinstance(ledger, RedisStore) and ledger.log_retention_s == 2 * 86400
    await ledger.close()
    await use_every_store(stores)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        tags = {key.partition("}")[0] + "}" for key in client.scan_iter()}
    finally:
        client.close()
    assert tags == {"{t2:acme}", "{t2admin}", "{t2learn}"}


def test_an_unknown_backend_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="'etcd'"):
        Stores("etcd")
