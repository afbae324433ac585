"""Several models and T² routes, live: the app starts both shipped grid models on their own
in-process engines (one after another, the first serving while the second starts), lists and
reports them per model, routes `auto` by λ, cascades with each wave billed to the model that
drew it, counts routed answers by model, and refuses what a tenant may not use.

The app is tests/fixtures/chain_pair.py's, shared with the README and reward-model tests.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from prometheus_client import REGISTRY

from models import chain
from tests.fixtures.chain_pair import FLOPS_KEY, KEY, NARROW_KEY, RM, ChainPair, ask
from tests.fixtures.routes import LARGE, SMALL
from tests.support import need

pytestmark = pytest.mark.engine

N = {SMALL: 30_880.0, LARGE: 252_384.0}


async def test_a_starting_model_gets_503_while_the_other_serves(chain_pair: ChainPair) -> None:
    seen = chain_pair.seen_while_starting
    need(bool(seen), "a /readyz poll while the first engine served and the second was starting")
    assert seen["readyz"]["status"] == "not ready"
    assert seen[SMALL].status_code == 200
    for name in (LARGE, "auto"):
        resp = seen[name]
        assert resp.status_code == 503 and resp.headers["retry-after"] == "5"
        assert resp.json()["error"]["code"] == "engine_not_ready"


async def test_models_and_readiness_per_model(chain_pair: ChainPair) -> None:
    assert chain_pair.ready["models"] == {
        SMALL: "ready",
        LARGE: "ready",
        "auto": "ready",
        "cascade": "ready",
        RM: "ready",
    }
    http, server = chain_pair.http, chain_pair.server
    listed = await http.get(f"{server.v1}/models", headers={"Authorization": f"Bearer {KEY}"})
    assert [m["id"] for m in listed.json()["data"]] == [SMALL, LARGE, "auto", "cascade"]
    narrow = await http.get(
        f"{server.v1}/models", headers={"Authorization": f"Bearer {NARROW_KEY}"}
    )
    assert [m["id"] for m in narrow.json()["data"]] == [SMALL, "auto"]
    card = await http.get(f"{server.v1}/models/auto", headers={"Authorization": f"Bearer {KEY}"})
    assert card.status_code == 200 and card.json()["id"] == "auto"


async def test_each_model_answers_from_its_own_engine(chain_pair: ChainPair) -> None:
    http, server = chain_pair.http, chain_pair.server
    q = (3, 4, 2, 5)
    for model in (SMALL, LARGE):
        resp = await ask(http, server, model, KEY, q, policy="fixed:4")
        assert resp.status_code == 200, resp.text
        assert resp.json()["t2"]["samples"] == 4 and "route" not in resp.json()["t2"]


async def test_lambda_moves_the_route_between_models(chain_pair: ChainPair) -> None:
    http, server = chain_pair.http, chain_pair.server
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


async def test_cascade_bills_each_wave_to_the_model_that_drew_it(chain_pair: ChainPair) -> None:
    http, server, app = chain_pair.http, chain_pair.server, chain_pair.app
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
    tenant = next(t for t in chain_pair.cfg.tenants if t.id == "flops")
    logs = {
        r.request_id: r
        for r in await app.state.t2.billing.spend_logs([tenant.id], t0 - 1, time.time() + 1)
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


async def test_a_tenant_allowed_a_route_draws_from_its_models_but_not_by_name(
    chain_pair: ChainPair,
) -> None:
    """`models: [small, auto]` offers the route, whose waves may run on the large model, but
    not the large model asked for by name, nor a route it does not list."""
    http, server = chain_pair.http, chain_pair.server
    resp = await ask(http, server, "auto", NARROW_KEY, (1, 1, 1, 1), policy="t2:lam=0")
    assert resp.status_code == 200, resp.text
    assert LARGE in {w["model"] for w in resp.json()["t2"]["route"]["waves"]}
    for model in (LARGE, "cascade"):
        resp = await ask(http, server, model, NARROW_KEY, (1, 1, 1, 1))
        assert resp.status_code == 403
        err = resp.json()["error"]
        assert err["code"] == "model_not_allowed" and f"'{model}'" in err["message"]
        assert err["param"] == "model"


async def test_a_route_refuses_options_it_cannot_honour(chain_pair: ChainPair) -> None:
    http, server = chain_pair.http, chain_pair.server
    resp = await ask(http, server, "auto", KEY, (1, 1, 1, 1), policy="fixed:3")
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "t2.policy"
    resp = await ask(http, server, "auto", KEY, (1, 1, 1, 1), aggregator="unknown")
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "t2.aggregator"
    # the router picks its own waves: a t2 option other than λ would be ignored, so it is named
    resp = await ask(http, server, "auto", KEY, (1, 1, 1, 1), policy="t2:lam=0.02,first_wave=2")
    err = resp.json()["error"]
    assert resp.status_code == 400 and err["param"] == "t2.policy"
    assert "first_wave" in err["message"]
    resp = await ask(http, server, "auto", KEY, (1, 1, 1, 1), policy="t2:0.02")
    assert resp.status_code == 200, resp.text  # λ alone is what a route takes


async def test_a_route_honours_every_aggregator_and_names_its_answering_model(
    chain_pair: ChainPair,
) -> None:
    http, server = chain_pair.http, chain_pair.server
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


async def test_a_cascade_with_any_max_cost_answers_and_never_500s(chain_pair: ChainPair) -> None:
    http, server = chain_pair.http, chain_pair.server
    for max_cost in (1e5, 1e6, 1e7, 1e8):  # FLOPs: from one small sample to several large ones
        resp = await ask(
            http, server, "cascade", FLOPS_KEY, (5, 1, 4, 2), max_cost=max_cost, policy="t2:lam=0"
        )
        assert resp.status_code in (200, 429), resp.text
        if resp.status_code == 200:
            t2 = resp.json()["t2"]
            assert t2["cost"] <= max_cost or t2["samples"] == 1
            assert t2["stop_reason"] in ("max_cost", "max_samples", "marginal_value", "budget")


async def test_json_field_with_a_json_schema_works_on_a_route(chain_pair: ChainPair) -> None:
    http, server = chain_pair.http, chain_pair.server
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
