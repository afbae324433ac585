"""The admin API: its router, which authenticates every route, and config reload.

Authenticated with the admin key: `admin.key_sha256` in the config (a sha256 hex digest) and/or
the environment variable `T2SERVE_ADMIN_KEY` (the key itself, or `sha256:<hex>`). A tenant's API
key is recognised and refused with 403, whatever the admin key is; with no admin key configured
the routes answer 403 too, so the API is off by default.

Reload (POST /admin/reload, or SIGHUP: see server.app.enable_reload) parses and validates the
whole file first and swaps it in only if it is valid; requests already running keep the tenant
objects they resolved, so nothing in flight is dropped.

The other routes are in the modules this router includes: tenants and their settings
(server.api.admin_tenants), API keys (server.api.admin_keys), spend logs and reports
(server.api.admin_spend). What they change is stored in the ledger's store and reaches every
replica within 2 s (server.admin_state); a PUT wins over the file until the file changes that
same field. Bodies (server.api.admin_requests) are strict pydantic models: NaN, Infinity and a
value of the wrong JSON type ("5", true for a number) are refused, never coerced.
"""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Depends, Request

from server.api import admin_keys, admin_spend, admin_tenants
from server.api.admin_responses import Reloaded
from server.api.deps import authenticator, get_state
from server.auth import bearer_key
from server.config import ADMIN_KEY_ENV, AppConfig, env_admin_digest, hash_key
from server.errors import APIError, ConfigError, echoed


def _declared_query_only(request: Request) -> None:
    """A query parameter the route does not take is a 400 naming it, not ignored: a typo such
    as `?tenat=acme` would otherwise list every tenant's spend, `?grace=60` revoke at once. So
    is one given twice (`?group_by=day&group_by=model`), which would be read as the last.
    `require_admin` runs it after the key check, so an unauthenticated caller learns nothing."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    declared: set[str] = set()
    stack = [dependant] if dependant is not None else []
    while stack:
        d = stack.pop()
        declared.update(p.alias for p in d.query_params)
        stack.extend(d.dependencies)
    repeated = sorted({k for k, _ in request.query_params.multi_items()
                       if len(request.query_params.getlist(k)) > 1})  # fmt: skip
    if repeated:  # FastAPI would read the last one and drop the others unread
        name = echoed(repeated[0])
        raise APIError(
            400,
            f"Query parameter '{name}' is given more than once; give it once.",
            param=name,
            code="invalid_value",
        )
    unknown = sorted(set(request.query_params) - declared)
    if unknown:
        known = ", ".join(sorted(declared)) or "none"
        name = echoed(unknown[0])
        raise APIError(
            400,
            f"Unknown query parameter '{name}' (this route takes: {known}).",
            param=name,
            code="unknown_parameter",
        )


def admin_digests(config: AppConfig) -> list[str]:
    """The accepted admin key digests: the config's and the environment's."""
    digests: list[str] = []
    if config.admin.key_sha256:
        digests.append(config.admin.key_sha256.lower())
    try:
        env = env_admin_digest()
    except ValueError as exc:  # the operator's mistake, said as such (it never matched anything)
        raise APIError(403, f"The admin API is disabled: {exc}.", code="admin_disabled") from None
    if env is not None:
        digests.append(env)
    return digests


@authenticator
def require_admin(request: Request) -> None:
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
    _declared_query_only(request)  # every admin route calls this first


router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])
"""Every route's first dependency is `require_admin`: FastAPI solves dependencies before it
validates query parameters and bodies, so a caller without the admin key gets its 401/403,
never a validation error that describes the API (a body that is not JSON fails earlier still:
server.api.errors authenticates before saying so)."""

# the parts in this order, the order of /openapi.json's paths: tenants, keys, reload, spend
router.include_router(admin_tenants.router)
router.include_router(admin_keys.router)


@router.post("/reload")
async def reload(request: Request) -> Reloaded:
    """Re-read the config file; an invalid file is refused and the running config is kept."""
    state = get_state(request)
    try:
        new, waiting = state.reload_from_file()
    except ConfigError as exc:
        raise APIError(400, f"Config not reloaded: {exc}", code="invalid_config") from None
    return Reloaded(
        tenants=[t.id for t in new.tenants],
        ledger_restart_needed="ledger" in waiting,
        restart_needed=waiting,
    )


router.include_router(admin_spend.router)
