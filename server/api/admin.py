"""The admin API: tenants' budgets and spend, live budget changes, config reload.

Authenticated with the admin key: `admin.key_sha256` in the config (a sha256 hex digest) and/or
the environment variable `T2SERVE_ADMIN_KEY` (the key itself, or `sha256:<hex>`). A tenant's API
key is recognised and refused with 403, whatever the admin key is; with no admin key configured
the routes answer 403 too, so the API is off by default.

Reload (POST /admin/reload, or SIGHUP: see server.app.enable_reload) parses and validates the
whole file first and swaps it in only if it is valid; requests already running keep the tenant
objects they resolved, so nothing in flight is dropped.

Tenants (POST /admin/tenants, DELETE /admin/tenants/{id}), budget, user-budget, rate-limit and
alert-threshold changes (PUT) and keys (POST/GET/DELETE .../keys, PUT .../keys/{prefix}/
rate_limits) are stored in the ledger's store and reach every replica within 2 s
(server.admin_state); a PUT wins over the file until the file changes that same field.
Bodies are strict pydantic models: NaN, Infinity and a value of the wrong JSON type ("5", true
for a number) are refused, never coerced.
"""

from __future__ import annotations

import base64
import csv
import hmac
import io
import json
import logging
import secrets
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, cast, get_args

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from controller.budget import Budgets
from controller.budget.admin_state import (
    DuplicateLabel,
    KeyNotFound,
    KeyNotLive,
    Override,
    StoredKey,
    StoredTenant,
    TenantExists,
    TenantNotFound,
    TooManyTenants,
)
from controller.budget.ledger import SpendRecord
from controller.budget.models import RateLimits
from server.admin_state import (
    CONFLICT,
    MAX_API_TENANTS,
    SECTIONS,
    AdminSync,
    file_values,
    overlay,
    override_field,
    shadowed,
)
from server.api.admin_responses import (
    KeyCreated,
    KeyInfo,
    KeyList,
    Reloaded,
    SpendGroup,
    SpendLog,
    SpendLogPage,
    SpendReport,
    SpendReportRow,
    TenantDeleted,
    TenantList,
    TenantReport,
    TenantSummary,
)
from server.api.deps import authenticator, get_state
from server.auth import bearer_key
from server.config import (
    ADMIN_KEY_ENV,
    AlertSettings,
    ApiKey,
    AppConfig,
    TenantConfig,
    alert_thresholds,
    bills_money,
    env_admin_digest,
    hash_key,
    tenant_problem,
)
from server.errors import APIError, ConfigError, echoed
from server.serving import ServingState

log = logging.getLogger("t2serve.admin")


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


def _tenant(state: ServingState, tenant_id: str) -> TenantConfig:
    tenant = next((t for t in state.config.tenants if t.id == tenant_id), None)
    if tenant is None:
        raise _no_tenant(tenant_id, param="id")
    return tenant


def _no_tenant(tenant_id: str, param: str) -> APIError:
    return APIError(404, f"No tenant '{echoed(tenant_id)}'.", param=param, code="tenant_not_found")


async def _report(state: ServingState, tenant_id: str) -> TenantReport:
    tenant = _tenant(state, tenant_id)
    report = await state.billing.report(tenant)
    report["budgets"] = tenant.budgets
    report["user_budgets"] = tenant.user_budgets
    report.setdefault("rate_limits", tenant.rate_limits)  # a metered report has its figures
    report["alert_thresholds"] = tenant.alerts.thresholds if tenant.alerts else None
    report["models"] = tenant.models
    report["source"] = _source(state, tenant.id)
    report["conflict"] = _conflict(state, tenant.id)
    return TenantReport.model_validate(report)


def _conflicts(state: ServingState) -> set[str]:
    """The ids both the file and the admin store define (the file's tenant is in force)."""
    return {t.id for t in shadowed(state.file_config, state.admin.snapshot.tenants)}


