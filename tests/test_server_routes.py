"""Several models and T² routes, live: the app starts both shipped grid models on their own
in-process engines (one after another, the first serving while the second starts), lists and
reports them per model, routes `auto` by λ, cascades with each wave billed to the model that
drew it, counts routed answers by model, and refuses what a tenant may not use.

This module starts its own two engines (the session engine is tiny-arith, not these models).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from models import chain
from server.app import RunningServer, create_app, serve_in_loop
from server.config import AppConfig, hash_key, parse_config
from tests.fixtures.engine import engine_available
from tests.support import need

pytestmark = pytest.mark.engine

SMALL, LARGE = "tiny-chain-31k", "tiny-chain-252k"
N = {SMALL: 30_880.0, LARGE: 252_384.0}
KEY, NARROW_KEY, FLOPS_KEY = "route-key", "narrow-key", "flops-key"
KV = 2**25  # 32 MiB of KV cache for the small model, twice that for the large one
START_TIMEOUT_S = 900  # two engine starts on a loaded 2-core box


def routes_config(tmp_path: Path) -> AppConfig:
    return parse_config(
        {
            "models": [
                {
                    "id": SMALL,
                    "path": f"models/{SMALL}",
                    "engine": {"kv_cache_memory_bytes": 2**25},
                },
                {
                    "id": LARGE,
                    "path": f"models/{LARGE}",
                    "engine": {"kv_cache_memory_bytes": 2**26},
                },
                {"id": "auto", "route": [SMALL, LARGE]},
                {"id": "cascade", "route": [SMALL, LARGE], "start": "cheapest"},
            ],
            "engine": {"max_num_seqs": 64, "max_model_len": 128, "seed": 0},
            "ledger": {"backend": "sqlite", "path": str(tmp_path / "ledger.sqlite")},
            "defaults": {"max_samples": 16, "max_tokens": 40},
            "tenants": [
                {"id": "all", "api_keys": [{"sha256": hash_key(KEY)}], "models": ["*"]},
                {  # may ask for the route but not for the large model it routes to
                    "id": "narrow",
                    "api_keys": [{"sha256": hash_key(NARROW_KEY)}],
                    "models": [SMALL, "auto"],
                },
                {  # billed in FLOPs (2·N per token), a day's budget far from binding
                    "id": "flops",
                    "api_keys": [{"sha256": hash_key(FLOPS_KEY)}],
                    "budgets": {"day": {"limit": 1e15, "unit": "flops"}},
                },
            ],
        },
        "routes test",
    )


@pytest.fixture(scope="module")
async def served(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[dict[str, Any]]:
    """The app with no engine given: its lifespan starts both models' engines. Records what
    was seen while the second engine was still starting."""
    need(engine_available(), "the shipped models and vllm")
    cfg = routes_config(tmp_path_factory.mktemp("routes"))
    app = create_app(cfg)
    seen: dict[str, Any] = {"cfg": cfg, "app": app}
    async with serve_in_loop(app) as server, httpx.AsyncClient(timeout=120) as http:
        seen["server"] = server
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            ready = (await http.get(f"{server.base_url}/readyz")).json()
            models = ready["models"]
            if models[SMALL] == "ready" and models[LARGE] == "starting" and "partial" not in seen:
                seen["partial"] = ready
                seen["small_while_starting"] = await ask(http, server, SMALL, KEY, (1, 2, 1, 3))
                seen["large_while_starting"] = await ask(http, server, LARGE, KEY, (1, 2, 1, 3))
                seen["auto_while_starting"] = await ask(http, server, "auto", KEY, (1, 2, 1, 3))
            if ready["status"] == "ready":
                seen["ready"] = ready
                break
            assert "failed" not in models.values(), ready
            await asyncio.sleep(0.5)
        assert "ready" in seen, "the engines did not start in time"
        seen["http"] = http
        yield seen
    await app.state.t2.billing.close()


async def ask(
    http: httpx.AsyncClient,
    server: RunningServer,
    model: str,
    key: str,
    q: chain.Question,
    **t2: Any,
) -> httpx.Response:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": chain.question_text(q)}],
        "max_tokens": 40,
    }
    if t2:
        body["t2"] = t2
    return await http.post(
        f"{server.v1}/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
    )


async def test_a_starting_model_gets_503_while_the_other_serves(served: dict[str, Any]) -> None:
    need(
        "partial" in served,
        "a /readyz poll while the first engine served and the second was starting",
    )
    assert served["partial"]["status"] == "not ready"
    assert served["small_while_starting"].status_code == 200
    for name in ("large_while_starting", "auto_while_starting"):
        resp = served[name]
        assert resp.status_code == 503 and resp.headers["retry-after"] == "5"
        assert resp.json()["error"]["code"] == "engine_not_ready"


async def test_models_and_readiness_per_model(served: dict[str, Any]) -> None:
    assert served["ready"]["models"] == {
        SMALL: "ready",
        LARGE: "ready",
        "auto": "ready",
        "cascade": "ready",
    }
    http, server = served["http"], served["server"]
    listed = await http.get(f"{server.v1}/models", headers={"Authorization": f"Bearer {KEY}"})
    assert [m["id"] for m in listed.json()["data"]] == [SMALL, LARGE, "auto", "cascade"]
    narrow = await http.get(
        f"{server.v1}/models", headers={"Authorization": f"Bearer {NARROW_KEY}"}
    )
    assert [m["id"] for m in narrow.json()["data"]] == [SMALL, "auto"]
    card = await http.get(f"{server.v1}/models/auto", headers={"Authorization": f"Bearer {KEY}"})
    assert card.status_code == 200 and card.json()["id"] == "auto"


async def test_each_model_answers_from_its_own_engine(served: dict[str, Any]) -> None:
    http, server = served["http"], served["server"]
    q = (3, 4, 2, 5)
    for model in (SMALL, LARGE):
        resp = await ask(http, server, model, KEY, q, policy="fixed:4")
        assert resp.status_code == 200, resp.text
        assert resp.json()["t2"]["samples"] == 4 and "route" not in resp.json()["t2"]


async def test_lambda_moves_the_route_between_models(served: dict[str, Any]) -> None:
    http, server = served["http"], served["server"]
    q = (5, 3, 2, 6)
    cheap = (await ask(http, server, "auto", KEY, q, policy="t2:lam=1")).json()["t2"]
    dear = (await ask(http, server, "auto", KEY, q, policy="t2:lam=0.0001")).json()["t2"]
    assert cheap["route"]["model"] == SMALL and cheap["samples"] == 1
    assert dear["route"]["model"] == LARGE and dear["samples"] >= 2
    for t2 in (cheap, dear):
        route = t2["route"]
        assert route["route"] == "auto" and route["cost_unit"] == "flops"
        assert [c["model"] for c in route["candidates"]] == [SMALL, LARGE]
        for c in route["candidates"]:
            assert 0 < c["predicted_accuracy"] < 1 and c["predicted_cost"] > 0
    assert dear["route"]["price_of_compute"] < cheap["route"]["price_of_compute"]
    best = max(dear["route"]["candidates"], key=lambda c: c["predicted_accuracy"])
    assert best["model"] == LARGE


def _routed(model: str, escalated: str) -> float:
    value = REGISTRY.get_sample_value(
        "t2_routed_requests_total", {"route": "cascade", "model": model, "escalated": escalated}
    )
    return value or 0.0


async def test_cascade_bills_each_wave_to_the_model_that_drew_it(served: dict[str, Any]) -> None:
    http, server, app = served["http"], served["server"], served["app"]
    before = {SMALL: _routed(SMALL, "false"), LARGE: _routed(LARGE, "true")}
    t0 = time.time()
    results = []
    for i, q in enumerate(chain.val_questions(12)):
        resp = await ask(http, server, "cascade", FLOPS_KEY, q, policy="t2:lam=0.05")
        assert resp.status_code == 200, resp.text
        results.append((resp.json()["id"], resp.json()["t2"], i))
    escalated = [r for r in results if r[1]["route"]["escalated"]]
    stayed = [r for r in results if not r[1]["route"]["escalated"]]
    assert escalated and stayed, [r[1]["route"]["waves"] for r in results]
    tenant = next(t for t in served["cfg"].tenants if t.id == "flops")
    logs = {
        r.request_id: r
        for r in await app.state.t2.billing.spend_logs([tenant], t0 - 1, time.time() + 1)
    }
    for rid, t2, _ in results:
        route = t2["route"]
        assert route["waves"][0]["model"] == SMALL
        assert route["model"] == route["waves"][-1]["model"]
        record = logs[f"{rid}-0-0"]
        tokens = record.prompt_tokens + record.completion_tokens
        assert record.flops == pytest.approx(t2["cost"])
        if route["escalated"]:  # both models' waves: strictly between all-small and all-large
            assert 2 * N[SMALL] * tokens < record.flops < 2 * N[LARGE] * tokens
            assert route["model"] == LARGE
        else:
            assert record.flops == pytest.approx(2 * N[SMALL] * tokens)
    assert _routed(SMALL, "false") - before[SMALL] == len(stayed)
    assert _routed(LARGE, "true") - before[LARGE] == len(escalated)


async def test_routing_to_a_model_the_tenant_may_not_use_is_403(served: dict[str, Any]) -> None:
    http, server = served["http"], served["server"]
    resp = await ask(http, server, "auto", NARROW_KEY, (1, 1, 1, 1))
    assert resp.status_code == 403
    err = resp.json()["error"]
    assert err["code"] == "model_not_allowed" and LARGE in err["message"]
    assert err["param"] == "model"
    assert (await ask(http, server, "cascade", NARROW_KEY, (1, 1, 1, 1))).status_code == 403


async def test_a_route_refuses_options_it_cannot_honour(served: dict[str, Any]) -> None:
    http, server = served["http"], served["server"]
    resp = await ask(http, server, "auto", KEY, (1, 1, 1, 1), policy="fixed:3")
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "t2.policy"
    resp = await ask(http, server, "auto", KEY, (1, 1, 1, 1), aggregator="unknown")
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "t2.aggregator"


async def test_a_route_honours_every_aggregator_and_names_its_answering_model(
    served: dict[str, Any],
) -> None:
    http, server = served["http"], served["server"]
    for aggregator in ("majority", "logprob", "best_of_n"):
        resp = await ask(http, server, "cascade", KEY, (2, 3, 1, 4), aggregator=aggregator)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        t2 = body["t2"]
        assert body["model"] == t2["route"]["model"] in (SMALL, LARGE)  # as OpenRouter reports
        assert all(":" not in answer for answer in t2["votes"])  # keyed by answer
        if aggregator == "best_of_n":  # no verifier configured: a majority vote, said so
            assert t2["aggregator"] == "majority" and t2["note"]
        else:
            assert t2["aggregator"] == aggregator


async def test_a_cascade_with_any_max_cost_answers_and_never_500s(served: dict[str, Any]) -> None:
    http, server = served["http"], served["server"]
    for max_cost in (1e5, 1e6, 1e7, 1e8):  # FLOPs: from one small sample to several large ones
        resp = await ask(
            http, server, "cascade", FLOPS_KEY, (5, 1, 4, 2), max_cost=max_cost, policy="t2:lam=0"
        )
        assert resp.status_code in (200, 429), resp.text
        if resp.status_code == 200:
            t2 = resp.json()["t2"]
            assert t2["cost"] <= max_cost or t2["samples"] == 1
            assert t2["stop_reason"] in ("max_cost", "max_samples", "marginal_value", "budget")


async def test_json_field_with_a_json_schema_works_on_a_route(served: dict[str, Any]) -> None:
    http, server = served["http"], served["server"]
    body: dict[str, Any] = {
        "model": "auto",
        "messages": [{"role": "user", "content": chain.question_text((2, 2, 1, 1))}],
        "max_tokens": 24,
        "response_format": {
            "type": "json_schema",
            "json_schema": {
                "name": "answer",
                "schema": {
                    "type": "object",
                    "properties": {"answer": {"type": "integer"}},
                    "required": ["answer"],
                },
            },
        },
        "t2": {"json_field": "answer", "max_samples": 4},
    }
    resp = await http.post(
        f"{server.v1}/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}
    )
    assert resp.status_code == 200, resp.text
    # compact JSON: the shipped models close the object within 24 tokens (with free whitespace
    # they pad it with spaces until max_tokens and the vote is over fragments)
    content = resp.json()["choices"][0]["message"]["content"]
    assert isinstance(json.loads(content)["answer"], int), content
    assert resp.json()["t2"]["answer"] is not None
