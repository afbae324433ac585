"""Budgets: prices, windows, reservations and the ledger's logic (its stores live in `storage`).

The price of compute that budgets set lives in `controller.pacing`.

Public interface:
- `Prices`, `Budgets`, `Budget`, `RequestBudget`, `PacingSettings` (pydantic, config schema);
- `Pricer(prices, model, params).cost(prompt, completion) -> Cost(money, flops)`;
- `Ledger(store, clock=time.time, ttl_s=...)`: `reserve`, `settle`, `release`, `usage`;
- `simulate_budget(...)` (controller.budget.simulate): the simulated-clock budget replay.
"""

from __future__ import annotations

from controller.budget.admin_state import AdminStore
from controller.budget.ledger import (
    DEFAULT_TTL_S,
    Ledger,
    LedgerStore,
    Limit,
    ReserveOutcome,
    SettleOutcome,
    WindowUsage,
)
from controller.budget.models import (
    WINDOW_NAMES,
    Budget,
    Budgets,
    ModelPrice,
    PacingSettings,
    Prices,
    RequestBudget,
    Unit,
    WindowName,
)
from controller.budget.pricing import Cost, Pricer

__all__ = [
    "DEFAULT_TTL_S",
    "WINDOW_NAMES",
    "AdminStore",
    "Budget",
    "Budgets",
    "Cost",
    "Ledger",
    "LedgerStore",
    "Limit",
    "ModelPrice",
    "PacingSettings",
    "Pricer",
    "Prices",
    "RequestBudget",
    "ReserveOutcome",
    "SettleOutcome",
    "Unit",
    "WindowName",
    "WindowUsage",
]
