"""Budgets across real server processes: two replicas of the real app (each in its own process
with its own admin poller and ledger client, on a scripted engine: what is under test here is
the shared Redis ledger, not vLLM) share one Redis ledger.

- Multi-replica: 200 concurrent requests split across both replicas against a tenant whose hard
  day budget fits about 50; spend never exceeds the limit, the overflow is refused with 429
  `insufficient_quota` + Retry-After, both replicas serve, and the ledger's spend equals the sum
  of the `t2.cost` the responses reported.
- Crash: `kill -9` one replica under load; the settled spend survives, the killed replica's
  holds expire after the reservation TTL, and the restarted replica serves again.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from tests.fixtures.redis import RedisServer
from tests.fixtures.replicas import ROOT, ServeProcess, start_scripted
from tests.support import free_port, need

pytestmark = [pytest.mark.redis]

MODEL = "tiny-arith"
MODEL_DIR = ROOT / "models" / MODEL
ADMIN_KEY = "replicas-admin-key"
SHARED_KEY, CRASH_KEY = "replicas-shared-key", "replicas-crash-key"
MAX_TOKENS = 8
SAMPLES = 2  # fixed:2
# 1 unit per completion token, prompts free: a request's worst case is exactly SAMPLES·MAX_TOKENS.
PRICES = {"currency": "USD", "models": {"*": {"prompt_per_1m": 0.0, "completion_per_1m": 1e6}}}
SHARED_LIMIT = 50.0 * SAMPLES * MAX_TOKENS  # about 50 requests
# A hold lapses after the TTL, so the config insists the TTL outlasts the request timeout;
# the crash test waits the TTL out once.
REQUEST_TIMEOUT_S = 8.0
RESERVATION_TTL_S = 10.0
TOKEN_S = 0.01  # each scripted token: a wave lasts long enough to be caught in flight
REQUESTS, CONCURRENCY = 200, 16
REDIS_DB = 15
MESSAGES = [{"role": "user", "content": "Q: 12+30-7=? Replica budget test, show your work."}]


def replicas_config(redis_url: str) -> dict[str, Any]:
    """Two metered tenants on one Redis ledger: `shared` (tight, hard) and `crash` (roomy)."""
    return {
        "demo": True,
        "server": {
            "host": "127.0.0.1",
            "drain_timeout_s": 5,
            "request_timeout_s": REQUEST_TIMEOUT_S,
        },
        "models": [{"id": MODEL, "path": str(MODEL_DIR)}],
        "ledger": {
            "backend": "redis",
            "redis_url": redis_url,
            "reservation_ttl_s": RESERVATION_TTL_S,
        },
        "defaults": {"policy": "fixed:2", "max_samples": 8, "max_tokens": MAX_TOKENS},
        "tenants": [
            {
                "id": "shared",
                "api_keys": [{"plain": SHARED_KEY}],
                "models": [MODEL],
                "policy": f"fixed:{SAMPLES}",
                "prices": PRICES,
                "budgets": {"day": {"limit": SHARED_LIMIT, "unit": "currency", "hard": True}},
            },
            {
                "id": "crash",
                "api_keys": [{"plain": CRASH_KEY}],
                "models": [MODEL],
                "policy": f"fixed:{SAMPLES}",
                "prices": PRICES,
                "budgets": {"day": {"limit": 1e9, "unit": "currency", "hard": True}},
            },
        ],
    }


@dataclass
class Replicas:
    config_path: Path
    workdir: Path
    servers: list[ServeProcess] = field(default_factory=list)

    def restart(self, index: int) -> ServeProcess:
        """Start replica `index` again on the same config and port."""
        old = self.servers[index]
        server = start_scripted(
            self.config_path, old.port, old.log_path, {"T2SERVE_ADMIN_KEY": ADMIN_KEY}, TOKEN_S
        )
        self.servers[index] = server
        return server


@pytest.fixture(scope="module")
def replicas(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Replicas]:
    need((MODEL_DIR / "config.json").is_file(), "the shipped tiny model (models/tiny-arith)")
    url = redis_server.url(REDIS_DB)
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    workdir = tmp_path_factory.mktemp("replicas")
    config_path = workdir / "config.yaml"
    config_path.write_text(yaml.safe_dump(replicas_config(url)))
    env = {"T2SERVE_ADMIN_KEY": ADMIN_KEY}
    fleet = Replicas(config_path, workdir)
    try:
        for name in ("a", "b"):
            log = workdir / f"t2serve-{name}.log"
            fleet.servers.append(start_scripted(config_path, free_port(), log, env, TOKEN_S))
        with ThreadPoolExecutor(len(fleet.servers)) as pool:
            list(pool.map(warm_up, fleet.servers))
        yield fleet
    finally:
        for server in fleet.servers:
            server.stop()


def warm_up(server: ServeProcess) -> None:
    """One request per replica before the load: an engine's first batch pays one-off setup
    (kernels, caches) that would otherwise count against the request timeout."""
    response = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {CRASH_KEY}"},
        json={"model": MODEL, "messages": MESSAGES, "max_tokens": MAX_TOKENS},
        timeout=180,
    )
    assert response.status_code == 200, response.text


def day_window(server: ServeProcess, tenant: str) -> dict[str, Any]:
    """The tenant's day window as the ledger reports it (GET /admin/tenants/{id})."""
    response = httpx.get(
        f"{server.base_url}/admin/tenants/{tenant}",
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    (day,) = [w for w in response.json()["windows"] if w["window"] == "day"]
    return dict(day)


async def chat(client: httpx.AsyncClient, server: ServeProcess, key: str) -> httpx.Response:
    return await client.post(
        f"{server.base_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": MODEL, "messages": MESSAGES, "max_tokens": MAX_TOKENS},
        timeout=180,
    )


