"""The admin API on the real app (ASGI, SQLite ledger file): auth, per-tenant report, live budget
changes, reload by HTTP and by SIGHUP, and a reload in the middle of a request losing nothing."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi import FastAPI

from server.api.admin import ADMIN_KEY_ENV
from server.app import create_app, enable_reload
from server.billing import BudgetProvider, WaveHold
from server.config import hash_key, load_config

ADMIN_KEY = "admin-secret"
TENANT_KEY = "acme-key"


def config_dict(tmp_path: Path, day_limit: float = 5.0, admin: bool = True) -> dict[str, Any]:
    return {
        "models": [{"id": "m", "path": str(tmp_path / "model")}],
        "ledger": {"backend": "sqlite", "path": str(tmp_path / "ledger.sqlite")},
        "admin": {"key_sha256": hash_key(ADMIN_KEY)} if admin else {},
        "tenants": [
            {
                "id": "acme",
                "api_keys": [{"sha256": hash_key(TENANT_KEY)}],
                "policy": "t2",
                "prices": {"currency": "USD", "models": {"*": {"completion_per_1m": 1000.0}}},
                "budgets": {"day": {"limit": day_limit, "hard": True}},
            },
            {"id": "free", "api_keys": [{"sha256": hash_key("free-key")}]},
        ],
    }


def write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    return write(tmp_path / "config.yaml", config_dict(tmp_path))


@pytest.fixture
def app(config_file: Path) -> FastAPI:
    app = create_app(load_config(config_file))
    app.state.t2.config_path = config_file  # what enable_reload sets, without SIGHUP
    return app


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://admin.test") as c:
        yield c
    await app.state.t2.billing.close()


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_admin_routes_need_the_admin_key(client: httpx.AsyncClient) -> None:
    routes = [
        ("GET", "/admin/tenants", None),
        ("GET", "/admin/tenants/acme", None),
        ("PUT", "/admin/tenants/acme/budgets", {"day": {"limit": 1.0}}),
        ("POST", "/admin/reload", None),
    ]
    for method, path, body in routes:
        assert (await client.request(method, path, json=body)).status_code == 401
        wrong = await client.request(method, path, json=body, headers=auth("nope"))
        assert wrong.status_code == 401
        tenant = await client.request(method, path, json=body, headers=auth(TENANT_KEY))
        assert tenant.status_code == 403, path
        assert tenant.json()["error"]["code"] == "admin_only"
    ok = await client.get("/admin/tenants", headers=auth(ADMIN_KEY))
    assert ok.status_code == 200
    assert [t["id"] for t in ok.json()["data"]] == ["acme", "free"]


async def test_admin_key_from_the_environment_and_off_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from server.config import parse_config

    app = create_app(parse_config(config_dict(tmp_path, admin=False)))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://admin.test") as c:
        off = await c.get("/admin/tenants", headers=auth(ADMIN_KEY))
        assert off.status_code == 403 and off.json()["error"]["code"] == "admin_disabled"
        monkeypatch.setenv(ADMIN_KEY_ENV, "env-admin")
        assert (await c.get("/admin/tenants", headers=auth("env-admin"))).status_code == 200
        monkeypatch.setenv(ADMIN_KEY_ENV, "sha256:" + hash_key("hashed-admin"))
        assert (await c.get("/admin/tenants", headers=auth("hashed-admin"))).status_code == 200
        assert (await c.get("/admin/tenants", headers=auth(TENANT_KEY))).status_code == 403


async def spend(app: FastAPI, request_id: str, completion_tokens: int) -> float:
    state = app.state.t2
    tenant = state.config.tenants[0]
    billing = state.billing.for_request(tenant, "m", request_id)
    hold = await billing.reserve(WaveHold(0, 1, 0, completion_tokens))
    cost: float = await billing.settle(hold, prompt_tokens=0, completion_tokens=completion_tokens)
    await billing.close()
    return cost


async def test_tenant_report_shows_spend_limit_remaining_and_lambda(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    assert await spend(app, "r1", 1500) == pytest.approx(1.5)
    body = (await client.get("/admin/tenants/acme", headers=auth(ADMIN_KEY))).json()
    day = next(w for w in body["windows"] if w["window"] == "day")
    assert day["limit"] == 5.0 and day["hard"] is True
    assert day["spent"] == pytest.approx(1.5)
    assert day["reserved"] == pytest.approx(0.0)
    assert day["remaining"] == pytest.approx(3.5)
    assert 0 < day["resets_in_s"] <= 86400
    assert body["unit"] == "currency" and body["pacing_mode"] == "cap"
    assert body["currency"] == "USD"
    # 4.9 of 5 spent is ahead of pace at any hour: the cap now puts a price on compute
    assert await spend(app, "r2", 3400) == pytest.approx(3.4)
    body = (await client.get("/admin/tenants/acme", headers=auth(ADMIN_KEY))).json()
    assert body["price_of_compute"] > 0
    free = (await client.get("/admin/tenants/free", headers=auth(ADMIN_KEY))).json()
    assert free["metered"] is False
    missing = await client.get("/admin/tenants/nobody", headers=auth(ADMIN_KEY))
    assert missing.status_code == 404


async def test_put_budgets_applies_at_once_and_bad_budgets_name_the_field(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    put = await client.put(
        "/admin/tenants/acme/budgets",
        json={"day": {"limit": 0.5, "hard": True}, "minute": {"limit": 0.2, "rolling": True}},
        headers=auth(ADMIN_KEY),
    )
    assert put.status_code == 200, put.text
    windows = {w["window"]: w for w in put.json()["windows"]}
    assert windows["day"]["limit"] == 0.5 and windows["minute"]["rolling"] is True
    assert await spend(app, "r1", 150) == pytest.approx(0.15)
    tenant = app.state.t2.config.tenants[0]
    billing = app.state.t2.billing.for_request(tenant, "m", "r2")
    assert (await billing.reserve(WaveHold(0, 8, 0, 10))).samples == 5  # minute
    await billing.close()
    bad = await client.put(
        "/admin/tenants/acme/budgets", json={"day": {"limit": -1}}, headers=auth(ADMIN_KEY)
    )
    assert bad.status_code in (400, 422)
    assert "limit" in bad.text
    typo = await client.put(
        "/admin/tenants/acme/budgets", json={"dya": {"limit": 1}}, headers=auth(ADMIN_KEY)
    )
    assert typo.status_code in (400, 422) and "dya" in typo.text


async def test_reload_by_http_keeps_in_flight_requests_and_refuses_bad_files(
    tmp_path: Path, app: FastAPI, client: httpx.AsyncClient, config_file: Path
) -> None:
    state = app.state.t2
    in_flight = state.billing.for_request(state.config.tenants[0], "m", "long")
    hold = await in_flight.reserve(WaveHold(0, 2, 0, 100))
    assert hold.samples == 2

    write(config_file, config_dict(tmp_path, day_limit=9.0))
    done = await client.post("/admin/reload", headers=auth(ADMIN_KEY))
    assert done.status_code == 200, done.text
    assert done.json()["ledger_restart_needed"] is False
    assert state.config.tenants[0].budgets.day.limit == 9.0
    # the request that started before the reload settles normally and is billed once
    assert await in_flight.settle(hold, prompt_tokens=0, completion_tokens=120) == 0.12
    await in_flight.close()
    report = (await client.get("/admin/tenants/acme", headers=auth(ADMIN_KEY))).json()
    day = next(w for w in report["windows"] if w["window"] == "day")
    assert day["limit"] == 9.0 and day["spent"] == pytest.approx(0.12)
    assert day["reserved"] == pytest.approx(0.0)

    broken = config_dict(tmp_path)
    broken["tenants"][0]["budgets"]["day"]["limt"] = 3
    write(config_file, broken)
    refused = await client.post("/admin/reload", headers=auth(ADMIN_KEY))
    assert refused.status_code == 400
    assert "tenants.0.budgets.day.limt" in refused.json()["error"]["message"]
    assert state.config.tenants[0].budgets.day.limit == 9.0  # the running config is kept


async def test_reload_refuses_a_change_of_models(
    tmp_path: Path, app: FastAPI, client: httpx.AsyncClient, config_file: Path
) -> None:
    """Models start once: a reload adding one would list a model that 404s, one removing a
    model would leave it served; both are refused, naming the ids, and nothing changes."""
    state = app.state.t2
    for models in ([{"id": "m", "path": "a"}, {"id": "extra", "path": "b"}],
                   [{"id": "other", "path": "c"}]):  # fmt: skip
        changed = {**config_dict(tmp_path, day_limit=7.0), "models": models}
        write(config_file, changed)
        refused = await client.post("/admin/reload", headers=auth(ADMIN_KEY))
        assert refused.status_code == 400, refused.text
        message = refused.json()["error"]["message"]
        assert "needs a restart" in message and models[-1]["id"] in message
        assert [m.id for m in state.config.models] == ["m"]
        assert state.config.tenants[0].budgets.day.limit == 5.0  # nothing else applied either


async def test_reload_says_what_waits_for_a_restart(
    tmp_path: Path, client: httpx.AsyncClient, config_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Weights, engine settings and the listening port load once: a reload says so (in its
    reply and the log) and applies the rest, here the new budget."""
    moved = {**config_dict(tmp_path, day_limit=8.0), "server": {"port": 8123},
             "models": [{"id": "m", "path": str(tmp_path / "v2")}]}  # fmt: skip
    write(config_file, moved)
    with caplog.at_level("WARNING", logger="t2serve"):
        done = await client.post("/admin/reload", headers=auth(ADMIN_KEY))
    assert done.status_code == 200, done.text
    assert done.json()["restart_needed"] == ["server.port", "models.0"]
    assert done.json()["ledger_restart_needed"] is False
    assert any("server.port, models.0 changed" in r.getMessage() for r in caplog.records)
    report = (await client.get("/admin/tenants/acme", headers=auth(ADMIN_KEY))).json()
    assert next(w for w in report["windows"] if w["window"] == "day")["limit"] == 8.0
    write(config_file, config_dict(tmp_path, day_limit=8.0))  # what runs: nothing waits
    again = await client.post("/admin/reload", headers=auth(ADMIN_KEY))
    assert again.json()["restart_needed"] == []


