"""The admin API's tenant routes: list, read, create and delete tenants, and replace a tenant's
budgets, user budgets, rate limits and alert thresholds.

A tenant made here, and every PUT, is stored in the admin store and reaches every replica
within 2 s (server.admin_state); a PUT wins over the config file until the file changes that
same field. Included by server.api.admin, whose router authenticates every route.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request

from controller.budget import Budgets
from controller.budget.admin_state import (
    Override,
    StoredTenant,
    TenantExists,
    TenantNotFound,
    TooManyTenants,
)
from controller.budget.models import RateLimits
from server.admin_state import (
    CONFLICT,
    MAX_API_TENANTS,
    SECTIONS,
    file_values,
    overlay,
    override_field,
)
from server.api.admin_common import (
    config_file,
    conflicts,
    find_tenant,
    no_tenant,
    require_unshared,
)
from server.api.admin_requests import AlertThresholds, NewTenant
from server.api.admin_responses import TenantDeleted, TenantList, TenantReport, TenantSummary
from server.api.deps import get_state
from server.config import tenant_problem
from server.errors import APIError, ConfigError, echoed
from server.serving import ServingState

router = APIRouter()


async def _report(state: ServingState, tenant_id: str) -> TenantReport:
    tenant = find_tenant(state, tenant_id)
    report = await state.billing.report(tenant)
    report["budgets"] = tenant.budgets
    report["user_budgets"] = tenant.user_budgets
    report.setdefault("rate_limits", tenant.rate_limits)  # a metered report has its figures
    report["alert_thresholds"] = tenant.alerts.thresholds if tenant.alerts else None
    report["models"] = tenant.models
    report["source"] = _source(state, tenant.id)
    report["conflict"] = _conflict(state, tenant.id)
    return TenantReport.model_validate(report)


def _conflict(state: ServingState, tenant_id: str) -> str | None:
    """What the admin API reports of an id both the file and the store define; None if not."""
    return CONFLICT if tenant_id in conflicts(state) else None


def _source(state: ServingState, tenant_id: str) -> Literal["file", "api"]:
    """Where a tenant is defined: "file" (the config file; changed and removed there) or "api"
    (made through POST /admin/tenants; DELETE removes it)."""
    return "file" if any(t.id == tenant_id for t in state.file_config.tenants) else "api"


@router.get("/tenants")
async def list_tenants(request: Request) -> TenantList:
    """Every tenant, the file's then the API's, with its models, budgets and source."""
    state = get_state(request)
    both = conflicts(state)
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
        raise APIError(409, f"{taken} in {config_file(state)}.", param="id", code="tenant_exists")
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
    if tenant_id not in conflicts(state) and any(
        t.id == tenant_id for t in state.file_config.tenants
    ):
        raise APIError(
            409,
            f"Tenant '{echoed(tenant_id)}' is defined in {config_file(state)}: remove it "
            "there, then reload (POST /admin/reload).",
            param="id",
            code="tenant_in_config_file",
        )
    sync = await state.admin.ensure()
    try:
        await sync.delete_tenant(tenant_id)
    except TenantNotFound:
        raise no_tenant(tenant_id, param="id") from None
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
    find_tenant(state, tenant_id)
    sync = await state.admin.ensure()
    require_unshared(state, tenant_id)
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


@router.put("/tenants/{tenant_id}/alerts")
async def put_alert_thresholds(
    tenant_id: str, body: AlertThresholds, request: Request
) -> TenantReport:
    """Replace the tenant's alert thresholds, lastingly; the webhook's url and secret stay in
    the file (a tenant without `alerts:` there gets 400)."""
    state = get_state(request)
    if find_tenant(state, tenant_id).alerts is None:
        raise APIError(
            400,
            f"Tenant '{echoed(tenant_id)}' has no alert webhook: configure alerts.url and "
            "alerts.secret in the config file first.",
            param="alerts",
            code="alerts_not_configured",
        )
    await _put_section(state, tenant_id, "alerts", {"thresholds": body.thresholds})
    return await _report(state, tenant_id)
