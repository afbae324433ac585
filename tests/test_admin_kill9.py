"""Kill and restart: budgets, keys and revocations made through the admin API, and the spend
logs, are all still in force after `kill -9` of the server process and a restart, on SQLite and
on Redis (a real server process, a scripted engine so it starts in a second)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from server.config import hash_key
from tests.fixtures.replicas import RestartableReplica, backend_ledger

ADMIN = {"Authorization": "Bearer kill9-admin"}


@pytest.fixture(params=["sqlite", "redis"])
def config_file(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    ledger = backend_ledger(request, tmp_path)
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "models": [{"id": "m", "path": "models/tiny-arith"}],
                "ledger": ledger,
                "admin": {"key_sha256": hash_key("kill9-admin")},
                "defaults": {"policy": "fixed:2", "max_tokens": 8},
                "tenants": [
                    {
                        "id": "acme",
                        "api_keys": [{"sha256": hash_key("kill9-acme")}],
                        "prices": {"models": {"*": {"completion_per_1m": 1e6}}},
                        "budgets": {"day": {"limit": 1000}},
                    }
                ],
            }
        )
    )
    yield path


def test_admin_changes_survive_kill_9(config_file: Path, tmp_path: Path) -> None:
    replica = RestartableReplica(config_file, tmp_path / "serve.log")
    base = replica.base_url
    try:
        put = httpx.put(
            f"{base}/admin/tenants/acme/budgets",
            json={"day": {"limit": 40}, "hour": {"limit": 30}},
            headers=ADMIN,
        )
        assert put.status_code == 200, put.text
        keep = httpx.post(
            f"{base}/admin/tenants/acme/keys",
            json={"label": "keep", "budgets": {"day": {"limit": 20}}},
            headers=ADMIN,
        ).json()
        drop = httpx.post(
            f"{base}/admin/tenants/acme/keys", json={"label": "drop"}, headers=ADMIN
        ).json()
        assert httpx.delete(
            f"{base}/admin/tenants/acme/keys/{drop['prefix']}", headers=ADMIN
        ).is_success
        chat = {"model": "m", "messages": [{"role": "user", "content": "Q: 1+5=?"}]}
        done = httpx.post(
            f"{base}/v1/chat/completions",
            json=chat,
            headers={"Authorization": f"Bearer {keep['key']}"},
            timeout=30,
        )
        assert done.status_code == 200, done.text
        replica.kill_and_restart()
        tenant = httpx.get(f"{base}/admin/tenants/acme", headers=ADMIN).json()
        limits = {w["window"]: w["limit"] for w in tenant["windows"]}
        assert limits["day"] == 40 and limits["hour"] == 30
        day = next(w for w in tenant["windows"] if w["window"] == "day")
        assert day["spent"] == done.json()["usage"]["completion_tokens"]  # settled spend kept
        assert httpx.get(
            f"{base}/v1/models", headers={"Authorization": f"Bearer {keep['key']}"}
        ).is_success
        revoked = httpx.get(f"{base}/v1/models", headers={"Authorization": f"Bearer {drop['key']}"})
        assert revoked.status_code == 401
        [record] = httpx.get(f"{base}/admin/spend/logs", headers=ADMIN).json()["data"]
        assert record["key_prefix"] == keep["prefix"] and record["money"] == day["spent"]
        listed = httpx.get(f"{base}/admin/tenants/acme/keys", headers=ADMIN).json()["data"]
        assert {k["label"]: k["status"] for k in listed} == {"keep": "active", "drop": "revoked"}
        assert listed[0]["budgets"]["day"]["limit"] == 20
    finally:
        replica.kill()
