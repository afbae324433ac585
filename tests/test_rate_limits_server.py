"""Rate limits on the real app (lifespan on, a SQLite file, a scripted engine): rpm and tpm from
the file and the admin API, per tenant and per key; OpenAI's 429 body and x-ratelimit-* headers
(checked with the official `openai` client too); lasting admin changes for rate limits, user
budgets and alert thresholds; a key's `request` budget applies; an unreachable admin store
starts the server not ready instead of not at all."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import httpx2
import openai
import pytest
import yaml
from prometheus_client import REGISTRY

from server.app import create_app
from server.config import hash_key, load_config, parse_config
from tests.fakes import ScriptedEngine, cycle
from tests.support import billed, free_port, need

ADMIN_KEY = "rate-admin"
TENANT_KEY = "rate-acme"
FILE_KEY = "rate-acme-limited"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
AUTH = {"Authorization": f"Bearer {TENANT_KEY}"}


def config_dict(path: Path, rpm: int | None = 3, tpm: int | None = None) -> dict[str, Any]:
    return {
        "models": [{"id": "m", "path": "models/tiny-arith"}],
        "ledger": {"backend": "sqlite", "path": str(path)},
        "admin": {"key_sha256": hash_key(ADMIN_KEY)},
        "defaults": {"policy": "fixed:2", "max_tokens": 8},
        "tenants": [
            {
                "id": "acme",
                "api_keys": [
                    {"sha256": hash_key(TENANT_KEY)},
                    {"sha256": hash_key(FILE_KEY), "rate_limits": {"rpm": 1}},
                ],
                "rate_limits": {"rpm": rpm, "tpm": tpm},
                "alerts": {"url": "http://127.0.0.1:9/hook", "secret": "s" * 16},
            }
        ],
    }


Replica = Callable[..., contextlib.AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config_dict(tmp_path / "ledger.sqlite")))
    return path


@pytest.fixture
def replica(config_file: Path) -> Replica:
    @contextlib.asynccontextmanager
    async def start(**over: Any) -> AsyncIterator[httpx.AsyncClient]:
        data = yaml.safe_load(config_file.read_text())
        data["tenants"][0].update(over)
        app = create_app(parse_config(data), engine=ScriptedEngine(cycle("A: 6"), context=8192))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t2.test") as c:
                c.app = app  # type: ignore[attr-defined]
                yield c

    return start


def ask(max_tokens: int = 8, **extra: Any) -> dict[str, Any]:
    return {
        "model": "m",
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": "Q: 7+8-9=?"}],
        **extra,
    }


async def complete(c: httpx.AsyncClient, headers: dict[str, str], **kw: Any) -> httpx.Response:
    return await c.post("/v1/chat/completions", json=ask(**kw), headers=headers)


async def test_rpm_answers_as_openai_does(replica: Replica) -> None:
    async with replica() as c:
        seen = []
        for _ in range(2):
            r = await complete(c, AUTH)
            assert r.status_code == 200, r.text
            assert r.headers["x-ratelimit-limit-requests"] == "3"
            seen.append(r.headers["x-ratelimit-remaining-requests"])
            assert re.fullmatch(r"(\d+ms|\d+(\.\d+)?s)", r.headers["x-ratelimit-reset-requests"])
        async with c.stream(
            "POST", "/v1/chat/completions", json=ask(stream=True), headers=AUTH
        ) as streamed:  # a stream carries them too
            assert streamed.status_code == 200
            seen.append(streamed.headers["x-ratelimit-remaining-requests"])
            assert "data: [DONE]" in (await streamed.aread()).decode()
        assert seen == ["2", "1", "0"]
        labels = {"tenant": "acme", "limit": "requests"}
        before = REGISTRY.get_sample_value("t2_rate_limited_total", labels) or 0.0
        refused = await complete(c, AUTH)
        assert refused.status_code == 429
        assert REGISTRY.get_sample_value("t2_rate_limited_total", labels) == before + 1
        error = refused.json()["error"]
        assert (error["type"], error["code"], error["param"]) == (
            "requests",
            "rate_limit_exceeded",
            "rate_limits.rpm",
        )
        assert "requests per min (RPM) of tenant 'acme': Limit 3, Used 3" in error["message"]
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        assert refused.headers["x-ratelimit-limit-requests"] == "3"
        # the official client sees OpenAI's rate-limit error
        asgi = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=c.app))  # type: ignore[attr-defined]
        async with openai.AsyncOpenAI(
            api_key=TENANT_KEY, base_url="http://t2.test/v1", http_client=asgi, max_retries=0
        ) as client:
            with pytest.raises(openai.RateLimitError) as caught:
                await client.chat.completions.create(**ask())
        assert caught.value.code == "rate_limit_exceeded"
        assert caught.value.response.headers["x-ratelimit-limit-requests"] == "3"


async def test_tpm_shrinks_then_refuses_and_is_trued_up_to_the_tokens_used(
    replica: Replica,
) -> None:
    async with replica(rate_limits={"tpm": 1000}) as c:
        first = await complete(c, AUTH, max_tokens=600)  # two samples' worst case > 1000
        assert first.status_code == 200, first.text
        assert first.json()["t2"]["samples"] == 1
        used = billed(first.json())
        assert first.json()["t2"]["cost"] == used  # no prices: cost counts tokens, as unmetered
        assert first.headers["x-ratelimit-limit-tokens"] == "1000"
        assert "x-ratelimit-limit-requests" not in first.headers  # no rpm configured
        second = await complete(c, AUTH, max_tokens=300)
        assert second.status_code == 200
        used += billed(second.json())
        third = await complete(c, AUTH, max_tokens=1)  # settled at what was used, not held
        assert int(third.headers["x-ratelimit-remaining-tokens"]) == 1000 - used - (
            billed(third.json())
        )
        too_big = await complete(c, AUTH, max_tokens=2000)
        assert too_big.status_code == 429
        error = too_big.json()["error"]
        assert (error["type"], error["code"], error["param"]) == (
            "tokens",
            "rate_limit_exceeded",
            "rate_limits.tpm",
        )
        assert "tokens per min (TPM) of tenant 'acme': Limit 1000" in error["message"]
        assert "Retry-After" in too_big.headers
        report = (await c.get("/admin/tenants/acme", headers=ADMIN)).json()
        assert report["rate_limits"]["tpm"] == 1000
        assert report["rate_limits"]["tokens_last_minute"] == pytest.approx(
            1000 - int(third.headers["x-ratelimit-remaining-tokens"])
        )
        assert all(w["unit"] != "tokens" for w in report["windows"])


async def test_key_limits_from_the_file_and_the_api(replica: Replica) -> None:
    async with replica(rate_limits={"rpm": 100}) as c:
        limited = {"Authorization": f"Bearer {FILE_KEY}"}
        assert (await complete(c, limited)).status_code == 200
        refused = await complete(c, limited)
        assert refused.status_code == 429
        error = refused.json()["error"]
        assert error["param"] == "key.rate_limits.rpm"
        assert re.search(r"of key file:[0-9a-f]{12}: Limit 1, Used 1", error["message"])
        assert (await complete(c, AUTH)).status_code == 200  # the tenant's other keys go on

        made = await c.post(
            "/admin/tenants/acme/keys",
            json={"label": "batch", "rate_limits": {"rpm": 1}},
            headers=ADMIN,
        )
        assert made.status_code == 201 and made.json()["rate_limits"] == {"rpm": 1}
        key = {"Authorization": f"Bearer {made.json()['key']}"}
        prefix = made.json()["prefix"]
        assert (await complete(c, key)).status_code == 200
        again = await complete(c, key)
        assert again.status_code == 429 and prefix in again.json()["error"]["message"]
        raised = await c.put(
            f"/admin/tenants/acme/keys/{prefix}/rate_limits", json={"rpm": 2}, headers=ADMIN
        )
        assert raised.status_code == 200 and raised.json()["rate_limits"] == {"rpm": 2}
        ok = await complete(c, key)
        assert ok.status_code == 200 and ok.headers["x-ratelimit-remaining-requests"] == "0"
        rotated = await c.post(
            f"/admin/tenants/acme/keys/{prefix}/rotate", json={"grace_s": 60}, headers=ADMIN
        )
        assert rotated.json()["rate_limits"] == {"rpm": 2}  # the successor keeps its limits
        missing = await c.put(
            "/admin/tenants/acme/keys/t2-nope/rate_limits", json={"rpm": 2}, headers=ADMIN
        )
        assert missing.status_code == 404 and missing.json()["error"]["param"] == "prefix"


async def test_admin_rate_limits_user_budgets_and_thresholds_last(
    replica: Replica, config_file: Path
) -> None:
    async with replica() as c:
        for body, param in (({"rpm": -1}, "rpm"), ({"tpm": 1.5}, "tpm"), ({"rpx": 1}, "rpx")):
            bad = await c.put("/admin/tenants/acme/rate_limits", json=body, headers=ADMIN)
            assert bad.status_code == 400 and bad.json()["error"]["param"] == param, bad.text
        assert (
            await c.put("/admin/tenants/nope/rate_limits", json={"rpm": 1}, headers=ADMIN)
        ).status_code == 404
        assert (
            await c.put("/admin/tenants/acme/rate_limits", json={"rpm": 1}, headers=AUTH)
        ).status_code == 403
        put = await c.put("/admin/tenants/acme/rate_limits", json={"rpm": 1}, headers=ADMIN)
        assert put.status_code == 200 and put.json()["rate_limits"]["rpm"] == 1
        users = await c.put(
            "/admin/tenants/acme/user_budgets",
            json={"day": {"limit": 5, "unit": "flops"}},
            headers=ADMIN,
        )
        assert users.status_code == 200, users.text
        assert users.json()["user_budgets"]["day"]["limit"] == 5
        bad = await c.put("/admin/tenants/acme/alerts", json={"thresholds": [0]}, headers=ADMIN)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "thresholds.0"
        alerts = await c.put(
            "/admin/tenants/acme/alerts", json={"thresholds": [1.0, 0.5]}, headers=ADMIN
        )
        assert alerts.status_code == 200 and alerts.json()["alert_thresholds"] == [0.5, 1.0]
    async with replica() as c:  # a restart: all three are still in force
        report = (await c.get("/admin/tenants/acme", headers=ADMIN)).json()
        assert report["rate_limits"]["rpm"] == 1
        assert report["user_budgets"]["day"]["limit"] == 5
        assert report["alert_thresholds"] == [0.5, 1.0]
        assert (await complete(c, AUTH)).status_code == 200
        assert (await complete(c, AUTH)).status_code == 429
    # the file changes rpm: the file wins for rpm, the other overrides stand
    async with replica(rate_limits={"rpm": 7}) as c:
        report = (await c.get("/admin/tenants/acme", headers=ADMIN)).json()
        assert report["rate_limits"]["rpm"] == 7
        assert report["user_budgets"]["day"]["limit"] == 5
    async with replica(alerts=None) as c:  # no webhook in the file: thresholds cannot be set
        refused = await c.put(
            "/admin/tenants/acme/alerts", json={"thresholds": [0.5]}, headers=ADMIN
        )
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "alerts"


async def test_key_and_user_request_budgets_apply(replica: Replica) -> None:
    prices = {"models": {"*": {"completion_per_1m": 1e6}}}  # one token costs 1
    async with replica(prices=prices, user_budgets={"request": {"limit": 10}}) as c:
        made = await c.post(
            "/admin/tenants/acme/keys",
            json={"label": "capped", "budgets": {"request": {"limit": 5}}},
            headers=ADMIN,
        )
        key = {"Authorization": f"Bearer {made.json()['key']}"}
        refused = await complete(c, key)  # one sample's worst case is 8 > 5
        assert refused.status_code == 429, refused.text
        error = refused.json()["error"]
        assert (error["code"], error["param"]) == ("insufficient_quota", "key.budgets.request")
        assert made.json()["prefix"] in error["message"]
        shrunk = await complete(c, AUTH, user="alice")  # 2 × 8 > 10: one sample
        assert shrunk.status_code == 200 and shrunk.json()["t2"]["samples"] == 1
        assert (await complete(c, AUTH)).json()["t2"]["samples"] == 2  # no user: no cap


async def test_an_unreachable_admin_store_starts_not_ready_and_recovers(tmp_path: Path) -> None:
    binary = shutil.which("redis-server")
    need(binary is not None, "redis-server")
    assert binary is not None
    port = free_port()  # nothing listens here yet
    data = config_dict(tmp_path / "unused.sqlite")
    data["ledger"] = {"backend": "redis", "redis_url": f"redis://:hunter2@127.0.0.1:{port}/0"}
    config = parse_config(data)
    app = create_app(config, engine=ScriptedEngine(cycle("A: 6")))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t2.test") as c:
            assert (await c.get("/healthz")).status_code == 200
            ready = await c.get("/readyz")
            assert ready.status_code == 503
            detail = ready.json()["detail"]
            assert "admin store unreachable" in detail and str(port) in detail
            assert "hunter2" not in detail  # the URL's password never shows
            refused = await complete(c, AUTH)
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "admin_store_unavailable"
            assert "Retry-After" in refused.headers
            keys = await c.get("/admin/tenants/acme/keys", headers=ADMIN)
            assert keys.status_code == 503
            assert keys.json()["error"]["code"] == "admin_store_unavailable"
            redis = subprocess.Popen(
                [binary, "--port", str(port), "--save", "", "--requirepass", "hunter2"],
                cwd=tmp_path,
                stdout=subprocess.DEVNULL,
            )
            try:
                deadline = time.monotonic() + 20
                while (await c.get("/readyz")).status_code != 200:
                    assert time.monotonic() < deadline, (await c.get("/readyz")).text
                    await asyncio.sleep(0.2)
                assert (await complete(c, AUTH)).status_code == 200
            finally:
                redis.terminate()
                redis.wait(10)


def test_rate_limits_in_the_file_are_checked_at_load(tmp_path: Path) -> None:
    data = config_dict(tmp_path / "l.sqlite")
    data["tenants"][0]["rate_limits"] = {"rpm": 0}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match=r"tenants\.0\.rate_limits\.rpm"):
        load_config(path)
    data["tenants"][0]["rate_limits"] = {"rpm": 1}
    data["tenants"][0]["api_keys"][1]["rate_limits"] = {"tpm": -5}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match=r"tenants\.0\.api_keys\.1\.rate_limits\.tpm"):
        load_config(path)