def _conflict(state: ServingState, tenant_id: str) -> str | None:
    """What the admin API reports of an id both the file and the store define; None if not."""
    return CONFLICT if tenant_id in _conflicts(state) else None


def _unshared(state: ServingState, sync: AdminSync, tenant_id: str) -> None:
    """409 while the file and the store both define the id: a key or setting made or changed
    now would be the file tenant's on this replica and the API tenant's wherever the file does
    not define it. Reading, revoking keys and deleting the API's tenant stay open (they only
    take access away, or end the clash)."""
    if any(t.id == tenant_id for t in shadowed(state.file_config, sync.snapshot.tenants)):
        raise APIError(
            409,
            f"Tenant '{echoed(tenant_id)}' is defined in {_config_file(state)} and was {CONFLICT}.",
            param="id",
            code="tenant_conflict",
        )


def _source(state: ServingState, tenant_id: str) -> Literal["file", "api"]:
    """Where a tenant is defined: "file" (the config file; changed and removed there) or "api"
    (made through POST /admin/tenants; DELETE removes it)."""
    return "file" if any(t.id == tenant_id for t in state.file_config.tenants) else "api"


@router.get("/tenants")
async def list_tenants(request: Request) -> TenantList:
    """Every tenant, the file's then the API's, with its models, budgets and source."""
    state = get_state(request)
    both = _conflicts(state)
    data = [
        TenantSummary(
            id=t.id,
            models=t.models,
            metered=state.billing.metered(t),
            budgets=t.budgets,
            rate_limits=t.rate_limits,
            source=_source(state, t.id),
            conflict=CONFLICT if t.id in both else None,
        )
        for t in state.config.tenants
    ]
    return TenantList(data=data)


@router.get("/tenants/{tenant_id}")
async def get_tenant(tenant_id: str, request: Request) -> TenantReport:
    """Spend, reserved, limit and remaining per window, and the pacing λ."""
    state = get_state(request)
    return await _report(state, tenant_id)


class NewTenant(TenantConfig):
    """A tenant made through the admin API: the config file's tenant settings, validated by the
    same model (TenantConfig) and, across the config, by the same checks (its models and routes
    exist, a currency budget has its prices). No keys: they are made with
    POST /admin/tenants/{id}/keys, after. No alert webhook: its HMAC secret would sit in the
    admin store, which holds no secret (keys are stored as digests); Prometheus alerts cover
    the tenant as any other."""

    api_keys: list[ApiKey] = Field(
        default_factory=list, description="not taken: make keys with POST .../keys"
    )
    alerts: AlertSettings | None = Field(
        default=None, description="not taken: webhooks are configured in the file only"
    )

    @field_validator("api_keys", "alerts", mode="before")
    @classmethod
    def _not_through_the_api(cls, value: Any, info: ValidationInfo) -> Any:
        instead = {
            "api_keys": "make its keys with POST /admin/tenants/{id}/keys once it exists",
            "alerts": "alert webhooks are configured in the config file only (their secret "
            "stays out of the admin store)",
        }
        raise PydanticCustomError(
            "unsupported_parameter",
            "'{field}' is not taken by POST /admin/tenants: {instead}",
            {"field": info.field_name, "instead": instead[str(info.field_name)]},
        )


def _config_file(state: ServingState) -> str:
    return f"the config file ({state.config_path})" if state.config_path else "the config file"


