"""Learned state is best-effort: a store that cannot be opened, or that stalls, costs a little
learning and never the answer (found by an audit of the stores under failure). Unmetered
tenants do no ledger I/O, so the learned store is all they touch."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from server.app import create_app, serve_in_loop
from server.config import hash_key, parse_config
from server.sampling.policies import STORE_WAIT_S
from tests.fakes import ScriptedEngine, cycle
from tests.fixtures.redis import RedisServer

KEY = {"Authorization": "Bearer k"}
CHAT = {"model": "m", "messages": [{"role": "user", "content": "Q: 1+1=?"}]}


def unmetered_app(ledger: dict[str, Any], policy: str) -> FastAPI:
    cfg = parse_config({
        "models": [{"id": "m", "path": "/nonexistent"}],
        "ledger": ledger,
        "defaults": {"policy": policy, "extractor": "last_number", "max_tokens": 8,
                     "max_samples": 4},
        "tenants": [{"id": "acme", "api_keys": [{"sha256": hash_key("k")}]}],
    }, "test")  # fmt: skip
    return create_app(cfg, engine=ScriptedEngine(cycle("A: 2")))


@pytest.mark.parametrize("policy", ["fixed:2", "t2"])
async def test_a_store_that_cannot_be_opened_does_not_fail_the_answer(
    tmp_path: Path, policy: str
) -> None:
    """It was a 500 for every request, even `fixed:2`, which learns nothing: the book opened
    the store before asking whether there was anything to save."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")  # the store's folder is a file: SQLite cannot open the store
    app = unmetered_app({"backend": "sqlite", "path": str(blocker / "ledger.sqlite")}, policy)
    async with serve_in_loop(app) as live, httpx.AsyncClient(base_url=live.base_url) as http:
        for _ in range(2):
            r = await http.post("/v1/chat/completions", headers=KEY, json=CHAT, timeout=60)
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["message"]["content"] == "A: 2"


async def test_a_frozen_store_delays_no_answer_beyond_its_wait(own_redis: RedisServer) -> None:
    """An answer already computed waited out Redis's 5 s timeout on the learned write (10 s
    for a new spec's load and write); now at most STORE_WAIT_S once, then the store is left
    alone for a while."""
    ledger = {"backend": "redis", "redis_url": own_redis.url()}
    app = unmetered_app(ledger, "t2")
    async with serve_in_loop(app) as live, httpx.AsyncClient(base_url=live.base_url) as http:
        assert (await http.post("/v1/chat/completions", headers=KEY, json=CHAT)).is_success
        os.kill(own_redis.process.pid, signal.SIGSTOP)  # up, answering nothing
        try:
            took = []
            for spec in ("t2", "t2:lam=0.01"):  # the second is a new spec: a load too
                started = time.monotonic()
                r = await http.post("/v1/chat/completions", headers=KEY, timeout=60,
                                    json={**CHAT, "t2": {"policy": spec}})  # fmt: skip
                took.append(time.monotonic() - started)
                assert r.status_code == 200, r.text
        finally:
            os.kill(own_redis.process.pid, signal.SIGCONT)
    assert took[0] < STORE_WAIT_S + 2.0, took  # one wait, with room for a loaded box
    assert took[1] < 2.0, took  # the store is skipped after it stalled
