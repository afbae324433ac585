"""Rate limits across replicas and crashes, on real Redis (and SQLite for the restart):

- two replicas (the real app over HTTP, each with its own scripted engine and admin poller) on
  one Redis under 200 concurrent requests: the tenant's rpm admits exactly its limit, a key's
  rpm (set through the admin API on replica A) holds on replica B too, a tpm tenant's tokens
  stay within its limit, and every 429 is OpenAI's rate-limit error with its headers;
- `kill -9` of a server process and a restart: the limits set through the API and the requests
  already counted in the window are still in force (they live in the store, not the process).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from controller.budget.models import RateLimits
from server.app import create_app, serve_in_loop
from server.config import hash_key, parse_config
from tests.fakes import ScriptedEngine, cycle
from tests.fixtures.replicas import RestartableReplica, backend_ledger
from tests.support import billed

ADMIN = {"Authorization": "Bearer rate-replicas-admin"}
RPM_KEY, TPM_KEY = "rate-replicas-rpm", "rate-replicas-tpm"
TENANT_RPM, KEY_RPM, TPM = 60, 15, 1500
REQUESTS = 200


def config(ledger: dict[str, Any]) -> dict[str, Any]:
    return {
        "models": [{"id": "m", "path": "models/tiny-arith"}],
        "ledger": ledger,
        "admin": {"key_sha256": hash_key("rate-replicas-admin")},
        "defaults": {"policy": "fixed:2", "max_tokens": 8},
        "tenants": [
            {
                "id": "busy",
                "api_keys": [{"sha256": hash_key(RPM_KEY)}],
                "rate_limits": {"rpm": TENANT_RPM},
            },
            {
                "id": "wordy",
                "api_keys": [{"sha256": hash_key(TPM_KEY)}],
                "rate_limits": {"tpm": TPM},
            },
        ],
    }


def chat(i: int) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": f"Q: {i % 7}+1=?"}]}


def check_429(r: httpx.Response, limits: tuple[int, ...] = (TENANT_RPM, KEY_RPM, TPM)) -> str:
    """An OpenAI rate-limit error with Retry-After and x-ratelimit-* headers; its type."""
    error = r.json()["error"]
    assert error["code"] == "rate_limit_exceeded" and error["type"] in ("requests", "tokens")
    assert int(r.headers["Retry-After"]) >= 1
    kind = str(error["type"])
    assert r.headers[f"x-ratelimit-remaining-{kind}"].isdigit()
    assert int(r.headers[f"x-ratelimit-limit-{kind}"]) in limits
    return kind


async def test_two_replicas_on_one_redis_hold_rpm_and_tpm(redis_url: str) -> None:
    cfg = parse_config(config({"backend": "redis", "redis_url": redis_url}))
    engine_a = ScriptedEngine(cycle("A: 2", "A: 3"), token_s=0.002)
    engine_b = ScriptedEngine(cycle("A: 2", "A: 3"), token_s=0.002)
    async with (
        serve_in_loop(create_app(cfg, engine=engine_a)) as a,
        serve_in_loop(create_app(cfg, engine=engine_b)) as b,
        httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64)) as http,
    ):
        made = await http.post(
            f"{a.base_url}/admin/tenants/busy/keys",
            json={"label": "batch", "rate_limits": {"rpm": KEY_RPM}},
            headers=ADMIN,
        )
        assert made.status_code == 201, made.text
        key = {"Authorization": f"Bearer {made.json()['key']}"}
        deadline = time.monotonic() + 2  # replica B learns the key from the store
        while (await http.get(f"{b.base_url}/v1/models", headers=key)).is_error:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        tenant = {"Authorization": f"Bearer {RPM_KEY}"}
        wordy = {"Authorization": f"Bearer {TPM_KEY}"}
        gate = asyncio.Semaphore(64)

        async def one(i: int) -> tuple[str, httpx.Response]:
            base = (a if i % 2 else b).base_url
            who, headers = [("key", key), ("tenant", tenant), ("wordy", wordy)][i % 3]
            async with gate:
                r = await http.post(f"{base}/v1/chat/completions", json=chat(i), headers=headers)
            assert r.status_code in (200, 429), r.text
            return who, r

        results = await asyncio.gather(*(one(i) for i in range(REQUESTS)))
        ok = Counter(who for who, r in results if r.status_code == 200)
        kinds = Counter(check_429(r) for _, r in results if r.status_code == 429)

        # rpm: the busy tenant (its file key and its API key together) got exactly its limit,
        # the API key no more than its own, across both replicas
        assert ok["key"] == KEY_RPM  # 67 asked: the key's own limit binds
        assert ok["key"] + ok["tenant"] == TENANT_RPM  # 134 asked in all
        assert kinds["requests"] == 134 - TENANT_RPM
        # tpm: what the wordy tenant was served stays within its tokens per minute
        served = sum(
            billed(r.json()) for who, r in results if who == "wordy" and r.status_code == 200
        )
        assert 0 < served <= TPM
        assert ok["wordy"] < 66 and kinds["tokens"] == 66 - ok["wordy"]
        ledger = a.app.state.t2.billing.ledger
        usage = await ledger.usage("wordy", None, rates=[("", RateLimits(tpm=TPM))])
        tpm = next(u for u in usage if u.limit.kind == "rate")
        assert tpm.spent_value == served and tpm.reserved_value == 0
        [rpm] = await ledger.requests("busy", [("", RateLimits(rpm=TENANT_RPM))])
        assert rpm.count == TENANT_RPM


@pytest.fixture(params=["sqlite", "redis"])
def config_file(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config(backend_ledger(request, tmp_path))))
    return path


def test_rate_limits_and_their_window_survive_kill_9(config_file: Path, tmp_path: Path) -> None:
    replica = RestartableReplica(config_file, tmp_path / "serve.log")
    base = replica.base_url
    try:
        put = httpx.put(f"{base}/admin/tenants/busy/rate_limits", json={"rpm": 3}, headers=ADMIN)
        assert put.status_code == 200, put.text
        made = httpx.post(
            f"{base}/admin/tenants/wordy/keys",
            json={"label": "k", "rate_limits": {"rpm": 1}},
            headers=ADMIN,
        ).json()
        tenant = {"Authorization": f"Bearer {RPM_KEY}"}
        key = {"Authorization": f"Bearer {made['key']}"}
        for _ in range(2):
            assert httpx.post(
                f"{base}/v1/chat/completions", json=chat(0), headers=tenant, timeout=30
            ).is_success
        assert httpx.post(
            f"{base}/v1/chat/completions", json=chat(0), headers=key, timeout=30
        ).is_success
        replica.kill_and_restart()
        third = httpx.post(f"{base}/v1/chat/completions", json=chat(0), headers=tenant, timeout=30)
        assert third.status_code == 200, third.text
        assert third.headers["x-ratelimit-remaining-requests"] == "0"  # 2 counted before the kill
        fourth = httpx.post(f"{base}/v1/chat/completions", json=chat(0), headers=tenant, timeout=30)
        assert fourth.status_code == 429 and check_429(fourth, (3,)) == "requests"
        again = httpx.post(f"{base}/v1/chat/completions", json=chat(0), headers=key, timeout=30)
        assert again.status_code == 429, again.text  # the key's stored rpm and its one request
        assert again.json()["error"]["param"] == "key.rate_limits.rpm"
    finally:
        replica.kill()