@router.post("/tenants", status_code=201)
async def create_tenant(body: NewTenant, request: Request) -> TenantReport:
    """Onboard a tenant without editing the file: every replica serves it within 2 s and it
    lasts (restarts, reloads). 409 if the id is taken, by the file or the API. It has no key
    until one is made with POST .../keys.

    An id used before (a tenant deleted, or one the file had) may be taken again: the new
    tenant gets none of the old one's keys or budget changes, but spend is counted by id, so
    the old tenant's spend in the current budget windows counts against the new one's budgets
    (deleting and re-making a tenant does not reset a budget), and spend logs and reports show
    both under the id. To start from nothing, use a new id."""
    state = get_state(request)
    taken = f"Tenant '{echoed(body.id)}' already exists"
    if any(t.id == body.id for t in state.file_config.tenants):
        raise APIError(409, f"{taken} in {_config_file(state)}.", param="id", code="tenant_exists")
    sync = await state.admin.ensure()
    if any(t.live and t.id == body.id for t in sync.snapshot.tenants):
        raise APIError(409, f"{taken} (made through the admin API).", param="id",
                       code="tenant_exists")  # fmt: skip
    settings = body.model_dump(
        mode="json", exclude_unset=True, exclude={"id", "api_keys", "alerts"}
    )
    stored = StoredTenant(body.id, settings, sync.clock())
    problem = tenant_problem(state.file_config, {**settings, "id": body.id, "api_keys": []})
    if problem is not None:
        param, message = problem
        raise APIError(400, f"Invalid tenant: {message}.", param=param, code="invalid_value")
    overrides = [o for o in sync.snapshot.overrides if o.tenant != body.id]  # dropped with it
    try:
        overlay(state.file_config, overrides, [*sync.snapshot.tenants, stored])
    except ConfigError as exc:
        raise APIError(400, str(exc), code="invalid_config") from None
    try:
        await sync.create_tenant(stored)
    except TenantExists:  # made on another replica since this one's snapshot
        raise APIError(409, f"{taken} (made through the admin API).", param="id",
                       code="tenant_exists") from None  # fmt: skip
    except TooManyTenants:
        raise APIError(
            409,
            f"The admin API holds {MAX_API_TENANTS} tenants, its limit (each is a metric "
            "label); delete one, or define tenants in the config file.",
            param="id",
            code="tenant_limit_reached",
        ) from None
    return await _report(state, body.id)


@router.delete("/tenants/{tenant_id}")
async def delete_tenant(tenant_id: str, request: Request) -> TenantDeleted:
    """Remove a tenant made through the admin API: its keys stop working on every replica
    within 2 s; its spend logs and ledger figures stay (billing records). A tenant of the
    config file is removed there (409); while the file and the API both define the id, this
    removes the API's, which ends the clash and leaves the file's in force."""
    state = get_state(request)
    if tenant_id not in _conflicts(state) and any(
        t.id == tenant_id for t in state.file_config.tenants
    ):
        raise APIError(
            409,
            f"Tenant '{echoed(tenant_id)}' is defined in {_config_file(state)}: remove it "
            "there, then reload (POST /admin/reload).",
            param="id",
            code="tenant_in_config_file",
        )
    sync = await state.admin.ensure()
    try:
        await sync.delete_tenant(tenant_id)
    except TenantNotFound:
        raise _no_tenant(tenant_id, param="id") from None
    return TenantDeleted(id=tenant_id)


@router.put("/tenants/{tenant_id}/budgets")
async def put_budgets(tenant_id: str, budgets: Budgets, request: Request) -> TenantReport:
    """Replace the tenant's budgets on every replica, lastingly: each field wins over the file
    until the file changes that field."""
    state = get_state(request)
    await _put_section(state, tenant_id, "budgets", budgets.model_dump())
    return await _report(state, tenant_id)


async def _put_section(
    state: ServingState, tenant_id: str, section: str, new: dict[str, Any]
) -> None:
    """Store every field of one section of the tenant's config as a lasting override (each
    remembers the file's value, so a later edit of that field in the file wins again)."""
    _tenant(state, tenant_id)
    sync = await state.admin.ensure()
    _unshared(state, sync, tenant_id)
    # the value the override stands over: the file's, or an API tenant's as it was made
    base = overlay(state.file_config, [], sync.snapshot.tenants)
    file_tenant = next((t for t in base.tenants if t.id == tenant_id), None)
    in_file = file_values(file_tenant, section)
    now = sync.clock()
    changes = [
        Override(tenant_id, override_field(section, f), new.get(f), in_file[f], now)
        for f in SECTIONS[section]
    ]
    replaced = {(tenant_id, c.field) for c in changes}
    kept = [o for o in sync.snapshot.overrides if (o.tenant, o.field) not in replaced]
    try:
        # the whole config must stay valid
        overlay(state.file_config, kept + changes, sync.snapshot.tenants)
    except ConfigError as exc:
        raise APIError(400, str(exc), param=section, code=f"invalid_{section}") from None
    await sync.put_overrides(changes)


