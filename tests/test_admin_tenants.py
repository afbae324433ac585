"""Tenants made and deleted through the admin API, on the real app (lifespan on, a SQLite file or
a real Redis): the new tenant serves end to end (a key made for it, its budget binding, listed,
reported, in the spend report and the metrics), lasts through a restart and a reload, reaches a
second replica within 2 s and so does its deletion; the body is validated as the file's tenants
are; the file and the API never take each other's ids."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from server import metrics
from server.app import create_app
from server.config import hash_key, parse_config
from tests.fakes import ScriptedEngine
from tests.test_admin_lasting import (
    ADMIN,
    TENANT_KEY,
    Replica,
    app_of,
    config_dict,
    config_file,
    ledger,
    limits,
    models,
    replica,
)

__all__ = ["config_file", "ledger", "replica"]  # the fixtures, shared with test_admin_lasting

NEWCO = {
    "id": "newco",
    "models": ["m"],
    "policy": "fixed:1",
    "prices": {"currency": "EUR", "models": {"m": {"completion_per_1m": 1000.0}}},
    "budgets": {"day": {"limit": 0.01}},
    "rate_limits": {"rpm": 100},
}


async def make(client: httpx.AsyncClient, body: dict[str, Any] = NEWCO) -> httpx.Response:
    return await client.post("/admin/tenants", json=body, headers=ADMIN)


async def key_for(client: httpx.AsyncClient, tenant: str, label: str = "ci") -> str:
    made = await client.post(f"/admin/tenants/{tenant}/keys", json={"label": label},
                             headers=ADMIN)  # fmt: skip
    assert made.status_code == 201, made.text
    key: str = made.json()["key"]
    return key


async def complete(client: httpx.AsyncClient, key: str) -> httpx.Response:
    return await client.post(
        "/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "1+0?"}]},
    )


def steady(report: dict[str, Any]) -> dict[str, Any]:
    """A tenant's report without what moves with the clock."""
    windows = [{k: v for k, v in w.items() if k != "resets_in_s"} for w in report["windows"]]
    return {**report, "windows": windows}


async def wait_for(check: Any, what: str, within_s: float = 2.0) -> None:
    start = time.monotonic()
    while not await check():
        assert time.monotonic() - start < within_s, what
        await asyncio.sleep(0.05)


async def test_a_tenant_made_through_the_api_serves_end_to_end(replica: Replica) -> None:
    async with replica() as a:
        made = await make(a)
        assert made.status_code == 201, made.text
        shown = (await a.get("/admin/tenants/newco", headers=ADMIN)).json()
        assert steady(made.json()) == steady(shown)  # 201 with the tenant as GET shows it
        assert shown["source"] == "api" and shown["currency"] == "EUR"
        assert limits(shown)["day"] == 0.01 and shown["models"] == ["m"]
        listed = (await a.get("/admin/tenants", headers=ADMIN)).json()["data"]
        assert [(t["id"], t["source"]) for t in listed] == [
            ("acme", "file"),
            ("free", "file"),
            ("newco", "api"),
        ]
        assert (await models(a, "no-key-yet")).status_code == 401  # it has no key until made
        key = await key_for(a, "newco")
        assert (await models(a, key)).status_code == 200
        # its day budget binds: 0.004 a request (4 tokens at 1000 per 1M), 0.01 a day
        statuses = [(await complete(a, key)).status_code for _ in range(4)]
        assert statuses[0] == 200 and 429 in statuses, statuses
        refused = await complete(a, key)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "insufficient_quota"
        day = next(w for w in (await a.get("/admin/tenants/newco", headers=ADMIN)).json()[
            "windows"] if w["window"] == "day")  # fmt: skip
        assert 0 < day["spent"] <= 0.01
        report = (await a.get("/admin/spend/report?group_by=tenant", headers=ADMIN)).json()
        row = next(r for r in report["data"] if r["tenant"] == "newco")
        assert row["money"] == pytest.approx(day["spent"]) and row["requests"] >= 1
        body, _ = metrics.render_latest()
        assert 'tenant="newco"' in body.decode()  # a declared label value, not "other"
        assert "newco" in metrics._tenant.allowed()  # type: ignore[operator]