@pytest.fixture
def restore_sighup() -> Iterator[None]:
    previous = signal.getsignal(signal.SIGHUP)
    yield
    signal.signal(signal.SIGHUP, previous)


async def test_sighup_reloads_the_config(
    tmp_path: Path, app: FastAPI, config_file: Path, restore_sighup: None
) -> None:
    enable_reload(app, config_file)
    write(config_file, config_dict(tmp_path, day_limit=7.0))
    os.kill(os.getpid(), signal.SIGHUP)
    for _ in range(100):
        if app.state.t2.config.tenants[0].budgets.day.limit == 7.0:
            break
        await asyncio.sleep(0.01)
    assert app.state.t2.config.tenants[0].budgets.day.limit == 7.0
    assert isinstance(app.state.t2.billing, BudgetProvider)
    await app.state.t2.billing.close()


async def test_extreme_limits_neither_fail_nor_brick_the_tenant(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    # 1e-322 made the pacer divide by zero (a 500, stored all the same: every later report
    # and completion of the tenant failed); 1e306 over a tiny price overflowed the wave's fit
    for limit in (1e-322, 1e306):
        put = await client.put("/admin/tenants/acme/budgets", headers=auth(ADMIN_KEY),
                               json={"day": {"limit": limit}})  # fmt: skip
        assert put.status_code == 200, put.text
        report = await client.get("/admin/tenants/acme", headers=auth(ADMIN_KEY))
        assert report.status_code == 200, report.text
    assert await spend(app, "r-huge", 10) > 0  # a wave still fits and is charged


def test_a_wave_fits_a_huge_budget_without_overflow() -> None:
    from controller.budget.ledger import affordable

    assert affordable(1e306, 1e-5, 8) == 8  # 1e311 samples' worth: all 8, not OverflowError
    assert affordable(2.5, 1.0, 8) == 2
    assert affordable(-1.0, 1.0, 8) == 0
    assert affordable(0.0, 0.0, 8) == 8  # a free sample always fits


async def test_admin_inputs_that_raised_are_4xx(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    import base64
    import json

    cursor = base64.urlsafe_b64encode(json.dumps([10**400, "a", "b"]).encode()).decode()
    resp = await client.get("/admin/spend/logs", params={"cursor": cursor},
                            headers=auth(ADMIN_KEY))  # fmt: skip
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "cursor"
    made = await client.post("/admin/tenants/acme/keys", headers=auth(ADMIN_KEY),
                             json={"label": "ci"})  # fmt: skip
    assert made.status_code == 201, made.text
    prefix = made.json()["prefix"]
    for label in ("a\nb", "\u202eevil"):  # what create refuses, rotate refuses too
        resp = await client.post(f"/admin/tenants/acme/keys/{prefix}/rotate",
                                 headers=auth(ADMIN_KEY), json={"label": label})  # fmt: skip
        assert resp.status_code == 400 and resp.json()["error"]["param"] == "label", resp.text
    monkeypatch.setenv(ADMIN_KEY_ENV, "sha256:é")  # an operator's typo: said, not a 500
    resp = await client.get("/admin/tenants", headers=auth("anything"))
    assert resp.status_code == 403 and ADMIN_KEY_ENV in resp.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"day": {"limit": True}}, "day.limit"),  # was a limit of 1
        ({"day": {"limit": "5"}}, "day.limit"),
        ({"day": {"limit": 5, "hard": "no"}}, "day.hard"),  # was a soft budget
    ],
)
async def test_budget_bodies_are_not_coerced(
    client: httpx.AsyncClient, body: dict[str, Any], param: str
) -> None:
    resp = await client.put("/admin/tenants/acme/budgets", headers=auth(ADMIN_KEY), json=body)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"].endswith(param)
    fine = await client.put(
        "/admin/tenants/acme/budgets",
        headers=auth(ADMIN_KEY),
        json={"day": {"limit": 5, "hard": False}},
    )  # an int is a number
    assert fine.status_code == 200, fine.text
    whole = await client.put(
        "/admin/tenants/acme/rate_limits", headers=auth(ADMIN_KEY), json={"rpm": 60.0}
    )  # JSON's integers include 60.0
    assert whole.status_code == 200, whole.text


