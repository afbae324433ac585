"""A route's spend log over HTTP (the real app, scripted engines for the shipped chain pair, the
SQLite or Redis ledger): a request that escalates draws waves on both models, and each wave is
booked to the model that drew it (docs/routing.md), in the record's `by_model`, in
`/admin/spend/report?group_by=model` and under `model=` filters; also when a budget stops the
dear wave short and when the client hangs up during it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.app import create_app, serve_in_loop
from server.config import hash_key, parse_config
from tests.fakes import ScriptedEngine, cycle
from tests.fixtures.routes import LARGE, SMALL
from tests.fixtures.server import DEMO_KEY, server_config_dict

ADMIN = {"Authorization": "Bearer route-spend-admin"}
UNSURE = ("A: 1", "A: 2", "A: 3", "A: 4")  # no two agree: the cascade escalates
PER_TOKEN = {SMALL: 1.0, LARGE: 10.0}  # money per token: the large wave is easy to tell apart
ESCALATE = {"t2": {"policy": "t2:lam=0.0001"}}


@pytest.fixture(params=["sqlite", "redis"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    if request.param == "sqlite":
        return {"backend": "sqlite", "path": str(tmp_path / "ledger.sqlite")}
    return {"backend": "redis", "redis_url": request.getfixturevalue("redis_url")}


def route_config(ledger: dict[str, Any], **tenant: Any) -> Any:
    cfg = server_config_dict(keepalive_interval_s=0.02)
    cfg["models"] = [
        {"id": SMALL, "path": f"models/{SMALL}"},
        {"id": LARGE, "path": f"models/{LARGE}"},
        {"id": "cascade", "route": [SMALL, LARGE], "start": "cheapest"},
    ]
    cfg["ledger"] = ledger
    cfg["admin"] = {"key_sha256": hash_key(ADMIN["Authorization"].split()[1])}
    prices = {
        m: {"prompt_per_1m": p * 1e6, "completion_per_1m": p * 1e6} for m, p in PER_TOKEN.items()
    }
    cfg["tenants"][0].update(models=["*"], prices={"currency": "USD", "models": prices}, **tenant)
    return parse_config(cfg)


def pair(large_token_s: float = 0.0) -> dict[str, ScriptedEngine]:
    return {
        SMALL: ScriptedEngine(cycle(*UNSURE)),
        LARGE: ScriptedEngine(cycle("A: 7"), token_s=large_token_s),
    }


@contextlib.asynccontextmanager
async def served(
    cfg: Any, large_token_s: float = 0.0, engines: dict[str, ScriptedEngine] | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    engines = engines if engines is not None else pair(large_token_s)
    async with (
        serve_in_loop(create_app(cfg, engine=engines)) as live,
        httpx.AsyncClient(
            base_url=live.base_url, headers={"Authorization": f"Bearer {DEMO_KEY}"}, timeout=30
        ) as http,
    ):
        yield http


def chat(**extra: Any) -> dict[str, Any]:
    return {
        "model": "cascade",
        "messages": [{"role": "user", "content": "Q: 7+8-9=?"}],
        "max_tokens": 16,
        **ESCALATE,
        **extra,
    }


async def _logs(http: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    r = await http.get("/admin/spend/logs", params=params, headers=ADMIN)
    assert r.status_code == 200, r.text
    return list(r.json()["data"])


async def _report(http: httpx.AsyncClient, **params: Any) -> dict[str, dict[str, Any]]:
    r = await http.get("/admin/spend/report", params=params, headers=ADMIN)
    assert r.status_code == 200, r.text
    return {row[params["group_by"]]: row for row in r.json()["data"]}


def _split_sums_to_the_record(record: dict[str, Any]) -> None:
    parts = record["by_model"].values()
    for figure in ("samples", "waves", "prompt_tokens", "completion_tokens"):
        assert sum(p[figure] for p in parts) == record[figure], figure
    for figure in ("money", "flops"):
        assert sum(p[figure] for p in parts) == pytest.approx(record[figure]), figure


async def test_an_escalated_routes_spend_is_booked_to_each_model_that_drew(
    ledger: dict[str, Any],
) -> None:
    async with served(route_config(ledger)) as http:
        r = await http.post("/v1/chat/completions", json=chat())
        assert r.status_code == 200, r.text
        t2 = r.json()["t2"]
        drew = {w["model"]: w["samples"] for w in t2["route"]["waves"]}
        assert set(drew) == {SMALL, LARGE}  # escalated: one wave on each
        assert t2["route"]["model"] == LARGE

        (record,) = await _logs(http)
        assert record["model"] == LARGE  # the model that answered
        assert {m: p["samples"] for m, p in record["by_model"].items()} == drew
        assert record["money"] == pytest.approx(t2["cost"])
        large = record["by_model"][LARGE]
        assert large["money"] == pytest.approx(
            PER_TOKEN[LARGE] * (large["prompt_tokens"] + large["completion_tokens"])
        )
        _split_sums_to_the_record(record)

        rows = await _report(http, group_by="model")
        assert set(rows) == {SMALL, LARGE}
        for model, part in record["by_model"].items():
            assert rows[model]["money"] == pytest.approx(part["money"])
            assert rows[model]["samples"] == part["samples"]
            assert rows[model]["requests"] == 1  # the request counts in each model's row
        # a model filter selects the request and only that model's share of it
        assert [x["request_id"] for x in await _logs(http, model=LARGE)] == [record["request_id"]]
        (day,) = (await _report(http, group_by="day", model=SMALL)).values()
        assert day["money"] == pytest.approx(record["by_model"][SMALL]["money"])
        (day,) = (await _report(http, group_by="day")).values()
        assert day["money"] == pytest.approx(record["money"])


async def test_a_budget_stop_books_the_shrunk_dear_wave_to_its_model(
    ledger: dict[str, Any],
) -> None:
    # the day's budget leaves the large model room for a few samples only
    cfg = route_config(ledger, budgets={"day": {"limit": 1000.0, "hard": True}})
    async with served(cfg) as http:
        r = await http.post("/v1/chat/completions", json=chat())
        t2 = r.json()["t2"]
        assert t2["stop_reason"] == "budget"
        drew = {w["model"]: w["samples"] for w in t2["route"]["waves"]}
        assert set(drew) == {SMALL, LARGE}

        (record,) = await _logs(http)
        assert record["stop_reason"] == "budget" and record["model"] == LARGE
        assert {m: p["samples"] for m, p in record["by_model"].items()} == drew
        _split_sums_to_the_record(record)
        rows = await _report(http, group_by="model")
        assert record["by_model"][LARGE]["money"] > 0
        assert rows[LARGE]["money"] == pytest.approx(record["by_model"][LARGE]["money"])


async def test_a_hang_up_during_the_dear_wave_books_it_to_its_model(
    ledger: dict[str, Any],
) -> None:
    engines = pair(large_token_s=0.05)
    async with served(route_config(ledger), engines=engines) as http:
        async with http.stream("POST", "/v1/chat/completions", json=chat(stream=True)) as resp:
            async for _ in resp.aiter_lines():  # keep-alives every 20 ms while waves run
                if engines[LARGE].calls:  # the dear wave is running: hang up
                    break
        for _ in range(100):  # the cut request settles what ran and notes how it ended
            records = await _logs(http)
            if records and records[0]["status"] is not None:
                break
            await asyncio.sleep(0.05)
        (record,) = records
        assert record["status"] == 499
        assert set(record["by_model"]) == {SMALL, LARGE}
        assert record["model"] == LARGE
        assert record["by_model"][LARGE]["money"] > 0
        _split_sums_to_the_record(record)
        rows = await _report(http, group_by="model")
        assert rows[LARGE]["money"] == pytest.approx(record["by_model"][LARGE]["money"])
