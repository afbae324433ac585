"""Every bad input gets an OpenAI-style error body with the right status, never a 500.

Most cases are decided before the engine is touched, so they run against an app whose engine
never started (no lifespan): that is also how the 503 "engine not ready" case is produced.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio

from server.app import create_app
from server.billing import Billing, UnmeteredBilling, UnmeteredProvider, WaveHold
from server.config import AppConfig, TenantConfig, parse_config
from server.errors import InsufficientQuota
from tests.fixtures.server import (
    CAPPED_KEY,
    DEMO_KEY,
    MODEL,
    NO_MODELS_KEY,
    LiveServer,
    OpenClient,
    serve_in_loop,
    server_config_dict,
)

AUTH = {"Authorization": f"Bearer {DEMO_KEY}"}
MESSAGES: list[Any] = [{"role": "user", "content": "Q: 1+2-3=?"}]
CHAT: dict[str, Any] = {"model": MODEL, "messages": MESSAGES}


@pytest_asyncio.fixture
async def unready(server_config: AppConfig) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(server_config)  # no engine, lifespan not run: never ready
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        yield http


def assert_error(resp: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param is not None:
        assert err["param"] == param, err
    assert "Traceback" not in resp.text
    return dict(err)


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": MODEL}, 400, "messages"),
        ({**CHAT, "messages": []}, 400, "messages"),
        ({**CHAT, "messages": "hi"}, 400, "messages"),
        ({**CHAT, "temperature": -0.5}, 400, "temperature"),
        ({**CHAT, "max_tokens": 0}, 400, "max_tokens"),
        ({**CHAT, "max_tokens": -3}, 400, "max_tokens"),
        ({**CHAT, "max_tokens": "ten"}, 400, "max_tokens"),
        ({**CHAT, "n": 0}, 400, "n"),
        ({**CHAT, "top_p": 0}, 400, "top_p"),
        ({**CHAT, "t2": {"max_samples": 0}}, 400, "t2.max_samples"),
        ({**CHAT, "t2": {"polcy": "t2"}}, 400, "t2.polcy"),
        ({**CHAT, "messages": [{"role": "wizard", "content": "x"}]}, 400, None),
        ({"messages": CHAT["messages"]}, 400, "model"),
    ],
)
async def test_invalid_bodies_are_400(
    unready: httpx.AsyncClient, body: dict[str, Any], status: int, param: str | None
) -> None:
    assert_error(await unready.post("/v1/chat/completions", json=body, headers=AUTH), status, param)


async def test_malformed_json_and_wrong_content(unready: httpx.AsyncClient) -> None:
    resp = await unready.post(
        "/v1/chat/completions",
        content=b"{not json",
        headers={**AUTH, "content-type": "application/json"},
    )
    assert assert_error(resp, 400)["code"] == "invalid_json"
    resp = await unready.post(
        "/v1/completions", content=b"[1, 2]", headers={**AUTH, "content-type": "application/json"}
    )
    assert_error(resp, 400)
    assert_error(
        await unready.post("/v1/completions", json={"model": MODEL}, headers=AUTH), 400, "prompt"
    )


async def test_auth_errors_are_401(unready: httpx.AsyncClient) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}):
        err = assert_error(
            await unready.post("/v1/chat/completions", json=CHAT, headers=headers), 401
        )
        assert err["type"] == "authentication_error"
    assert_error(await unready.get("/v1/models"), 401)


async def test_unknown_model_404_forbidden_model_403_unready_503(
    unready: httpx.AsyncClient,
) -> None:
    err = assert_error(
        await unready.post("/v1/chat/completions", json={**CHAT, "model": "gpt-9"}, headers=AUTH),
        404,
        "model",
    )
    assert err["code"] == "model_not_found"
    forbidden = {"Authorization": f"Bearer {NO_MODELS_KEY}"}
    err = assert_error(
        await unready.post("/v1/chat/completions", json=CHAT, headers=forbidden), 403, "model"
    )
    assert err["type"] == "permission_error"
    resp = await unready.post("/v1/chat/completions", json=CHAT, headers=AUTH)
    assert assert_error(resp, 503)["code"] == "engine_not_ready" and "retry-after" in resp.headers
    ready = await unready.get("/readyz")
    assert ready.status_code == 503
    assert (await unready.get("/healthz")).status_code == 200


async def test_a_404_quotes_at_most_the_start_of_an_overlong_model_name(
    unready: httpx.AsyncClient,
) -> None:
    """An unknown model's name comes back cut to 64 characters and an ellipsis, as the admin
    API's ids do (server.errors.echoed): a body's `model` is at most 256 characters, but a
    path's (GET /v1/models/{id}) was echoed whole, 10 kB of it."""
    named = {**CHAT, "model": "m" * 256}
    for resp in (
        await unready.post("/v1/chat/completions", json=named, headers=AUTH),
        await unready.get(f"/v1/models/{'m' * 10_000}", headers=AUTH),
    ):
        err = assert_error(resp, 404, "model")
        assert err["message"] == f"The model '{'m' * 64}…' does not exist."
        assert len(resp.content) < 600


