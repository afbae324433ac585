"""Spend logs on the real app over HTTP (uvicorn, a scripted engine, the SQLite or Redis ledger):
one record per request, written by the settle that charges it, so after a load run with client
disconnects the records sum exactly to the ledger's settled spend; filters, cursor paging, the
report (JSON and CSV), the caller's key prefix and `user`, and retention."""

from __future__ import annotations

import asyncio
import csv
import io
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.app import RunningServer, create_app, serve_in_loop
from server.config import hash_key, parse_config
from tests.fakes import ScriptedEngine, cycle

ADMIN_KEY = "spend-admin"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
ACME_KEY = "spend-acme"
# money = completion tokens + prompt tokens / 1000: both parts visible in the sum
PRICES = {"models": {"*": {"prompt_per_1m": 1000.0, "completion_per_1m": 1e6}}}
REQUESTS = 24
FIGURES = ["requests", "samples", "waves", "prompt_tokens", "completion_tokens", "money", "flops"]


@pytest.fixture(params=["sqlite", "redis"])
async def live(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RunningServer]:
    if request.param == "sqlite":
        ledger: dict[str, Any] = {"backend": "sqlite", "path": str(tmp_path / "ledger.sqlite")}
    else:
        ledger = {"backend": "redis", "redis_url": request.getfixturevalue("redis_url")}
    config = parse_config(
        {
            "models": [{"id": "m", "path": "models/tiny-arith"}],
            "ledger": ledger,
            "admin": {"key_sha256": hash_key(ADMIN_KEY)},
            "server": {"keepalive_interval_s": 0.05},
            "defaults": {"policy": "fixed:3", "max_tokens": 40},
            "tenants": [
                {
                    "id": "acme",
                    "api_keys": [{"sha256": hash_key(ACME_KEY)}],
                    "prices": PRICES,
                    "budgets": {"day": {"limit": 1e9}},
                },
                {
                    "id": "other",
                    "api_keys": [{"sha256": hash_key("spend-other")}],
                    "prices": PRICES,
                },
            ],
        }
    )
    engine = ScriptedEngine(cycle("7+8=15;15-9=6;A: 6", "A: 5", "7+8=15;A: 6"), token_s=0.01)
    async with serve_in_loop(create_app(config, engine=engine)) as server:
        yield server


def body(i: int, **extra: Any) -> dict[str, Any]:
    return {
        "model": "m",
        "messages": [{"role": "user", "content": f"Q: {i}+1=?"}],
        "user": f"user-{i % 3}",
        "t2": {"policy": "fixed:3"},
        **extra,
    }


async def _ledger_spent(live: RunningServer, tenant: str) -> float:
    state = live.app.state.t2
    t = next(t for t in state.config.tenants if t.id == tenant)
    usage = await state.billing.ledger.usage(t.id, t.budgets)
    day = next(u for u in usage if u.name == "day")
    return float(day.spent.money)