@router.put("/tenants/{tenant_id}/user_budgets")
async def put_user_budgets(tenant_id: str, budgets: Budgets, request: Request) -> TenantReport:
    """Replace the budgets each end user (`user` field) of the tenant has, lastingly, as
    `PUT .../budgets` does for the tenant's own."""
    state = get_state(request)
    await _put_section(state, tenant_id, "user_budgets", budgets.model_dump())
    return await _report(state, tenant_id)


@router.put("/tenants/{tenant_id}/rate_limits")
async def put_rate_limits(tenant_id: str, limits: RateLimits, request: Request) -> TenantReport:
    """Replace the tenant's requests and tokens per minute (`{}` removes both), lastingly."""
    state = get_state(request)
    await _put_section(state, tenant_id, "rate_limits", limits.model_dump())
    return await _report(state, tenant_id)


class AlertThresholds(BaseModel):
    # strict, as budgets are: "0.5" is not a number, true not a threshold of 1.0
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

    # the range is in the schema too, so the OpenAPI document says what is accepted
    thresholds: list[Annotated[float, Field(gt=0, le=10)]] = Field(min_length=1, max_length=32)

    @field_validator("thresholds")
    @classmethod
    def _in_range(cls, values: list[float]) -> list[float]:
        return alert_thresholds(values)


@router.put("/tenants/{tenant_id}/alerts")
async def put_alert_thresholds(
    tenant_id: str, body: AlertThresholds, request: Request
) -> TenantReport:
    """Replace the tenant's alert thresholds, lastingly; the webhook's url and secret stay in
    the file (a tenant without `alerts:` there gets 400)."""
    state = get_state(request)
    if _tenant(state, tenant_id).alerts is None:
        raise APIError(
            400,
            f"Tenant '{echoed(tenant_id)}' has no alert webhook: configure alerts.url and "
            "alerts.secret in the config file first.",
            param="alerts",
            code="alerts_not_configured",
        )
    await _put_section(state, tenant_id, "alerts", {"thresholds": body.thresholds})
    return await _report(state, tenant_id)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)  # as budgets


MAX_GRACE_S = 30 * 86400.0


KeyLabel = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:@ -]+$")]
"""A key's label: printable and plain, so it lists, logs and exports as it reads."""


class CreateKey(_Body):
    """A new key: `label` names it (unique among the tenant's live keys not being revoked);
    `expires_at` (Unix seconds) or `expires_in_s` ends it; `budgets` are its own, on top of
    the tenant's."""

    label: KeyLabel
    expires_at: float | None = Field(default=None, gt=0)
    expires_in_s: float | None = Field(default=None, gt=0)
    budgets: Budgets | None = None
    rate_limits: RateLimits | None = None


class RotateKey(_Body):
    """Rotation: a new key with the old one's label (unless given); the old one is revoked
    `grace_s` seconds from now, so clients can switch over."""

    grace_s: float = Field(default=0.0, ge=0, le=MAX_GRACE_S)
    label: KeyLabel | None = None
    expires_at: float | None = Field(default=None, gt=0)
    expires_in_s: float | None = Field(default=None, gt=0)
    budgets: Budgets | None = None
    rate_limits: RateLimits | None = None


KEY_PREFIX_LEN = 12  # "t2-" and 9 random characters: enough to tell keys apart in a list


