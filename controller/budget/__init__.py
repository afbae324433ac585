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
from controller.policy.learned import LearnedStore


def open_store(
    backend: str,
    *,
    path: str | Path = "var/ledger.sqlite",
    url: str | None = None,
    log_retention_s: float = 90 * 86400,
) -> LedgerStore:
    """The configured backend: "sqlite" (one file, the default) or "redis" (several replicas).
    `log_retention_s`: Redis expires spend-log records itself (SQLite: `purge_logs`)."""
    if backend == "sqlite":
        from controller.budget.sqlite_store import SQLiteStore

        return SQLiteStore(path)
    if backend == "redis":
        from controller.budget.redis_store import RedisStore

        return RedisStore(url or "redis://127.0.0.1:6379/0", log_retention_s=log_retention_s)
    raise ValueError(f"unknown ledger backend {backend!r}; choose sqlite or redis")


def open_admin_store(
    backend: str, *, path: str | Path = "var/ledger.sqlite", url: str | None = None
) -> AdminStore:
    """The admin store beside the configured ledger: the same SQLite file or the same Redis."""
    if backend == "sqlite":
        from controller.budget.admin_sqlite import SQLiteAdminStore

        return SQLiteAdminStore(path)
    if backend == "redis":
        from controller.budget.admin_redis import RedisAdminStore

        return RedisAdminStore(url or "redis://127.0.0.1:6379/0")
    raise ValueError(f"unknown ledger backend {backend!r}; choose sqlite or redis")


def open_learned_store(
    backend: str, *, path: str | Path = "var/ledger.sqlite", url: str | None = None
) -> LearnedStore:
    """t2's learned state beside the configured ledger: the same SQLite file or Redis."""
    if backend == "sqlite":
        from controller.budget.learned_sqlite import SQLiteLearnedStore

        return SQLiteLearnedStore(path)
    if backend == "redis":
        from controller.budget.learned_redis import RedisLearnedStore

        return RedisLearnedStore(url or "redis://127.0.0.1:6379/0")
    raise ValueError(f"unknown ledger backend {backend!r}; choose sqlite or redis")


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
    "open_admin_store",
    "open_store",
]