async def _all_logs(http: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = await http.get(
            "/admin/spend/logs",
            params={**params, **({"cursor": cursor} if cursor else {})},
            headers=ADMIN,
        )
        assert page.status_code == 200, page.text
        out += page.json()["data"]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            return out


async def test_records_sum_to_settled_spend_after_a_run_with_disconnects(
    live: RunningServer,
) -> None:
    auth = {"Authorization": f"Bearer {ACME_KEY}"}
    async with httpx.AsyncClient(base_url=live.base_url, timeout=30) as http:
        made = await http.post("/admin/tenants/acme/keys", json={"label": "k"}, headers=ADMIN)
        key_auth = {"Authorization": f"Bearer {made.json()['key']}"}
        prefix = made.json()["prefix"]

        async def one(i: int) -> int | None:
            headers = key_auth if i % 2 else auth
            if i % 4 == 3:  # hang up mid-wave (at the first keep-alive): billed for what ran
                async with http.stream(
                    "POST", "/v1/chat/completions", json=body(i, stream=True), headers=headers
                ) as resp:
                    async for line in resp.aiter_lines():
                        if "t2_progress" in line:  # a keep-alive: the waves are running
                            break
                return None
            r = await http.post("/v1/chat/completions", json=body(i), headers=headers)
            assert r.status_code == 200, r.text
            return int(r.json()["usage"]["completion_tokens"])

        done = await asyncio.gather(*(one(i) for i in range(REQUESTS)))
        await asyncio.sleep(1.0)  # the hung-up requests finish settling
        records = await _all_logs(http, tenant="acme", limit=5)
        spent = await _ledger_spent(live, "acme")

        assert len(records) == len({r["request_id"] for r in records})  # one per request
        assert len(records) == REQUESTS
        money = sum(r["money"] for r in records)
        assert money == pytest.approx(spent, rel=1e-12, abs=1e-12)
        tokens = sum(r["completion_tokens"] + r["prompt_tokens"] / 1000 for r in records)
        assert tokens == pytest.approx(spent, rel=1e-12, abs=1e-12)
        completed = Counter(c for c in done if c is not None)
        finished = Counter(r["completion_tokens"] for r in records if r["status"] == 200)
        # each answered request's usage is its record's (a hang-up may still have finished)
        assert completed <= finished and finished.total() <= completed.total() + 6
        cut = [r for r in records if r["status"] == 499]
        assert cut, [(r["status"], r["stop_reason"], r["completion_tokens"]) for r in records]
        for r in records:
            assert r["tenant"] == "acme" and r["model"] == "m" and r["waves"] >= 1
            # the samples drawn: all 3 when answered, at most those when cut short
            assert r["samples"] == 3 if r["status"] == 200 else r["samples"] <= 3
            assert r["user"] in {"user-0", "user-1", "user-2"}
        assert {r["key_prefix"] for r in records} == {None, prefix}

        # filters
        by_key = await _all_logs(http, tenant="acme", key=prefix)
        assert by_key and all(r["key_prefix"] == prefix for r in by_key)
        # the key list shows the key's spend: its records' sum
        [listed] = (await http.get("/admin/tenants/acme/keys", headers=ADMIN)).json()["data"]
        assert listed["spend"]["money"] == pytest.approx(sum(r["money"] for r in by_key))
        assert 0 < listed["spend"]["money"] < spent
        by_user = await _all_logs(http, user="user-1")
        assert by_user and all(r["user"] == "user-1" for r in by_user)
        assert await _all_logs(http, model="nope") == []
        late = await _all_logs(http, since=records[-1]["time"])
        assert [r["request_id"] for r in late] == [records[-1]["request_id"]]

        # the report: groups sum to the same spend, in JSON and CSV
        for group in ("day", "model", "key", "user"):
            rep = await http.get(
                "/admin/spend/report", params={"group_by": group, "tenant": "acme"}, headers=ADMIN
            )
            assert rep.status_code == 200, rep.text
            assert list(rep.json()) == ["object", "group_by", "data"]
            rows = rep.json()["data"]
            for row in rows:  # its own group's field first, then the figures; no other groups
                assert list(row) == [group, *FIGURES], row
            assert sum(row["money"] for row in rows) == pytest.approx(spent, rel=1e-12)
            assert sum(row["requests"] for row in rows) == len(records)
        users = await http.get(
            "/admin/spend/report",
            params={"group_by": "user", "format": "csv"},
            headers=ADMIN,
        )
        assert users.headers["content-type"].startswith("text/csv")
        table = list(csv.DictReader(io.StringIO(users.text)))
        assert [row["user"] for row in table] == ["user-0", "user-1", "user-2"]
        assert sum(float(row["money"]) for row in table) == pytest.approx(spent, rel=1e-12)


async def test_bad_spend_queries_name_the_field(live: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=live.base_url, timeout=30) as http:

        async def err(path: str, **params: Any) -> tuple[int, Any]:
            r = await http.get(path, params=params, headers=ADMIN)
            return r.status_code, r.json()["error"]["param"]

        assert await err("/admin/spend/logs", limit=5000) == (400, "limit")
        assert await err("/admin/spend/logs", limit=0) == (400, "limit")
        assert await err("/admin/spend/logs", tenant="nobody") == (404, "tenant")
        assert await err("/admin/spend/logs", cursor="%%%") == (400, "cursor")
        assert await err("/admin/spend/report", group_by="week") == (400, "group_by")
        assert await err("/admin/spend/report", format="xml") == (400, "format")
        assert (await err("/admin/spend/logs", since="Infinity"))[0] == 400
        tenant = await http.get(
            "/admin/spend/logs", headers={"Authorization": f"Bearer {ACME_KEY}"}
        )
        assert tenant.status_code == 403


async def test_retention_drops_old_records(live: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=live.base_url, timeout=30) as http:
        auth = {"Authorization": f"Bearer {ACME_KEY}"}
        assert (await http.post("/v1/chat/completions", json=body(1), headers=auth)).is_success
        provider = live.app.state.t2.billing
        assert len(await _all_logs(http)) == 1
        assert await provider.purge_logs(force=True) == 0  # younger than 90 days: kept
        real = provider.clock
        provider.clock = lambda: real() + 91 * 86400
        try:
            assert await provider.purge_logs(force=True) == 1
        finally:
            provider.clock = real
        assert await _all_logs(http) == []


async def test_a_key_budget_on_an_unmetered_tenant_shows_its_spend(tmp_path: Path) -> None:
    # the tenant has no prices and no budgets of its own; its admin-made key has a FLOPs
    # budget, so its requests are billed, and their records must be listed like any other
    config = parse_config({
        "models": [{"id": "m", "path": "models/tiny-arith"}],
        "ledger": {"backend": "sqlite", "path": str(tmp_path / "ledger.sqlite")},
        "admin": {"key_sha256": hash_key(ADMIN_KEY)},
        "tenants": [{"id": "free", "api_keys": [{"sha256": hash_key("free-key")}]}],
    })  # fmt: skip
    engine = ScriptedEngine(cycle("A: 6"))
    async with (
        serve_in_loop(create_app(config, engine=engine)) as live,
        httpx.AsyncClient(base_url=live.base_url, timeout=30) as http,
    ):
        made = await http.post("/admin/tenants/free/keys", headers=ADMIN, json={
            "label": "metered", "budgets": {"day": {"limit": 1e15, "unit": "flops"}}})  # fmt: skip
        assert made.status_code == 201, made.text
        key = {"Authorization": f"Bearer {made.json()['key']}"}
        reply = await http.post("/v1/chat/completions", headers=key, json=body(1))
        assert reply.status_code == 200, reply.text
        logs = await _all_logs(http, tenant="free")
        assert len(logs) == 1 and logs[0]["flops"] > 0