def _info(key: StoredKey, now: float) -> KeyInfo:
    # the stored budgets and rate limits are dicts: validated into their models here
    return KeyInfo.model_validate(
        {
            "prefix": key.prefix,
            "label": key.label,
            "tenant": key.tenant,
            "status": key.status(now),
            "created_at": key.created_at,
            "expires_at": key.expires_at,
            "revoked_at": key.revoked_at,
            "last_used_at": key.last_used_at,
            "budgets": key.budgets,
            "rate_limits": key.rate_limits,
        }
    )


def _expiry(body: CreateKey | RotateKey, now: float) -> float | None:
    if body.expires_at is not None and body.expires_in_s is not None:
        raise APIError(400, "Give 'expires_at' or 'expires_in_s', not both.", param="expires_at")
    expires = body.expires_at
    if body.expires_in_s is not None:
        expires = now + body.expires_in_s
    if expires is not None and expires <= now:
        raise APIError(
            400,
            f"'expires_at' ({expires:.0f}) is in the past; the time now is {now:.0f}.",
            param="expires_at",
            code="invalid_value",
        )
    return expires


async def _create(
    state: ServingState,
    tenant_id: str,
    label: str,
    expires_at: float | None,
    budgets: Budgets | None,
    revoke: tuple[str, float] | None = None,
    rate_limits: RateLimits | None = None,
) -> KeyCreated:
    sync = await state.admin.ensure()
    _unshared(state, sync, tenant_id)
    now = sync.clock()
    secret = "t2-" + secrets.token_urlsafe(32)
    stored = StoredKey(
        sha256=hash_key(secret),
        tenant=tenant_id,
        prefix=secret[:KEY_PREFIX_LEN],
        label=label,
        created_at=now,
        expires_at=expires_at,
        budgets=budgets.model_dump(exclude_none=True) if budgets is not None else None,
        rate_limits=_limits(rate_limits),
    )
    try:
        await sync.create_key(stored, revoke)
    except DuplicateLabel:
        raise APIError(
            409,
            f"Tenant '{echoed(tenant_id)}' already has a live key labelled '{echoed(label)}'.",
            param="label",
            code="duplicate_label",
        ) from None
    except KeyNotFound:
        raise _no_key(tenant_id, revoke[0] if revoke else "") from None
    except KeyNotLive as exc:  # the key exists (it lists as revoked or expired): not a 404
        raise APIError(
            409,
            f"Tenant '{echoed(tenant_id)}' key '{echoed(exc.prefix)}' is {exc.status} and "
            "cannot be rotated; create a new key instead (POST .../keys).",
            param="prefix",
            code="key_not_active",
        ) from None
    created = KeyCreated(key=secret, **_info(stored, now).model_dump())
    if revoke is not None:
        old = next(k for k in sync.snapshot.keys if k.prefix == revoke[0])
        created.revokes = _info(old, now)
    return created


def _limits(rate_limits: RateLimits | None) -> dict[str, Any] | None:
    """A key's rpm/tpm as stored: only what is set; None when nothing is."""
    if rate_limits is None or not rate_limits.any():
        return None
    return rate_limits.model_dump(exclude_none=True)


def _no_key(tenant_id: str, prefix: str) -> APIError:
    return APIError(
        404,
        f"Tenant '{echoed(tenant_id)}' has no key '{echoed(prefix)}'.",
        param="prefix",
        code="key_not_found",
    )


@router.post("/tenants/{tenant_id}/keys", status_code=201)
async def create_key(tenant_id: str, body: CreateKey, request: Request) -> KeyCreated:
    """A new key for the tenant; the key itself is in this response only."""
    state = get_state(request)
    _priced_for(state, _tenant(state, tenant_id), body.budgets)
    now = state.admin.clock()
    return await _create(
        state, tenant_id, body.label, _expiry(body, now), body.budgets, None, body.rate_limits
    )