async def test_it_lasts_through_restart_and_reload_and_reaches_another_replica(
    replica: Replica,
) -> None:
    async with replica() as a, replica() as b:
        assert (await make(a)).status_code == 201
        key = await key_for(a, "newco")

        async def b_serves() -> bool:
            return (await models(b, key)).status_code == 200

        await wait_for(b_serves, "replica B does not know the new tenant")
        assert (await b.get("/admin/tenants/newco", headers=ADMIN)).status_code == 200
        assert (await a.post("/admin/reload", headers=ADMIN)).status_code == 200
        assert (await models(a, key)).status_code == 200  # a reload keeps it
        # a change of its budget through the API applies over its own settings, and lasts
        put = await a.put("/admin/tenants/newco/budgets", json={"day": {"limit": 3}},
                          headers=ADMIN)  # fmt: skip
        assert put.status_code == 200 and limits(put.json())["day"] == 3
    async with replica() as a:  # a restart
        assert (await models(a, key)).status_code == 200
        shown = (await a.get("/admin/tenants/newco", headers=ADMIN)).json()
        assert limits(shown)["day"] == 3 and shown["source"] == "api"


async def test_deleting_stops_its_keys_everywhere_and_keeps_its_records(
    replica: Replica,
) -> None:
    async with replica() as a, replica() as b:
        assert (await make(a)).status_code == 201
        key = await key_for(a, "newco")
        assert (await complete(a, key)).status_code == 200

        async def b_serves() -> bool:
            return (await models(b, key)).status_code == 200

        await wait_for(b_serves, "replica B does not know the new tenant")
        gone = await b.delete("/admin/tenants/newco", headers=ADMIN)  # on the other replica
        assert gone.status_code == 200, gone.text
        assert gone.json() == {"id": "newco", "object": "tenant.deleted", "deleted": True}
        assert (await models(b, key)).status_code == 401

        async def a_refuses() -> bool:
            return (await models(a, key)).status_code == 401

        await wait_for(a_refuses, "replica A still accepts a deleted tenant's key")
        for c in (a, b):
            assert (await c.get("/admin/tenants/newco", headers=ADMIN)).status_code == 404
            ids = [t["id"] for t in (await c.get("/admin/tenants", headers=ADMIN)).json()["data"]]
            assert "newco" not in ids
        again = await a.delete("/admin/tenants/newco", headers=ADMIN)
        assert again.status_code == 404 and again.json()["error"]["code"] == "tenant_not_found"
        # its spend logs stay, as billing records must
        logs = (await a.get("/admin/spend/logs?tenant=newco", headers=ADMIN)).json()["data"]
        assert len(logs) == 1 and logs[0]["money"] > 0
        # the id may be taken again; the old tenant's key does not come back with it
        assert (await make(a, {"id": "newco", "models": ["m"]})).status_code == 201
        assert (await models(a, key)).status_code == 401
        assert (await models(a, await key_for(a, "newco"))).status_code == 200
    async with replica() as a:  # and after a restart
        assert (await models(a, key)).status_code == 401


async def test_a_file_tenant_and_an_unknown_one_are_not_deleted(
    replica: Replica, config_file: Path
) -> None:
    async with replica() as a:
        refused = await a.delete("/admin/tenants/acme", headers=ADMIN)
        assert refused.status_code == 409, refused.text
        err = refused.json()["error"]
        assert (err["code"], err["param"]) == ("tenant_in_config_file", "id")
        assert str(config_file) in err["message"]
        assert (await models(a, TENANT_KEY)).status_code == 200
        missing = await a.delete("/admin/tenants/nobody", headers=ADMIN)
        assert missing.status_code == 404 and missing.json()["error"]["param"] == "id"


