"""The persistent stores (the budget ledger, admin state and keys, t2's learned state), each on
SQLite or Redis. `controller` holds their protocols and logic; this package owns every backend.

One entry point: `open_stores(config.ledger)` (or `Stores(backend, path=..., url=...)`) says
where all three live, one SQLite file or one Redis, and `.ledger()`, `.admin()`, `.learned()`
open each there. A backend module is imported only when its store is opened.

`.pending_settles()` opens the fourth, which is always local: the replica's journal of settles
the ledger's store could not take (controller.budget.pending), a SQLite file beside `path` by
default, whatever the backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from controller.budget.admin_state import AdminStore
from controller.budget.ledger import LedgerStore
from controller.budget.pending import PendingSettleStore
from controller.policy.learned import LearnedStore

BACKENDS = ("sqlite", "redis")
DEFAULT_PATH = "var/ledger.sqlite"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
PENDING_SETTLES_FILE = "pending-settles.sqlite"
"""The pending-settles journal's file name when the config gives no path: in `path`'s folder."""


class StoreSettings(Protocol):
    """Where the stores live, as the server's `ledger:` config section says it."""

    @property
    def backend(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def redis_url(self) -> str | None: ...
    @property
    def spend_log_retention_days(self) -> float: ...
    @property
    def pending_settles_path(self) -> str | None: ...


class Stores:
    """The three stores side by side: "sqlite" (one file, the default) or "redis" (several
    replicas). `log_retention_s`: Redis expires spend-log records itself (SQLite: `purge_logs`)."""

    def __init__(
        self,
        backend: str = "sqlite",
        *,
        path: str | Path = DEFAULT_PATH,
        url: str | None = None,
        log_retention_s: float = 90 * 86400,
        pending_path: str | Path | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown ledger backend {backend!r}; choose sqlite or redis")
        self.backend = backend
        self.path = path
        self.url = url or DEFAULT_REDIS_URL
        self.log_retention_s = log_retention_s
        self.pending_path = Path(pending_path or Path(path).parent / PENDING_SETTLES_FILE)

    def ledger(self) -> LedgerStore:
        if self.backend == "redis":
            from storage.redis.ledger import RedisStore

            return RedisStore(self.url, log_retention_s=self.log_retention_s)
        from storage.sqlite.ledger import SQLiteStore

        return SQLiteStore(self.path)

    def admin(self) -> AdminStore:
        """Beside the ledger: the same SQLite file or the same Redis."""
        if self.backend == "redis":
            from storage.redis.admin import RedisAdminStore

            return RedisAdminStore(self.url)
        from storage.sqlite.admin import SQLiteAdminStore

        return SQLiteAdminStore(self.path)

    def learned(self) -> LearnedStore:
        """t2's learned state beside the ledger: the same SQLite file or the same Redis."""
        if self.backend == "redis":
            from storage.redis.learned import RedisLearnedStore

            return RedisLearnedStore(self.url)
        from storage.sqlite.learned import SQLiteLearnedStore

        return SQLiteLearnedStore(self.path)

    def pending_settles(self) -> PendingSettleStore:
        """The replica's own journal of settles the ledger's store could not take: a local
        SQLite file (`pending_path`) on either backend, never in the store it waits for."""
        from storage.sqlite.pending import SQLitePendingSettles

        return SQLitePendingSettles(self.pending_path)


def open_stores(settings: StoreSettings) -> Stores:
    """The stores where the config's `ledger:` section puts them."""
    return Stores(
        settings.backend,
        path=settings.path,
        url=settings.redis_url,
        log_retention_s=settings.spend_log_retention_days * 86400,
        pending_path=settings.pending_settles_path,
    )


__all__ = ["BACKENDS", "PENDING_SETTLES_FILE", "StoreSettings", "Stores", "open_stores"]