async def test_a_currency_budget_on_a_key_of_an_unpriced_tenant_is_refused(
    client: httpx.AsyncClient,
) -> None:
    # `free` has no prices: a money budget on its key would never bind (its models cost 0)
    money = {"day": {"limit": 1e-9}}
    resp = await client.post("/admin/tenants/free/keys", headers=auth(ADMIN_KEY),
                             json={"label": "cur", "budgets": money})  # fmt: skip
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "budgets", resp.text
    flops = {"day": {"limit": 1e12, "unit": "flops"}}
    made = await client.post("/admin/tenants/free/keys", headers=auth(ADMIN_KEY),
                             json={"label": "fl", "budgets": flops})  # fmt: skip
    assert made.status_code == 201, made.text
    rotated = await client.post(f"/admin/tenants/free/keys/{made.json()['prefix']}/rotate",
                                headers=auth(ADMIN_KEY), json={"budgets": money})  # fmt: skip
    assert rotated.status_code == 400 and rotated.json()["error"]["param"] == "budgets"
    priced = await client.post("/admin/tenants/acme/keys", headers=auth(ADMIN_KEY),
                               json={"label": "cur", "budgets": money})  # fmt: skip
    assert priced.status_code == 201, priced.text  # acme prices every model ('*')


async def test_a_reload_the_stored_overrides_no_longer_fit_is_refused(
    tmp_path: Path, app: FastAPI, client: httpx.AsyncClient, config_file: Path
) -> None:
    # applied, it would have dropped every tenant's overrides (free's rpm as well as acme's
    # user budget) and left every later admin PUT refused, with one line in the log
    put = await client.put("/admin/tenants/acme/user_budgets", headers=auth(ADMIN_KEY),
                           json={"day": {"limit": 1.0}})  # fmt: skip
    assert put.status_code == 200, put.text
    rpm = await client.put("/admin/tenants/free/rate_limits", headers=auth(ADMIN_KEY),
                           json={"rpm": 1})  # fmt: skip
    assert rpm.status_code == 200, rpm.text
    unpriced = config_dict(tmp_path)
    del unpriced["tenants"][0]["prices"], unpriced["tenants"][0]["budgets"]
    write(config_file, unpriced)
    refused = await client.post("/admin/reload", headers=auth(ADMIN_KEY))
    assert refused.status_code == 400, refused.text
    assert "stored overrides" in refused.json()["error"]["message"]
    state = app.state.t2
    free = next(t for t in state.config.tenants if t.id == "free")
    assert free.rate_limits is not None and free.rate_limits.rpm == 1  # all kept as it was