async def test_unknown_routes_and_methods(unready: httpx.AsyncClient) -> None:
    assert_error(await unready.get("/v1/nothing"), 404)
    assert_error(await unready.get("/v1/chat/completions", headers=AUTH), 405)


# --- cases that need the engine -----------------------------------------------------------

pytest_engine = pytest.mark.engine


@pytest_engine
async def test_prompt_over_context_is_400(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.v1, headers=AUTH, timeout=60) as http:
        long_prompt = "1 + " * 5000
        resp = await http.post("/completions", json={"model": MODEL, "prompt": long_prompt})
        assert assert_error(resp, 400, "prompt")["code"] == "context_length_exceeded"
        resp = await http.post(
            "/completions", json={"model": MODEL, "prompt": "Q: 1+2-3=?", "max_tokens": 10**6}
        )
        assert assert_error(resp, 400, "max_tokens")["code"] == "context_length_exceeded"


@pytest_engine
async def test_bad_controller_options_and_caps(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.v1, headers=AUTH, timeout=60) as http:
        for field, value in (
            ("policy", "nonsense:3"),
            ("aggregator", "coinflip"),
            ("extractor", "tarot"),
        ):
            resp = await http.post("/chat/completions", json={**CHAT, "t2": {field: value}})
            assert_error(resp, 400, f"t2.{field}")
    capped = {"Authorization": f"Bearer {CAPPED_KEY}"}
    async with httpx.AsyncClient(base_url=live_server.v1, headers=capped, timeout=60) as http:
        resp = await http.post("/chat/completions", json={**CHAT, "t2": {"max_samples": 5}})
        assert assert_error(resp, 403, "t2.max_samples")["code"] == "cap_exceeded"
        ok = await http.post(
            "/chat/completions", json={**CHAT, "max_tokens": 4, "t2": {"max_samples": 3}}
        )
        assert ok.status_code == 200 and ok.json()["t2"]["samples"] <= 3


class _Refuse(UnmeteredProvider):
    """A billing provider whose ledger has nothing left: the 429 path of the seam."""

    def for_request(self, tenant: TenantConfig, model: str, request_id: str) -> Billing:
        class _Empty(UnmeteredBilling):
            async def reserve(self, hold: WaveHold) -> WaveHold:
                raise InsufficientQuota("Daily budget exhausted.", retry_after_s=42.2, window="day")

        return _Empty()


@pytest_engine
async def test_quota_429_and_upstream_timeout_504(engine: Any, openai_client: OpenClient) -> None:
    config = parse_config(server_config_dict(request_timeout_s=0.001), "test")
    async with (
        serve_in_loop(create_app(config, engine=engine)) as slow,
        httpx.AsyncClient(base_url=slow.v1, headers=AUTH, timeout=60) as http,
    ):
        resp = await http.post("/chat/completions", json={**CHAT, "max_tokens": 16})
        assert assert_error(resp, 504)["type"] == "timeout"
    async with serve_in_loop(
        create_app(parse_config(server_config_dict()), engine=engine, billing=_Refuse())
    ) as broke:
        async with httpx.AsyncClient(base_url=broke.v1, headers=AUTH, timeout=60) as http:
            for stream in (False, True):
                resp = await http.post("/chat/completions", json={**CHAT, "stream": stream})
                err = assert_error(resp, 429)
                assert err["type"] == "insufficient_quota" and resp.headers["retry-after"] == "43"
        api = openai_client(broke.v1)
        with pytest.raises(openai.RateLimitError):
            await api.chat.completions.create(model=MODEL, messages=MESSAGES)


class _Broken(UnmeteredProvider):
    """A billing backend with a bug: the catch-all must answer a clean 500, no traceback."""

    def for_request(self, tenant: TenantConfig, model: str, request_id: str) -> Billing:
        class _Boom(UnmeteredBilling):
            async def reserve(self, hold: WaveHold) -> WaveHold:
                raise RuntimeError("ledger bug: secret internal detail")

        return _Boom()


@pytest_engine
async def test_unexpected_failure_is_a_clean_error(engine: Any) -> None:
    app = create_app(parse_config(server_config_dict()), engine=engine, billing=_Broken())
    async with (
        serve_in_loop(app) as broken,
        httpx.AsyncClient(base_url=broken.v1, headers=AUTH, timeout=60) as http,
    ):
        resp = await http.post("/chat/completions", json=CHAT)
        err = assert_error(resp, 500)
        assert err["type"] == "server_error" and "secret" not in resp.text