async def test_two_replicas_share_a_hard_budget(replicas: Replicas) -> None:
    a, b = replicas.servers
    gate = asyncio.Semaphore(CONCURRENCY)

    slowest = 0.0

    async def one(i: int, client: httpx.AsyncClient) -> tuple[int, httpx.Response]:
        nonlocal slowest
        async with gate:
            started = time.monotonic()
            response = await chat(client, (a, b)[i % 2], SHARED_KEY)
            slowest = max(slowest, time.monotonic() - started)
            return i % 2, response

    limits = httpx.Limits(max_connections=CONCURRENCY)
    async with httpx.AsyncClient(limits=limits) as client:
        results = await asyncio.gather(*(one(i, client) for i in range(REQUESTS)))

    # Premise: no wave outlived its hold (else the overspend below is this box, not the ledger).
    assert slowest < RESERVATION_TTL_S, f"a request took {slowest:.1f} s"
    statuses = [r.status_code for _, r in results]
    assert set(statuses) <= {200, 429}, [r.text for _, r in results if r.status_code != 200][:3]
    served = [(replica, r.json()) for replica, r in results if r.status_code == 200]
    refused = [r for _, r in results if r.status_code == 429]
    assert {replica for replica, _ in served} == {0, 1}, "one replica served nothing"
    assert refused, "the budget never ran out"
    for response in refused:
        error = response.json()["error"]
        assert error["code"] == "insufficient_quota" and error["type"] == "insufficient_quota"
        assert 1 <= int(response.headers["retry-after"]) <= 86400
    costs = [body["t2"]["cost"] for _, body in served]
    assert all(cost > 0 for cost in costs)

    for server in (a, b):  # both replicas read the same ledger
        day = day_window(server, "shared")
        assert day["limit"] == SHARED_LIMIT
        assert day["spent"] <= SHARED_LIMIT  # no overspend, not even by one wave
        assert day["spent"] == pytest.approx(sum(costs), abs=1e-6)  # billed == reported
        assert day["reserved"] == 0
    # Refusals came from a spent budget, not from a misconfigured or flaky ledger.
    assert day["spent"] > SHARED_LIMIT - CONCURRENCY * SAMPLES * MAX_TOKENS


async def test_kill_9_under_load_keeps_spend_and_expires_holds(replicas: Replicas) -> None:
    victim, survivor = replicas.servers
    received: list[float] = []  # t2.cost of responses received before the kill
    stop = asyncio.Event()

    async def load(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            try:
                response = await chat(client, victim, CRASH_KEY)
            except httpx.TransportError:
                return
            if stop.is_set():
                return
            assert response.status_code == 200, response.text
            received.append(response.json()["t2"]["cost"])

    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=16)) as client:
        workers = [asyncio.create_task(load(client)) for _ in range(8)]
        deadline = time.monotonic() + 300
        while len(received) < 6:
            assert time.monotonic() < deadline, "no load reached the victim"
            assert not any(w.done() and w.exception() for w in workers), [
                w.exception() for w in workers if w.done()
            ]
            await asyncio.sleep(0.05)
        # kill it with waves in flight: freeze the victim (SIGSTOP) until the shared ledger
        # shows it holding budget, then SIGKILL it; its waves are too short to catch otherwise
        group = victim.process.pid
        while True:
            os.killpg(group, signal.SIGSTOP)
            if day_window(survivor, "crash")["reserved"] > 0:
                break
            os.killpg(group, signal.SIGCONT)
            assert time.monotonic() < deadline, "the victim never held budget under load"
            await asyncio.sleep(0.005)
        stop.set()
        victim.kill()
        killed_at = time.monotonic()
        before_kill = sum(received)
        await asyncio.gather(*workers, return_exceptions=True)

    after_kill = day_window(survivor, "crash")
    assert time.monotonic() - killed_at < RESERVATION_TTL_S, "too slow to see the leaked holds"
    assert after_kill["reserved"] > 0  # the killed replica's in-flight waves still hold budget
    assert after_kill["spent"] >= before_kill - 1e-6  # every reported cost was settled

    await asyncio.sleep(RESERVATION_TTL_S + 1.0)
    expired = day_window(survivor, "crash")
    assert expired["reserved"] == 0  # holds lapse by their TTL
    assert expired["spent"] == pytest.approx(after_kill["spent"])

    restarted = replicas.restart(0)
    on_restart = day_window(restarted, "crash")
    assert on_restart["spent"] == pytest.approx(after_kill["spent"])  # intact across restart
    assert on_restart["reserved"] == 0
    async with httpx.AsyncClient() as client:
        response = await chat(client, restarted, CRASH_KEY)
    assert response.status_code == 200, response.text
    cost = response.json()["t2"]["cost"]
    assert cost > 0
    assert day_window(survivor, "crash")["spent"] == pytest.approx(after_kill["spent"] + cost)
