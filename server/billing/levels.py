"""The levels a request is budgeted and rate-limited at besides its tenant: its API key's own
budgets and rpm/tpm, and the tenant's per-user budgets (each a scope in the ledger)."""

from __future__ import annotations

import hashlib

from controller.budget import Budgets
from controller.budget.models import RateLimits
from server.billing.identity import Caller
from server.config import TenantConfig


def rate_levels(tenant: TenantConfig, caller: Caller) -> list[tuple[str, RateLimits]]:
    """The rpm/tpm levels of a request: the tenant's (scope "") and its key's own."""
    levels: list[tuple[str, RateLimits]] = []
    if tenant.rate_limits is not None and tenant.rate_limits.any():
        levels.append(("", tenant.rate_limits))
    scope = caller.key_scope
    if caller.key_rate_limits and scope:
        rates = RateLimits.model_validate(caller.key_rate_limits)
        if rates.any():
            levels.append((scope, rates))
    return levels


def budget_levels(
    tenant: TenantConfig, caller: Caller
) -> tuple[list[tuple[str, Budgets]], dict[str, str]]:
    """The levels below the tenant this request is also budgeted at (its key's own budgets,
    the tenant's per-user budgets when it names a `user`), and how each is named in errors.
    A user's scope is a digest of the id: any string is safe as a storage key."""
    levels: list[tuple[str, Budgets]] = []
    names: dict[str, str] = {}
    key_scope = caller.key_scope
    if key_scope:
        names[key_scope] = f"key {caller.key_prefix or caller.key_id}"
    if caller.key_budgets and caller.key_prefix:
        scope = f"key:{caller.key_prefix}"
        levels.append((scope, Budgets.model_validate(caller.key_budgets)))
    if tenant.user_budgets is not None and caller.user:
        scope = "user:" + hashlib.sha256(caller.user.encode()).hexdigest()[:24]
        levels.append((scope, tenant.user_budgets))
        names[scope] = f"user '{caller.user}'"
    return levels, names
