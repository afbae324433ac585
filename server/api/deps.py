"""What both routers depend on: the app's serving state and the authenticated tenant."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from server.config import TenantConfig
from server.serving import ServingState


def get_state(request: Request) -> ServingState:
    state: ServingState = request.app.state.t2
    return state


async def current_tenant(request: Request) -> TenantConfig:
    """Dependency: authenticate before the body is used (401 beats every other error)."""
    tenant = get_state(request).keyring.authenticate(request.headers.get("authorization"))
    request.state.tenant = tenant
    return tenant


Tenant = Annotated[TenantConfig, Depends(current_tenant)]