async def test_a_non_ascii_key_works_as_a_client_sends_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from server.config import parse_config

    monkeypatch.setenv(ADMIN_KEY_ENV, "clé-admin")  # hashed as UTF-8, as config keys are
    app = create_app(parse_config(config_dict(tmp_path, admin=False)))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://admin.test") as c:
        header = "Bearer clé-admin".encode()  # the bytes curl sends; ASGI reads them as Latin-1
        resp = await c.get("/admin/tenants", headers=[(b"Authorization", header)])
        assert resp.status_code == 200, resp.text


async def test_unknown_query_parameters_and_a_delete_body_are_refused(
    client: httpx.AsyncClient,
) -> None:
    typo = await client.get("/admin/spend/logs", params={"tenat": "acme"}, headers=auth(ADMIN_KEY))
    assert typo.status_code == 400 and typo.json()["error"]["param"] == "tenat"  # not all spend
    assert "tenant" in typo.json()["error"]["message"]  # what it takes
    fine = await client.get("/admin/spend/logs", params={"tenant": "acme"}, headers=auth(ADMIN_KEY))
    assert fine.status_code == 200
    anon = await client.get("/admin/spend/logs", params={"tenat": "acme"})
    assert anon.status_code == 401  # the key first
    made = await client.post("/admin/tenants/acme/keys", headers=auth(ADMIN_KEY),
                             json={"label": "g"})  # fmt: skip
    prefix = made.json()["prefix"]
    for how in ({"params": {"grace": 60}}, {"content": b'{"grace_s": 60}'}):
        resp = await client.request(
            "DELETE", f"/admin/tenants/acme/keys/{prefix}", headers=auth(ADMIN_KEY), **how
        )
        assert resp.status_code == 400, resp.text  # rotate's shape or a typo: not revoked now
    keys = (await client.get("/admin/tenants/acme/keys", headers=auth(ADMIN_KEY))).json()
    assert next(k for k in keys["data"] if k["prefix"] == prefix)["status"] == "active"
    done = await client.delete(f"/admin/tenants/acme/keys/{prefix}", params={"grace_s": 60},
                               headers=auth(ADMIN_KEY))  # fmt: skip
    assert done.status_code == 200, done.text