def _priced_for(state: ServingState, tenant: TenantConfig, budgets: Budgets | None) -> None:
    """A key's currency budget needs the tenant's prices, as the tenant's own budgets do: an
    unpriced model costs 0, so the budget would never bind."""
    unpriced = state.config.unpriced(tenant) if bills_money(budgets) else []
    if unpriced:
        raise APIError(
            400,
            f"budgets: tenant '{echoed(tenant.id)}' has no price for "
            f"{', '.join(repr(echoed(m)) for m in unpriced)}, "
            "so a currency budget would never bind (an unpriced model costs 0); price the "
            "tenant's models first, or give the key a flops budget.",
            param="budgets",
            code="invalid_value",
        )


@router.get("/tenants/{tenant_id}/keys")
async def list_keys(
    tenant_id: str,
    request: Request,
    prefix: Annotated[str | None, Query(max_length=64)] = None,
) -> KeyList:
    """The tenant's stored keys (by prefix), with status, last use and spend."""
    state = get_state(request)
    tenant = _tenant(state, tenant_id)
    sync = await state.admin.ensure()
    now = sync.clock()
    keys = [k for k in await sync.keys(tenant_id) if prefix is None or k.prefix.startswith(prefix)]
    spend: dict[str, dict[str, float]] = {}
    if keys:
        for r in await state.billing.spend_logs([tenant.id], 0.0, now + 1.0):
            if r.key_prefix is not None:
                total = spend.setdefault(r.key_prefix, {"money": 0.0, "flops": 0.0})
                total["money"] += r.money
                total["flops"] += r.flops
    data = []
    for k in keys:
        info = _info(k, now)
        info.spend = spend.get(k.prefix, {"money": 0.0, "flops": 0.0})
        data.append(info)
    return KeyList(data=data)


@router.delete("/tenants/{tenant_id}/keys/{prefix}")
async def revoke_key(
    tenant_id: str,
    prefix: str,
    request: Request,
    grace_s: Annotated[float, Query(ge=0, le=MAX_GRACE_S, allow_inf_nan=False)] = 0.0,
) -> KeyInfo:
    """Revoke a key now, or `grace_s` seconds from now; every replica refuses it within 2 s."""
    state = get_state(request)
    if await request.body():  # rotate's body shape sent here would revoke at once, unread
        raise APIError(
            400,
            "DELETE takes no body; pass the grace time as a query parameter (?grace_s=...).",
            param="grace_s",
            code="unknown_parameter",
        )
    _tenant(state, tenant_id)
    sync = await state.admin.ensure()
    now = sync.clock()
    try:
        key = await sync.revoke_key(tenant_id, prefix, now + grace_s)
    except KeyNotFound:
        raise _no_key(tenant_id, prefix) from None
    return _info(key, now)


async def _stored_key(sync: AdminSync, tenant_id: str, prefix: str) -> StoredKey:
    """The stored key, from this replica's snapshot, or from the store when the snapshot does
    not have it yet (made on another replica since the last poll); 404 if neither has it."""
    for fresh in (False, True):
        if fresh and not await sync.refresh():
            break
        key = next((k for k in sync.snapshot.keys if (k.tenant, k.prefix) == (tenant_id, prefix)),
                   None)  # fmt: skip
        if key is not None:
            return key
    raise _no_key(tenant_id, prefix)


@router.post("/tenants/{tenant_id}/keys/{prefix}/rotate", status_code=201)
async def rotate_key(tenant_id: str, prefix: str, body: RotateKey, request: Request) -> KeyCreated:
    """A new key, and the old one revoked after `grace_s`, in one step; a revoked or expired
    key is refused (409 `key_not_active`) by the store in that same step, issuing nothing."""
    state = get_state(request)
    tenant = _tenant(state, tenant_id)
    _priced_for(state, tenant, body.budgets)
    sync = await state.admin.ensure()
    now = sync.clock()
    old = await _stored_key(sync, tenant_id, prefix)
    budgets = body.budgets
    if budgets is None and old.budgets is not None:
        budgets = Budgets.model_validate(old.budgets)
    rate_limits = body.rate_limits
    if rate_limits is None and old.rate_limits is not None:
        rate_limits = RateLimits.model_validate(old.rate_limits)
    return await _create(
        state,
        tenant_id,
        body.label or old.label,
        _expiry(body, now),
        budgets,
        revoke=(prefix, now + body.grace_s),
        rate_limits=rate_limits,
    )


