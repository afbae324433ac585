"""What more than one admin router needs: a tenant by id (or its 404), and the 409 that keeps
keys and settings from being made or changed while the config file and the admin store both
define a tenant's id."""

from __future__ import annotations

from server.admin_state import CONFLICT, shadowed
from server.config import TenantConfig
from server.errors import APIError, echoed
from server.serving import ServingState


def find_tenant(state: ServingState, tenant_id: str) -> TenantConfig:
    """The tenant in force with this id; 404 if there is none."""
    tenant = next((t for t in state.config.tenants if t.id == tenant_id), None)
    if tenant is None:
        raise no_tenant(tenant_id, param="id")
    return tenant


def no_tenant(tenant_id: str, param: str) -> APIError:
    return APIError(404, f"No tenant '{echoed(tenant_id)}'.", param=param, code="tenant_not_found")


def conflicts(state: ServingState) -> set[str]:
    """The ids both the file and the admin store define (the file's tenant is in force)."""
    return {t.id for t in shadowed(state.file_config, state.admin.snapshot.tenants)}


def require_unshared(state: ServingState, tenant_id: str) -> None:
    """409 while the file and the store both define the id: a key or setting made or changed
    now would be the file tenant's on this replica and the API tenant's wherever the file does
    not define it. Reading, revoking keys and deleting the API's tenant stay open (they only
    take access away, or end the clash). Call it after `state.admin.ensure()`."""
    if tenant_id in conflicts(state):
        raise APIError(
            409,
            f"Tenant '{echoed(tenant_id)}' is defined in {config_file(state)} and was {CONFLICT}.",
            param="id",
            code="tenant_conflict",
        )


def config_file(state: ServingState) -> str:
    """The config file, named as an error message says it."""
    return f"the config file ({state.config_path})" if state.config_path else "the config file"