async def test_the_key_is_checked_before_the_body_and_query(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """Every admin route (and the tenant API) answers a caller without the right key with its
    401/403, whatever else is wrong with the request: not a 400 that describes the API."""
    from fastapi.routing import APIRoute

    routes = [r for r in app.routes if isinstance(r, APIRoute) and r.path.startswith("/admin")]
    assert len(routes) >= 12
    json_type = {"content-type": "application/json"}
    not_json = b"not json"
    mistyped = b'{"day": {"limit": -1}, "label": 5, "thresholds": "x"}'
    query = {"limit": "abc", "since": "-1", "grace_s": "x"}
    for route in routes:
        path = route.path.replace("{tenant_id}", "acme").replace("{prefix}", "t2-x")
        for method in route.methods:
            for body in (not_json, mistyped, b""):
                for key, status in ((None, 401), ("nope", 401), (TENANT_KEY, 403)):
                    headers = {**json_type, **(auth(key) if key else {})}
                    resp = await client.request(
                        method, path, params=query, headers=headers, content=body
                    )
                    assert resp.status_code == status, (method, path, body, key, resp.text)
                    error = resp.json()["error"]
                    assert error["type"] in {"authentication_error", "permission_error"}
    for path in ("/v1/chat/completions", "/v1/completions"):
        resp = await client.post(path, content=not_json, headers=json_type)
        assert resp.status_code == 401, resp.text  # as the typed bodies already were
        assert resp.json()["error"]["code"] == "missing_api_key"


async def test_an_empty_window_and_a_repeated_query_parameter_are_refused(
    client: httpx.AsyncClient,
) -> None:
    """`until` before `since` would read as "no spend", and of a parameter given twice only the
    last would count (`group_by=day&group_by=model` is a report by model): both are 400s."""
    for path in ("/admin/spend/logs", "/admin/spend/report"):
        for since, until in (("100", "50"), ("100", "100")):
            resp = await client.get(path, params={"since": since, "until": until},
                                    headers=auth(ADMIN_KEY))  # fmt: skip
            assert resp.status_code == 400, resp.text
            assert resp.json()["error"]["param"] == "until"
        ok = await client.get(
            path, params={"since": "100", "until": "101"}, headers=auth(ADMIN_KEY)
        )
        assert ok.status_code == 200, ok.text
    for path, name, values in (
        ("/admin/spend/report", "group_by", ("day", "model")),
        ("/admin/spend/logs", "limit", ("1", "2")),
        ("/admin/tenants/acme/keys", "prefix", ("t2-a", "t2-b")),
    ):
        resp = await client.get(path, params=[(name, v) for v in values], headers=auth(ADMIN_KEY))
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["param"] == name


@pytest.mark.parametrize("thresholds", [["0.5"], [True], [0.5, "1"], "0.5"])
async def test_alert_thresholds_are_not_coerced(tmp_path: Path, thresholds: Any) -> None:
    """As budget bodies: a string or a boolean is not a threshold (true would be read as 1.0,
    a 100% alert the operator never asked for)."""
    data = config_dict(tmp_path)
    data["tenants"][0]["alerts"] = {
        "url": "http://127.0.0.1:9/hook", "secret": "s" * 32, "thresholds": [0.8]}  # fmt: skip
    app = create_app(load_config(write(tmp_path / "config.yaml", data)))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://admin.test") as c:
        put = "/admin/tenants/acme/alerts"
        bad = await c.put(put, headers=auth(ADMIN_KEY), json={"thresholds": thresholds})
        assert bad.status_code == 400, bad.text
        assert bad.json()["error"]["param"].startswith("thresholds")
        fine = await c.put(put, headers=auth(ADMIN_KEY), json={"thresholds": [0.5, 1]})
        assert fine.status_code == 200, fine.text
        assert fine.json()["alert_thresholds"] == [0.5, 1.0]
    await app.state.t2.billing.close()


async def test_the_openapi_document_lists_503_on_every_admin_route(
    client: httpx.AsyncClient,
) -> None:
    """Every admin route reads the admin or the ledger store, and answers 503 (with
    Retry-After) while it cannot be reached: the document says so on each."""
    paths = (await client.get("/openapi.json")).json()["paths"]
    admin = {p: ops for p, ops in paths.items() if p.startswith("/admin/")}
    assert len(admin) > 10
    for path, ops in admin.items():
        for method, op in ops.items():
            down = op["responses"].get("503")
            assert down is not None, (method, path)
            assert "store" in down["description"], (method, path)


async def test_the_openapi_document_lists_the_key_routes_409(client: httpx.AsyncClient) -> None:
    """A duplicate label (create, rotate) and a revoked or expired key (rotate) are 409s: the
    document says so, with the OpenAI error body, as it does for the other statuses."""
    paths = (await client.get("/openapi.json")).json()["paths"]
    keys = "/admin/tenants/{tenant_id}/keys"
    for path in (keys, keys + "/{prefix}/rotate"):
        conflict = paths[path]["post"]["responses"].get("409")
        assert conflict is not None, path
        schema = conflict["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorResponse"}
    assert "409" not in paths[keys]["get"]["responses"]  # listing keys conflicts with nothing


async def test_the_spend_report_is_typed_in_the_openapi_document(
    client: httpx.AsyncClient,
) -> None:
    """The report's JSON shape is in the document (a model, its rows' figures typed), next to
    its CSV form; and the body the route returns is exactly what that model says."""
    doc = (await client.get("/openapi.json")).json()
    ok = doc["paths"]["/admin/spend/report"]["get"]["responses"]["200"]["content"]
    ref = ok["application/json"]["schema"]["$ref"]
    schemas = doc["components"]["schemas"]
    report = schemas[ref.rsplit("/", 1)[1]]
    assert set(report["required"]) >= {"group_by", "data"}
    row = schemas[report["properties"]["data"]["items"]["$ref"].rsplit("/", 1)[1]]
    figures = {"requests", "samples", "waves", "prompt_tokens", "completion_tokens"}
    assert {name for name in figures if row["properties"][name]["type"] == "integer"} == figures
    assert row["properties"]["money"]["type"] == row["properties"]["flops"]["type"] == "number"
    assert {"day", "model", "key", "user", "tenant"} <= set(row["properties"])
    assert ok["text/csv"]["schema"]["type"] == "string"
    resp = await client.get("/admin/spend/report", params={"group_by": "user"},
                            headers=auth(ADMIN_KEY))  # fmt: skip
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"object": "spend.report", "group_by": "user", "data": []}


