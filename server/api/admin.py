"""The admin API: tenants' budgets and spend, live budget changes, config reload.

Authenticated with the admin key: `admin.key_sha256` in the config (a sha256 hex digest) and/or
the environment variable `T2SERVE_ADMIN_KEY` (the key itself, or `sha256:<hex>`). A tenant's API
key is recognised and refused with 403, whatever the admin key is; with no admin key configured
the routes answer 403 too, so the API is off by default.

Reload (POST /admin/reload, or SIGHUP: see server.app.enable_reload) parses and validates the
whole file first and swaps it in only if it is valid; requests already running keep the tenant
objects they resolved, so nothing in flight is dropped. Budget changes made with PUT apply to
this replica's config in memory until the next reload: put lasting changes in the file.
"""

from __future__ import annotations

import hmac
import logging
import os
from typing import Any

from fastapi import APIRouter, Request

from controller.budget import Budgets
from server.api.deps import get_state
from server.auth import bearer_key
from server.config import AppConfig, TenantConfig, hash_key, parse_config
from server.errors import APIError, ConfigError
from server.serving import ServingState

ADMIN_KEY_ENV = "T2SERVE_ADMIN_KEY"
log = logging.getLogger("t2serve.admin")

router = APIRouter(prefix="/admin", tags=["admin"])


def admin_digests(config: AppConfig) -> list[str]:
    """The accepted admin key digests: the config's and the environment's."""
    digests: list[str] = []
    if config.admin.key_sha256:
        digests.append(config.admin.key_sha256.lower())
    env = os.environ.get(ADMIN_KEY_ENV, "").strip()
    if env:
        digests.append(env[7:].lower() if env.startswith("sha256:") else hash_key(env))
    return digests


def require_admin(request: Request) -> ServingState:
    """401 without a key or with an unknown one; 403 for tenant keys or when admin is off."""
    state = get_state(request)
    key = bearer_key(request.headers.get("authorization"))
    if key is None:
        raise APIError(
            401,
            "Missing admin key: send 'Authorization: Bearer <admin key>'.",
            code="missing_api_key",
        )
    if state.keyring.tenant_for_key(key) is not None:
        raise APIError(403, "Tenant API keys cannot use the admin API.", code="admin_only")
    digests = admin_digests(state.config)
    if not digests:
        raise APIError(
            403,
            f"The admin API is disabled: set admin.key_sha256 or {ADMIN_KEY_ENV}.",
            code="admin_disabled",
        )
    digest = hash_key(key)
    if not any(hmac.compare_digest(digest, d) for d in digests):
        raise APIError(401, "Incorrect admin key provided.", code="invalid_api_key")
    return state


def _tenant(state: ServingState, tenant_id: str) -> TenantConfig:
    tenant = next((t for t in state.config.tenants if t.id == tenant_id), None)
    if tenant is None:
        raise APIError(404, f"No tenant '{tenant_id}'.", param="id", code="tenant_not_found")
    return tenant


async def _report(state: ServingState, tenant_id: str) -> dict[str, Any]:
    tenant = _tenant(state, tenant_id)
    report = await state.billing.report(tenant)
    report["budgets"] = tenant.budgets.model_dump() if tenant.budgets else None
    report["models"] = tenant.models
    return report


@router.get("/tenants")
async def list_tenants(request: Request) -> dict[str, Any]:
    """Every configured tenant with its models and budgets."""
    state = require_admin(request)
    data = [
        {
            "id": t.id,
            "models": t.models,
            "metered": state.billing.metered(t),
            "budgets": t.budgets.model_dump() if t.budgets else None,
        }
        for t in state.config.tenants
    ]
    return {"object": "list", "data": data}


@router.get("/tenants/{tenant_id}")
async def get_tenant(tenant_id: str, request: Request) -> dict[str, Any]:
    """Spend, reserved, limit and remaining per window, and the pacing λ."""
    state = require_admin(request)
    return await _report(state, tenant_id)


@router.put("/tenants/{tenant_id}/budgets")
async def put_budgets(tenant_id: str, budgets: Budgets, request: Request) -> dict[str, Any]:
    """Replace the tenant's budgets on this replica (until the next reload)."""
    state = require_admin(request)
    _tenant(state, tenant_id)
    data = state.config.model_dump(mode="python")
    for tenant in data["tenants"]:
        if tenant["id"] == tenant_id:
            tenant["budgets"] = budgets.model_dump()
    try:
        new = parse_config(data, "budgets")
    except ConfigError as exc:
        raise APIError(400, str(exc), param="budgets", code="invalid_budgets") from None
    state.apply(new)
    return await _report(state, tenant_id)


@router.post("/reload")
async def reload(request: Request) -> dict[str, Any]:
    """Re-read the config file; an invalid file is refused and the running config is kept."""
    state = require_admin(request)
    try:
        new, ledger_changed = state.reload_from_file()
    except ConfigError as exc:
        raise APIError(400, f"Config not reloaded: {exc}", code="invalid_config") from None
    return {
        "status": "reloaded",
        "tenants": [t.id for t in new.tenants],
        "ledger_restart_needed": ledger_changed,
        "in_flight_kept": True,
    }
