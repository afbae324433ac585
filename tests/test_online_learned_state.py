"""The `online` rule's learned table in the ledger's store (real SQLite, real Redis): a restart
keeps it, two app instances sharing the store pool their traffic, and it sits beside t2's
table for the same model without touching it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from controller.policy.online import (
    STORE_SUFFIX,
    Online,
    capped,
    decode_histogram,
    encode_histogram,
    fit_share_prior,
    histogram,
)
from server.app import create_app, serve_in_loop
from server.config import hash_key, parse_config
from server.sampling.policies import PolicyBook
from storage.redis.learned import RedisLearnedStore
from storage.sqlite.learned import SQLiteLearnedStore
from tests.fakes import ScriptedEngine, cycle

KEY = "online-state-key"


def test_a_histogram_cell_round_trips() -> None:
    for h in [(1, 0, 0, 0), (64, 0, 0, 0), (30, 20, 10, 4), (5, 5, 5, 49)]:
        assert decode_histogram(encode_histogram(h)) == h
    assert decode_histogram(encode_histogram((300, 100, 0, 0))) == capped((300, 100, 0, 0))


async def test_the_book_persists_online_learning_and_restores_it(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    store = SQLiteLearnedStore(path)
    book = PolicyBook(store=store)
    policy = await book.get("acme", "m", "online")
    assert isinstance(policy, Online) and policy.cold
    for i in range(30):
        await book.observe("acme", "m", policy, ["7"] * 4 + ["3"] * (i % 3) + ["5"] * (i % 2))
    assert not policy.cold
    await store.close()
    store2 = SQLiteLearnedStore(path)  # a restart: a new process, the same file
    restarted = await PolicyBook(store=store2).get("acme", "m", "online:0.005")
    assert isinstance(restarted, Online)
    assert restarted.counts == policy.counts and restarted.seen == 30
    assert restarted.pi == pytest.approx(fit_share_prior(policy.counts))  # refitted on load
    assert (await store2.load("acme", "m", now=0.0)).counts == {}  # t2's table untouched
    other = await PolicyBook(store=store2).get("other", "m", "online")
    assert isinstance(other, Online) and other.seen == 0  # per tenant
    await store2.close()


def _config(ledger: dict[str, Any]) -> dict[str, Any]:
    return {
        "models": [{"id": "m", "path": "models/tiny-arith"}],
        "ledger": ledger,
        "defaults": {"policy": "online", "max_samples": 12, "max_tokens": 8},
        "tenants": [{"id": "acme", "api_keys": [{"sha256": hash_key(KEY)}]}],
    }


async def _two_apps_share_learning(ledger: dict[str, Any]) -> None:
    cfg = parse_config(_config(ledger))
    script = cycle("A: 6", "A: 6", "A: 6", "A: 9", "A: 6", "A: 4", "A: 6")
    apps = [create_app(cfg, engine=ScriptedEngine(script)) for _ in range(2)]
    async with (
        serve_in_loop(apps[0]) as a,
        serve_in_loop(apps[1]) as b,
        httpx.AsyncClient(timeout=60) as http,
    ):
        for i in range(24):
            base = (a, b)[i % 2].base_url
            r = await http.post(
                f"{base}/v1/chat/completions",
                json={"model": "m", "messages": [{"role": "user", "content": f"Q: {i}?"}]},
                headers={"Authorization": f"Bearer {KEY}"},
            )
            assert r.status_code == 200, r.text
        books = [app.state.t2.policies for app in apps]
        store = books[0].store
        assert store is not None
        merged = await store.load("acme", "m" + STORE_SUFFIX, now=0.0)
        assert merged.counts.total() == 24  # both instances' questions, none lost
        assert all(decode_histogram(c)[0] >= 1 for c in merged.counts)
        fresh = PolicyBook(store=books[1].store)
        policy = await fresh.get("acme", "m", "online")
        assert isinstance(policy, Online) and policy.seen == 24 and not policy.cold


async def test_two_app_instances_share_online_learning_through_sqlite(tmp_path: Path) -> None:
    await _two_apps_share_learning({"backend": "sqlite", "path": str(tmp_path / "ledger.sqlite")})


@pytest.mark.redis
async def test_two_app_instances_share_online_learning_through_redis(redis_url: str) -> None:
    await _two_apps_share_learning({"backend": "redis", "redis_url": redis_url})
    store = RedisLearnedStore(redis_url)
    assert (await store.load("acme", "m", now=0.0)).counts == {}  # t2's key untouched
    await store.close()


def test_histogram_ignores_abstentions() -> None:
    assert histogram([None, "a", None]) == (1, 0, 0, 0)