async def test_an_error_echoes_at_most_the_start_of_an_overlong_id(
    client: httpx.AsyncClient,
) -> None:
    """A caller who sends a 10 kB id (tenant, key prefix, parameter or field name) gets its
    first 64 characters and an ellipsis back, not 10 kB: every admin error that quotes what
    the caller sent is bounded the same way. (Every valid id fits whole: tenant ids and labels
    are at most 64 characters.)"""
    long = "x" * 10_000
    cut = "x" * 64 + "…"
    keys = "/admin/tenants/acme/keys"
    logs = "/admin/spend/logs"
    cases: list[tuple[str, str, dict[str, Any], int, str | None, str]] = [
        ("GET", f"/admin/tenants/{long}", {}, 404, "id", cut),
        ("PUT", f"/admin/tenants/{long}/budgets", {"json": {}}, 404, "id", cut),
        ("DELETE", f"{keys}/{long}", {}, 404, "prefix", cut),
        ("POST", f"{keys}/{long}/rotate", {"json": {}}, 404, "prefix", cut),
        ("PUT", f"{keys}/{long}/rate_limits", {"json": {}}, 404, "prefix", cut),
        ("GET", logs, {"params": {"tenant": "y" * 256}}, 404, "tenant", "y" * 64 + "…"),
        ("GET", logs, {"params": {"limit": "9" * 4000}}, 400, "limit", "9" * 64 + "…"),
        ("GET", logs, {"params": {long: "1"}}, 400, cut, cut),  # an unknown parameter
        ("GET", logs, {"params": [(long, "1"), (long, "2")]}, 400, cut, cut),  # one given twice
        ("POST", keys, {"json": {"label": "a", long: 1}}, 400, cut, cut),  # an unknown field
    ]
    for method, path, kw, status, param, echoed in cases:
        resp = await client.request(method, path, headers=auth(ADMIN_KEY), **kw)
        where = (method, path[:40], list(kw))
        assert resp.status_code == status, (where, resp.text[:300])
        error = resp.json()["error"]
        assert error["param"] == param, where
        assert f"'{echoed}'" in error["message"] or f" {echoed}" in error["message"], where
        assert len(resp.content) < 600, where