async def test_the_body_is_validated_as_the_files_tenants_are(replica: Replica) -> None:
    async def refused(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        r = await make(a, body)
        return r.status_code, r.json().get("error", {})

    async with replica() as a:
        version = await app_of(a).state.t2.admin.store.version()
        cases: list[tuple[dict[str, Any], int, str, str]] = [  # (body, status, param, code)
            ({"models": ["m"]}, 400, "id", "missing_required_parameter"),
            ({"id": "bad id!"}, 400, "id", "invalid_value"),
            ({"id": "x", "budgets": {"day": {"limit": -1}}}, 400, "budgets.day.limit",
             "invalid_value"),
            ({"id": "x", "budgets": {"day": {"limit": "5"}}}, 400, "budgets.day.limit",
             "invalid_value"),  # not coerced
            ({"id": "x", "max_samples": 0}, 400, "max_samples", "invalid_value"),
            ({"id": "x", "nonsense": 1}, 400, "nonsense", "invalid_value"),
            ({"id": "x", "models": ["nope"]}, 400, "models.0", "invalid_value"),
            ({"id": "x", "budgets": {"day": {"limit": 1}}}, 400, "prices.models",
             "invalid_value"),  # a currency budget needs its prices
            ({"id": "x", "api_keys": [{"sha256": "a" * 64}]}, 400, "api_keys",
             "unsupported_parameter"),
            ({"id": "x", "alerts": {"url": "https://h", "secret": "s" * 16}}, 400, "alerts",
             "unsupported_parameter"),
            ({"id": "acme"}, 409, "id", "tenant_exists"),  # the file's
        ]  # fmt: skip
        for body, status, param, code in cases:
            got, err = await refused(body)
            assert (got, err.get("param"), err.get("code")) == (status, param, code), body
            assert err["type"] == "invalid_request_error" and err["message"], body
        assert "unknown model 'nope'" in (await refused(cases[6][0]))[1]["message"]
        assert await app_of(a).state.t2.admin.store.version() == version  # nothing stored
        assert (await make(a)).status_code == 201
        status, err = await refused({**NEWCO, "budgets": None})
        assert (status, err["param"], err["code"]) == (409, "id", "tenant_exists")


async def test_a_file_that_defines_an_api_tenant_is_refused_at_reload_and_loses_at_start(
    replica: Replica, config_file: Path, ledger: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """The file and the API never share an id silently: a reload that would give the file an
    API tenant's id is refused naming the entry; where it cannot be refused (a restart on such
    a file) the file's tenant is the one in force, with an error logged."""
    in_file = config_dict(ledger)
    in_file["tenants"].append({"id": "newco", "api_keys": [{"sha256": "b" * 64}]})
    async with replica() as a:
        assert (await make(a)).status_code == 201
        key = await key_for(a, "newco")
        config_file.write_text(yaml.safe_dump(in_file))
        reload = await a.post("/admin/reload", headers=ADMIN)
        assert reload.status_code == 400, reload.text
        message = reload.json()["error"]["message"]
        assert "tenants.2.id" in message and "DELETE /admin/tenants/newco" in message
        shown = (await a.get("/admin/tenants/newco", headers=ADMIN)).json()
        assert shown["source"] == "api" and limits(shown)["day"] == 0.01  # running config kept
    with caplog.at_level(logging.ERROR, logger="t2serve.admin_state"):
        async with replica() as a:  # started on that file: the file's tenant wins
            shown = (await a.get("/admin/tenants/newco", headers=ADMIN)).json()
            assert shown["source"] == "file" and shown["metered"] is False
            assert (await a.post("/admin/reload", headers=ADMIN)).status_code == 200
            assert (await models(a, key)).status_code == 401  # the API tenant's: not the file's
    assert any("newco" in r.getMessage() and "config file" in r.getMessage()
               for r in caplog.records)  # fmt: skip
    config_file.write_text(yaml.safe_dump(config_dict(ledger)))
    async with replica() as a:  # the file dropped it: the API's tenant is back in force
        shown = (await a.get("/admin/tenants/newco", headers=ADMIN)).json()
        assert shown["source"] == "api" and limits(shown)["day"] == 0.01
        assert (await a.delete("/admin/tenants/newco", headers=ADMIN)).status_code == 200


async def test_the_openapi_document_lists_the_tenant_routes_409(tmp_path: Path) -> None:
    """The document is the same on either backend: one app, no lifespan, no store."""
    ledger = {"backend": "sqlite", "path": str(tmp_path / "ledger.sqlite")}
    app = create_app(parse_config(config_dict(ledger)), engine=ScriptedEngine())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t2.test") as c:
        paths = (await c.get("/openapi.json")).json()["paths"]
    for method, path in (("post", "/admin/tenants"), ("delete", "/admin/tenants/{tenant_id}")):
        responses = paths[path][method]["responses"]
        assert {"201" if method == "post" else "200", "400", "404", "409"} <= set(responses)
        schema = responses["409"]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorResponse"}
    assert "409" not in paths["/admin/tenants"]["get"]["responses"]
    assert "409" not in paths["/admin/tenants/{tenant_id}"]["get"]["responses"]
    described = " ".join(paths["/admin/tenants"]["post"]["description"].split())
    assert "old tenant's spend in the current budget windows counts against" in described
    body = paths["/admin/tenants"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/NewTenant"}


async def test_while_the_file_wins_an_id_the_api_tenants_keys_do_not_authenticate(
    replica: Replica, config_file: Path, ledger: dict[str, Any]
) -> None:
    """A file tenant that takes an API tenant's id (a restart on such a file) is another
    principal, with another budget: the keys made for the API's tenant are refused rather than
    let in as the file's, no key of that id is made or changed while both hold it, and the
    admin API says so. Once the file drops the id, the API's tenant and its keys are back."""
    async with replica() as a:
        assert (await make(a)).status_code == 201
        api_key = await key_for(a, "newco")
        kept = await key_for(a, "newco", label="kept")
    in_file = config_dict(ledger)
    in_file["tenants"].append({"id": "newco", "api_keys": [{"sha256": hash_key("file-newco")}]})
    config_file.write_text(yaml.safe_dump(in_file))
    async with replica() as a:
        assert (await models(a, "file-newco")).status_code == 200  # the file's own key
        refused = await models(a, api_key)
        assert refused.status_code == 401, refused.text
        err = refused.json()["error"]
        assert err["code"] == "invalid_api_key" and "config file" in err["message"]
        shown = (await a.get("/admin/tenants/newco", headers=ADMIN)).json()
        assert shown["source"] == "file" and "admin API" in shown["conflict"]
        listed = (await a.get("/admin/tenants", headers=ADMIN)).json()["data"]
        assert {t["id"]: t["conflict"] is not None for t in listed} == {
            "acme": False,
            "free": False,
            "newco": True,
        }
        assert (await a.get("/admin/tenants/acme", headers=ADMIN)).json()["conflict"] is None
        prefix = (await a.get("/admin/tenants/newco/keys", headers=ADMIN)).json()["data"][0][
            "prefix"]  # fmt: skip
        version = await app_of(a).state.t2.admin.store.version()
        for method, path, body in (
            ("POST", "/admin/tenants/newco/keys", {"label": "new"}),
            ("POST", f"/admin/tenants/newco/keys/{prefix}/rotate", {}),
            ("PUT", f"/admin/tenants/newco/keys/{prefix}/rate_limits", {"rpm": 5}),
            ("PUT", "/admin/tenants/newco/budgets", {"day": {"limit": 5.0}}),
        ):
            r = await a.request(method, path, json=body, headers=ADMIN)
            assert r.status_code == 409, (path, r.text)
            err = r.json()["error"]
            assert (err["code"], err["param"], err["type"]) == (
                "tenant_conflict",
                "id",
                "invalid_request_error",
            ), path
            assert "'newco'" in err["message"] and str(config_file) in err["message"]
        assert await app_of(a).state.t2.admin.store.version() == version  # nothing stored
        # revoking stays possible (it only takes access away): the API tenant's leaked key
        revoked = await a.delete(f"/admin/tenants/newco/keys/{prefix}", headers=ADMIN)
        assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    config_file.write_text(yaml.safe_dump(config_dict(ledger)))
    async with replica() as a:  # the file dropped the id: the API's tenant and its keys again
        assert (await models(a, kept)).status_code == 200
        assert (await models(a, api_key)).status_code == 401  # revoked meanwhile
        assert (await models(a, "file-newco")).status_code == 401
        assert (await a.get("/admin/tenants/newco", headers=ADMIN)).json()["conflict"] is None


async def test_deleting_a_clashing_id_removes_the_api_tenant_and_its_settings_stay_its_own(
    replica: Replica, config_file: Path, ledger: dict[str, Any]
) -> None:
    """While the file wins an id, the budgets set for the API's tenant are not the file
    tenant's either (even where the file holds the very value the override stood over), and
    DELETE ends the clash in one step: it removes the API's tenant, leaving the file's."""
    async with replica() as a:
        assert (await make(a)).status_code == 201
        raised = await a.put("/admin/tenants/newco/budgets", json={"day": {"limit": 0.5}},
                             headers=ADMIN)  # fmt: skip
        assert raised.status_code == 200 and limits(raised.json())["day"] == 0.5
        api_key = await key_for(a, "newco")
    in_file = config_dict(ledger)  # the same settings the API's tenant was made with
    in_file["tenants"].append({**NEWCO, "api_keys": [{"sha256": hash_key("file-newco")}]})
    config_file.write_text(yaml.safe_dump(in_file))
    async with replica() as a:
        shown = (await a.get("/admin/tenants/newco", headers=ADMIN)).json()
        assert shown["conflict"] is not None and limits(shown)["day"] == 0.01  # the file's
        gone = await a.delete("/admin/tenants/newco", headers=ADMIN)
        assert gone.status_code == 200, gone.text
        shown = (await a.get("/admin/tenants/newco", headers=ADMIN)).json()
        assert (shown["source"], shown["conflict"], limits(shown)["day"]) == ("file", None, 0.01)
        assert (await models(a, "file-newco")).status_code == 200
        assert (await models(a, api_key)).status_code == 401
        again = await a.delete("/admin/tenants/newco", headers=ADMIN)  # now only the file's
        assert again.status_code == 409 and again.json()["error"]["code"] == "tenant_in_config_file"


async def test_a_reused_id_lists_the_old_tenants_expired_key_as_expired(
    replica: Replica,
) -> None:
    """Deleting a tenant, or making one under an id used before, revokes the id's keys; a key
    that had expired by then ended by expiry, and lists so, not as revoked."""
    async with replica() as a:
        assert (await make(a)).status_code == 201
        body = {"label": "short", "expires_in_s": 0.2}
        short = await a.post("/admin/tenants/newco/keys", json=body, headers=ADMIN)
        assert short.status_code == 201, short.text
        await key_for(a, "newco", label="plain")
        await asyncio.sleep(0.3)
        assert (await a.delete("/admin/tenants/newco", headers=ADMIN)).status_code == 200
        assert (await make(a)).status_code == 201
        listed = (await a.get("/admin/tenants/newco/keys", headers=ADMIN)).json()["data"]
        assert {k["label"]: k["status"] for k in listed} == {"short": "expired", "plain": "revoked"}


async def test_a_reused_id_counts_the_old_tenants_spend_in_the_current_windows(
    replica: Replica,
) -> None:
    """Spend is counted by tenant id, so deleting a tenant and making it again does not reset
    its budgets: the new tenant starts with the old one's spend in the current windows
    (otherwise delete + create would evade any budget). Documented on POST /admin/tenants."""
    async with replica() as a:
        assert (await make(a)).status_code == 201
        old = await key_for(a, "newco")
        # a request holds 0.008 (8 tokens at 1000 per 1M) and settles 0.004, of a day's 0.01
        assert (await complete(a, old)).status_code == 200
        assert (await a.delete("/admin/tenants/newco", headers=ADMIN)).status_code == 200
        again = await make(a)
        assert again.status_code == 201, again.text
        day = next(w for w in again.json()["windows"] if w["window"] == "day")
        assert day["spent"] == pytest.approx(0.004)
        assert day["remaining"] == pytest.approx(0.006)
        refused = await complete(a, await key_for(a, "newco"))  # a fresh 0.01 would hold it
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "insufficient_quota"


def tenant_series(tenant: str) -> set[str]:
    """The names of the exposed samples labelled with this tenant."""
    body = metrics.render_latest()[0].decode()
    return {line.split("{")[0] for line in body.splitlines()
            if not line.startswith("#") and f'tenant="{tenant}"' in line}  # fmt: skip


async def test_deleting_a_tenant_removes_its_live_budget_series_and_keeps_its_counters(
    replica: Replica,
) -> None:
    """Its budget gauges and λ describe a live budget: they go with the tenant (or its burn
    alerts would keep firing), a publish deferred past the deletion included. Its counters are
    history (spend, requests, tokens): they stay until a restart, as for a tenant a reload
    removes (and a multiprocess registry could not remove them anyway)."""
    async with replica() as a:
        assert (await make(a, {**NEWCO, "budgets": {"day": {"limit": 1.0}}})).status_code == 201
        key = await key_for(a, "newco")
        for _ in range(2):  # the second's figures wait for the publish interval: deferred
            assert (await complete(a, key)).status_code == 200
        live = {"t2_budget_limit", "t2_budget_remaining", "t2_budget_spent",
                "t2_price_of_compute"}  # fmt: skip
        assert live <= tenant_series("newco")
        assert (await a.delete("/admin/tenants/newco", headers=ADMIN)).status_code == 200
        await asyncio.sleep(0.4)  # past server.billing.gauges.METRICS_INTERVAL_S
        exposed = tenant_series("newco")
        gauges = {s for s in exposed if not s.endswith(("_total", "_bucket", "_count", "_sum"))}
        assert gauges == set(), gauges
        assert {"t2_spend_total", "t2_requests_total", "t2_budget_rejections_total"} <= exposed