@router.put("/tenants/{tenant_id}/keys/{prefix}/rate_limits")
async def put_key_rate_limits(
    tenant_id: str, prefix: str, limits: RateLimits, request: Request
) -> KeyInfo:
    """Replace a stored key's own requests and tokens per minute (`{}` removes them), lastingly,
    on every replica within 2 s. (Keys in the config file take `rate_limits` there.)"""
    state = get_state(request)
    _tenant(state, tenant_id)
    sync = await state.admin.ensure()
    _unshared(state, sync, tenant_id)
    try:
        key = await sync.set_key_rate_limits(tenant_id, prefix, _limits(limits))
    except KeyNotFound:
        raise _no_key(tenant_id, prefix) from None
    return _info(key, sync.clock())


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


# -- spend logs and reports -------------------------------------------------------------------

MAX_PAGE = 1000
GROUPS: tuple[SpendGroup, ...] = get_args(SpendGroup)


class SpendFilter(_Body):
    """Which records: one tenant (default all), key prefix, user, model, and since ≤ time < until
    (Unix seconds)."""

    tenant: str | None = None
    key: str | None = None
    user: str | None = None
    model: str | None = None
    since: float = Field(default=0.0, ge=0)
    until: float | None = Field(default=None, gt=0)


def _filter(
    tenant: str | None,
    key: str | None,
    user: str | None,
    model: str | None,
    since: float,
    until: float | None,
) -> SpendFilter:
    if until is not None and until <= since:  # an empty window reads as "no spend": say so
        raise APIError(
            400,
            f"'until' ({until:g}) must be later than 'since' ({since:g}).",
            param="until",
            code="invalid_value",
        )
    return SpendFilter(tenant=tenant, key=key, user=user, model=model, since=since, until=until)


async def _records(state: ServingState, f: SpendFilter) -> list[SpendRecord]:
    # the tenants in force, and those the admin API deleted: their records are billing records
    deleted = [t.id for t in state.admin.snapshot.tenants if not t.live]
    known = list(dict.fromkeys([*(t.id for t in state.config.tenants), *deleted]))
    if f.tenant is not None and f.tenant not in known:
        raise _no_tenant(f.tenant, param="tenant")
    ids = [t for t in known if f.tenant is None or t == f.tenant]
    until = f.until if f.until is not None else state.admin.clock() + 1.0
    records = await state.billing.spend_logs(ids, f.since, until)
    return [
        r
        for r in records
        if (f.key is None or r.key_prefix == f.key)
        and (f.user is None or r.user == f.user)
        and (f.model is None or f.model in r.by_model)  # any model that drew for it
    ]


