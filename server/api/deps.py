"""What both routers depend on: the app's serving state and the authenticated tenant."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request

from server.config import TenantConfig
from server.serving import ServingState

AUTHENTICATORS: set[Callable[..., Any]] = set()
"""The dependencies that authenticate a route's caller (`authenticator`)."""
F = TypeVar("F", bound=Callable[..., Any])


def authenticator(call: F) -> F:
    """Mark a dependency (taking just the request) as the one that authenticates its routes,
    so `authenticate_first` can run it where FastAPI fails a request before any dependency."""
    AUTHENTICATORS.add(call)
    return call


async def authenticate_first(request: Request) -> None:
    """Run the route's authenticators (raising their 401/403). FastAPI parses a JSON body
    before it solves dependencies, so a body that is not JSON would otherwise beat a missing
    key: the error handler calls this first, and 401 beats every other error."""
    dependant = getattr(request.scope.get("route"), "dependant", None)
    for dep in getattr(dependant, "dependencies", ()):
        if dep.call in AUTHENTICATORS:
            result = dep.call(request)
            if inspect.isawaitable(result):
                await result


def get_state(request: Request) -> ServingState:
    state: ServingState = request.app.state.t2
    return state


@authenticator
async def current_tenant(request: Request) -> TenantConfig:
    """Dependency: authenticate before the body is used (401 beats every other error)."""
    tenant = get_state(request).keyring.authenticate(request.headers.get("authorization"))
    request.state.tenant = tenant
    return tenant


Tenant = Annotated[TenantConfig, Depends(current_tenant)]