async def test_every_admin_route_types_its_success_body_in_the_openapi_document(
    client: httpx.AsyncClient,
) -> None:
    """Each admin route's 200 (201 where it creates) refers to a model among the components,
    so the document states its shape: the tenant list, the tenant report (GET, POST and every
    PUT return it), reload and the key list among them, not a bare object."""
    doc = (await client.get("/openapi.json")).json()
    schemas = doc["components"]["schemas"]
    admin = {(method, path): op for path, item in doc["paths"].items()
             if path.startswith("/admin") for method, op in item.items()}  # fmt: skip
    untyped = []
    for (method, path), op in admin.items():
        status = "201" if "201" in op["responses"] else "200"
        ref = op["responses"][status]["content"]["application/json"]["schema"].get("$ref", "")
        if not ref.startswith("#/components/schemas/") or ref.rsplit("/", 1)[1] not in schemas:
            untyped.append(f"{method.upper()} {path}")
    assert untyped == []
    assert len(admin) >= 16  # every admin route is checked, not none
    ok = admin[("get", "/admin/tenants/{tenant_id}")]["responses"]["200"]["content"]
    report = ok["application/json"]["schema"]["$ref"]
    for route in [("post", "/admin/tenants")] + [
        ("put", f"/admin/tenants/{{tenant_id}}/{section}")
        for section in ("budgets", "user_budgets", "rate_limits", "alerts")
    ]:
        status = "201" if route[0] == "post" else "200"
        body = admin[route]["responses"][status]["content"]["application/json"]["schema"]
        assert body == {"$ref": report}, route  # the one report, whichever route returns it
    variants = schemas[report.rsplit("/", 1)[1]]["oneOf"]
    shapes = {schemas[v["$ref"].rsplit("/", 1)[1]]["properties"]["metered"]["const"]:
              schemas[v["$ref"].rsplit("/", 1)[1]] for v in variants}  # fmt: skip
    assert {"unit", "currency", "pacing_mode"} <= set(shapes[True]["required"])
    assert "unit" not in shapes[False]["properties"]  # an unmetered tenant has none