def _encode_cursor(r: SpendRecord) -> str:
    raw = json.dumps([r.time, r.tenant, r.request_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[float, str, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        t, tenant, rid = json.loads(raw)
        return float(t), str(tenant), str(rid)
    except (ValueError, TypeError, OverflowError):
        raise APIError(
            400, "Invalid 'cursor': pass back a next_cursor.", param="cursor", code="invalid_value"
        ) from None


Num = Annotated[float, Query(ge=0, allow_inf_nan=False)]
Text = Annotated[str | None, Query(max_length=256)]


@router.get("/spend/logs")
async def spend_logs(
    request: Request,
    tenant: Text = None,
    key: Text = None,
    user: Text = None,
    model: Text = None,
    since: Num = 0.0,
    until: Annotated[float | None, Query(gt=0, allow_inf_nan=False)] = None,
    limit: int = 100,
    cursor: Annotated[str | None, Query(max_length=1024)] = None,
) -> SpendLogPage:
    """One record per request (oldest first), `limit` per page; pass `next_cursor` back as
    `cursor` for the next page. `model` selects the records any of whose waves that model drew;
    `by_model` splits each record by model."""
    state = get_state(request)
    if not 1 <= limit <= MAX_PAGE:
        raise APIError(
            400,
            f"'limit' must be between 1 and {MAX_PAGE}, got {echoed(str(limit))}.",
            param="limit",
            code="invalid_value",
        )
    records = await _records(state, _filter(tenant, key, user, model, since, until))
    if cursor is not None:
        after = _decode_cursor(cursor)
        records = [r for r in records if (r.time, r.tenant, r.request_id) > after]
    page = records[:limit]
    more = len(records) > limit
    return SpendLogPage(
        data=[SpendLog.model_validate(asdict(r)) for r in page],
        next_cursor=_encode_cursor(page[-1]) if more and page else None,
    )


def _shares(r: SpendRecord, by_model: bool, model: str | None) -> list[tuple[str, dict[str, Any]]]:
    """What a record adds to a report, as (model, figures): the whole record, or, grouped by
    model or filtered to one, each model's own share (a route's waves on each model it drew)."""
    if not by_model and model is None:
        return [(r.model, {col: getattr(r, col) for col in REPORT_COLUMNS[1:]})]
    return [(m, asdict(part)) for m, part in r.by_model.items() if model in (None, m)]


def _group_of(r: SpendRecord, by: str, model: str) -> str:
    if by == "day":
        return datetime.fromtimestamp(r.time, tz=UTC).strftime("%Y-%m-%d")
    if by == "key":
        return r.key_prefix or ""
    return {"model": model, "user": r.user or "", "tenant": r.tenant}[by]


# the figures summed per group ("requests", "samples", …, "flops"): the report row's own fields
REPORT_COLUMNS = tuple(f for f in SpendReportRow.model_fields if f not in GROUPS)


@router.get(
    "/spend/report",
    response_model=SpendReport,
    response_model_exclude_none=True,  # a row carries only its own group's field
    responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}}},
)
async def spend_report(
    request: Request,
    group_by: str = "day",
    format: str = "json",
    tenant: Text = None,
    key: Text = None,
    user: Text = None,
    model: Text = None,
    since: Num = 0.0,
    until: Annotated[float | None, Query(gt=0, allow_inf_nan=False)] = None,
) -> SpendReport | Response:
    """Spend summed by day (UTC), model, key prefix, user or tenant; JSON, or CSV with
    `format=csv`. An empty key or user is a request without one (file keys, no `user`).
    By model (and with `model=`), a request is split by the model that drew each wave: a route
    that escalated counts in each of its models' rows, with that model's share."""
    state = get_state(request)
    if group_by not in GROUPS:
        raise APIError(
            400,
            f"'group_by' must be one of {', '.join(GROUPS)}.",
            param="group_by",
            code="invalid_value",
        )
    if format not in ("json", "csv"):
        raise APIError(400, "'format' must be json or csv.", param="format", code="invalid_value")
    rows: dict[str, dict[str, float]] = {}
    for r in await _records(state, _filter(tenant, key, user, model, since, until)):
        for share_model, share in _shares(r, group_by == "model", model):
            row = rows.setdefault(
                _group_of(r, group_by, share_model), dict.fromkeys(REPORT_COLUMNS, 0)
            )
            row["requests"] += 1
            for col in REPORT_COLUMNS[1:]:
                row[col] += share[col]
    data = [
        SpendReportRow.model_validate({group_by: group, **row})
        for group, row in sorted(rows.items())
    ]
    if format == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=[group_by, *REPORT_COLUMNS])
        writer.writeheader()
        writer.writerows(r.model_dump(exclude_none=True) for r in data)
        return Response(out.getvalue(), media_type="text/csv")
    return SpendReport(group_by=cast(SpendGroup, group_by), data=data)
