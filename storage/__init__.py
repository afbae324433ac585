"""The persistent stores (the budget ledger, admin state and keys, t2's learned state), each on
SQLite or Redis. `controller` holds their protocols and logic; this package owns every backend.

- `open_store("sqlite", path=...)` / `open_store("redis", url=...)` → a `LedgerStore`;
- `open_admin_store(...)` → an `AdminStore`; `open_learned_store(...)` → a `LearnedStore`.
"""

from __future__ import annotations

from pathlib import Path

from controller.budget.admin_state import AdminStore
from controller.budget.ledger import LedgerStore
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
        from storage.sqlite.ledger import SQLiteStore

        return SQLiteStore(path)
    if backend == "redis":
        from storage.redis.ledger import RedisStore

        return RedisStore(url or "redis://127.0.0.1:6379/0", log_retention_s=log_retention_s)
    raise ValueError(f"unknown ledger backend {backend!r}; choose sqlite or redis")


def open_admin_store(
    backend: str, *, path: str | Path = "var/ledger.sqlite", url: str | None = None
) -> AdminStore:
    """The admin store beside the configured ledger: the same SQLite file or the same Redis."""
    if backend == "sqlite":
        from storage.sqlite.admin import SQLiteAdminStore

        return SQLiteAdminStore(path)
    if backend == "redis":
        from storage.redis.admin import RedisAdminStore

        return RedisAdminStore(url or "redis://127.0.0.1:6379/0")
    raise ValueError(f"unknown ledger backend {backend!r}; choose sqlite or redis")


def open_learned_store(
    backend: str, *, path: str | Path = "var/ledger.sqlite", url: str | None = None
) -> LearnedStore:
    """t2's learned state beside the configured ledger: the same SQLite file or Redis."""
    if backend == "sqlite":
        from storage.sqlite.learned import SQLiteLearnedStore

        return SQLiteLearnedStore(path)
    if backend == "redis":
        from storage.redis.learned import RedisLearnedStore

        return RedisLearnedStore(url or "redis://127.0.0.1:6379/0")
    raise ValueError(f"unknown ledger backend {backend!r}; choose sqlite or redis")
