"""Budgets: prices, windows, reservations and the ledger (SQLite or Redis).

The price of compute that budgets set lives in `controller.pacing`.

Public interface:
- `Prices`, `Budgets`, `Budget`, `RequestBudget`, `PacingSettings` (pydantic, config schema);
- `Pricer(prices, model, params).cost(prompt, completion) -> Cost(money, flops)`;
- `Ledger(store, clock=time.time, ttl_s=...)`: `reserve`, `settle`, `release`, `usage`;
- `open_store("sqlite", path=...)` / `open_store("redis", url=...)` → a `LedgerStore`;
- `simulate_budget(...)` (controller.budget.simulate): the simulated-clock budget replay.
"""

from __future__ import annotations

from pathlib import Path

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


def open_store(
    backend: str, *, path: str | Path = "var/ledger.sqlite", url: str | None = None
) -> LedgerStore:
    """The configured backend: "sqlite" (one file, the default) or "redis" (several replicas)."""
    if backend == "sqlite":
        from controller.budget.sqlite_store import SQLiteStore

        return SQLiteStore(path)
    if backend == "redis":
        from controller.budget.redis_store import RedisStore

        return RedisStore(url or "redis://127.0.0.1:6379/0")
    raise ValueError(f"unknown ledger backend {backend!r}; choose sqlite or redis")


__all__ = [
    "DEFAULT_TTL_S",
    "WINDOW_NAMES",
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
    "open_store",
]
