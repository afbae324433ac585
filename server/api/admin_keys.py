"""The admin API's key routes: create, list, revoke and rotate a tenant's API keys, and set a
key's own rate limits.

Keys are stored in the admin store as digests (the key itself is in the creating response
only) and reach every replica within 2 s. Included by server.api.admin, whose router
authenticates every route.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from controller.budget import Budgets
from controller.budget.admin_state import DuplicateLabel, KeyNotFound, KeyNotLive, StoredKey
from controller.budget.models import RateLimits
from server.admin_state import AdminSync
from server.api.admin_common import find_tenant, require_unshared
from server.api.admin_requests import MAX_GRACE_S, CreateKey, RotateKey
from server.api.admin_responses import KeyCreated, KeyInfo, KeyList
from server.api.deps import get_state
from server.config import TenantConfig, bills_money, hash_key
from server.errors import APIError, echoed
from server.serving import ServingState

router = APIRouter()


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
    require_unshared(state, tenant_id)
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
    _priced_for(state, find_tenant(state, tenant_id), body.budgets)
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
    tenant = find_tenant(state, tenant_id)
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
    find_tenant(state, tenant_id)
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
    tenant = find_tenant(state, tenant_id)
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
    find_tenant(state, tenant_id)
    sync = await state.admin.ensure()
    require_unshared(state, tenant_id)
    try:
        key = await sync.set_key_rate_limits(tenant_id, prefix, _limits(limits))
    except KeyNotFound:
        raise _no_key(tenant_id, prefix) from None
    return _info(key, sync.clock())