async def test_a_keys_budgets_and_rate_limits_are_typed_in_the_openapi_document(
    client: httpx.AsyncClient,
) -> None:
    """A key's `budgets` and `rate_limits` (in every key route's body) are the config's Budgets
    and RateLimits, the models its create body takes, not a bare object."""
    schemas = (await client.get("/openapi.json")).json()["components"]["schemas"]
    for model in ("KeyInfo", "KeyCreated"):
        fields = schemas[model]["properties"]
        for name, ref in (("budgets", "Budgets"), ("rate_limits", "RateLimits")):
            assert {"$ref": f"#/components/schemas/{ref}"} in fields[name]["anyOf"], (model, name)
    assert schemas["KeyCreated"]["properties"]["revokes"]["anyOf"][0] == {
        "$ref": "#/components/schemas/KeyInfo"
    }


async def test_a_keys_budgets_and_rate_limits_are_returned_as_stored(
    client: httpx.AsyncClient,
) -> None:
    """Typing them changed no value: every key route returns a key's budgets and rpm/tpm with
    only what is set (no null windows or fields), the same from the routes that make a key and
    from those that read the store, as when they were bare dicts."""
    keys = "/admin/tenants/acme/keys"
    budgets = {"day": {"limit": 2.0}, "request": {"limit": 0.5, "unit": "flops"}}
    made = await client.post(keys, headers=auth(ADMIN_KEY), json={
        "label": "a", "rate_limits": {"tpm": 100, "rpm": 2}, "budgets": budgets})  # fmt: skip
    assert made.status_code == 201, made.text
    stored = {
        "budgets": {
            "day": {"hard": True, "limit": 2.0, "rolling": False, "unit": "currency"},
            "request": {"hard": True, "limit": 0.5, "unit": "flops"},
        },
        "rate_limits": {"rpm": 2, "tpm": 100},
    }

    def settings(key: dict[str, Any]) -> dict[str, Any]:
        return {name: key[name] for name in ("budgets", "rate_limits")}

    assert settings(made.json()) == stored
    listed = await client.get(keys, headers=auth(ADMIN_KEY))
    assert settings(listed.json()["data"][0]) == stored
    prefix = made.json()["prefix"]
    rotated = await client.post(f"{keys}/{prefix}/rotate", headers=auth(ADMIN_KEY),
                                json={"grace_s": 60})  # fmt: skip
    assert settings(rotated.json()) == settings(rotated.json()["revokes"]) == stored
    put = await client.put(f"{keys}/{prefix}/rate_limits", headers=auth(ADMIN_KEY),
                           json={"tpm": 7})  # fmt: skip
    assert settings(put.json()) == {**stored, "rate_limits": {"tpm": 7}}
    revoked = await client.delete(f"{keys}/{prefix}", headers=auth(ADMIN_KEY))
    assert settings(revoked.json()) == settings(put.json())
    plain = await client.post(keys, headers=auth(ADMIN_KEY), json={"label": "b"})
    assert settings(plain.json()) == {"budgets": None, "rate_limits": None}
