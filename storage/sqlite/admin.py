"""`AdminStore` in the ledger's SQLite file: a few small tables, one transaction per change.

Changes are rare (an operator's API call), so every call runs on the worker thread of
`storage.sqlite.database`, which waits for the lock; the version read that replicas poll is a
single-row primary-key lookup.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from controller.budget.admin_state import (
    AdminSnapshot,
    DuplicateLabel,
    KeyNotFound,
    KeyNotLive,
    Override,
    StoredKey,
    StoredTenant,
    TenantExists,
    TenantNotFound,
    TooManyTenants,
    canonical,
    label_taken,
)
from storage.sqlite.database import SQLiteDatabase

SCHEMA = """
CREATE TABLE IF NOT EXISTS admin_version (
    id INTEGER PRIMARY KEY CHECK (id = 0), version INTEGER NOT NULL
);
INSERT OR IGNORE INTO admin_version VALUES (0, 0);
CREATE TABLE IF NOT EXISTS admin_overrides (
    tenant TEXT NOT NULL, field TEXT NOT NULL, value TEXT NOT NULL, file_value TEXT NOT NULL,
    updated_at REAL NOT NULL, PRIMARY KEY (tenant, field)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS alerts_sent (
    event_id TEXT PRIMARY KEY, claimed_at REAL NOT NULL, expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS api_keys (
    sha256 TEXT PRIMARY KEY, tenant TEXT NOT NULL, prefix TEXT NOT NULL UNIQUE,
    label TEXT NOT NULL, created_at REAL NOT NULL, expires_at REAL, revoked_at REAL,
    budgets TEXT, last_used_at REAL, rate_limits TEXT
);
CREATE TABLE IF NOT EXISTS admin_tenants (
    id TEXT PRIMARY KEY, config TEXT NOT NULL, created_at REAL NOT NULL, deleted_at REAL
) WITHOUT ROWID;
"""
_COLUMNS = (
    "sha256, tenant, prefix, label, created_at, expires_at, revoked_at, budgets, last_used_at, "
    "rate_limits"
)


class SQLiteAdminStore:
    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 10_000) -> None:
        self._db = SQLiteDatabase(
            path, _prepare, thread_name="t2-admin-sqlite", busy_timeout_ms=busy_timeout_ms
        )
        self.path = self._db.path
        self._run = self._db.run

    @staticmethod
    def _bump(c: sqlite3.Connection) -> int:
        c.execute("UPDATE admin_version SET version = version + 1 WHERE id = 0")
        return int(c.execute("SELECT version FROM admin_version WHERE id = 0").fetchone()[0])

    async def version(self) -> int:
        def go(c: sqlite3.Connection) -> int:
            return int(c.execute("SELECT version FROM admin_version WHERE id = 0").fetchone()[0])

        return await self._run(go, write=False)

    async def snapshot(self) -> AdminSnapshot:
        def go(c: sqlite3.Connection) -> AdminSnapshot:
            c.execute("BEGIN")  # one consistent read of all three tables
            try:
                version = int(c.execute("SELECT version FROM admin_version").fetchone()[0])
                rows = c.execute(
                    "SELECT tenant, field, value, file_value, updated_at FROM admin_overrides"
                ).fetchall()
                overrides = [
                    Override(r[0], r[1], json.loads(r[2]), json.loads(r[3]), r[4]) for r in rows
                ]
                keys = [_key(r) for r in c.execute(f"SELECT {_COLUMNS} FROM api_keys")]
                tenants = [
                    StoredTenant(r[0], json.loads(r[1]), r[2], r[3])
                    for r in c.execute(
                        "SELECT id, config, created_at, deleted_at FROM admin_tenants"
                    )
                ]
            finally:
                c.execute("COMMIT")
            return AdminSnapshot(version, overrides, keys, tenants)

        return await self._run(go, write=False)

    async def put_overrides(self, overrides: list[Override]) -> int:
        def go(c: sqlite3.Connection) -> int:
            c.executemany(
                "INSERT OR REPLACE INTO admin_overrides VALUES (?, ?, ?, ?, ?)",
                [
                    (o.tenant, o.field, canonical(o.value), canonical(o.file_value), o.updated_at)
                    for o in overrides
                ],
            )
            return self._bump(c)

        return await self._run(go)

    async def create_key(
        self, key: StoredKey, now: float, revoke: tuple[str, float] | None = None
    ) -> int:
        def go(c: sqlite3.Connection) -> int:
            if revoke is not None:  # a rotation: only a live key is replaced
                status = self._find(c, key.tenant, revoke[0]).status(now)
                if status != "active":
                    raise KeyNotLive(revoke[0], status)
                self._revoke(c, key.tenant, revoke[0], revoke[1])
            same = [
                _key(r)
                for r in c.execute(
                    f"SELECT {_COLUMNS} FROM api_keys WHERE tenant=? AND label=?",
                    (key.tenant, key.label),
                )
            ]
            if label_taken(same, key.tenant, key.label, now):
                raise DuplicateLabel(key.label)
            c.execute(
                f"INSERT INTO api_keys ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key.sha256,
                    key.tenant,
                    key.prefix,
                    key.label,
                    key.created_at,
                    key.expires_at,
                    key.revoked_at,
                    None if key.budgets is None else canonical(key.budgets),
                    None,
                    None if key.rate_limits is None else canonical(key.rate_limits),
                ),
            )
            return self._bump(c)

        return await self._run(go)

    @staticmethod
    def _find(c: sqlite3.Connection, tenant: str, prefix: str) -> StoredKey:
        row = c.execute(
            f"SELECT {_COLUMNS} FROM api_keys WHERE tenant=? AND prefix=?", (tenant, prefix)
        ).fetchone()
        if row is None:
            raise KeyNotFound(prefix)
        return _key(row)

    @classmethod
    def _revoke(cls, c: sqlite3.Connection, tenant: str, prefix: str, at: float) -> StoredKey:
        sha256 = cls._find(c, tenant, prefix).sha256
        c.execute(
            "UPDATE api_keys SET revoked_at = min(coalesce(revoked_at, ?), ?) WHERE sha256=?",
            (at, at, sha256),
        )
        return _key(
            c.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE sha256=?", (sha256,)).fetchone()
        )

    async def revoke_key(self, tenant: str, prefix: str, at: float) -> StoredKey:
        def go(c: sqlite3.Connection) -> StoredKey:
            key = self._revoke(c, tenant, prefix, at)
            self._bump(c)
            return key

        return await self._run(go)

    async def set_key_rate_limits(
        self, tenant: str, prefix: str, rate_limits: dict[str, Any] | None
    ) -> StoredKey:
        def go(c: sqlite3.Connection) -> StoredKey:
            text = None if rate_limits is None else canonical(rate_limits)
            changed = c.execute(
                "UPDATE api_keys SET rate_limits=? WHERE tenant=? AND prefix=?",
                (text, tenant, prefix),
            ).rowcount
            if not changed:
                raise KeyNotFound(prefix)
            self._bump(c)
            row = c.execute(
                f"SELECT {_COLUMNS} FROM api_keys WHERE tenant=? AND prefix=?", (tenant, prefix)
            ).fetchone()
            return _key(row)

        return await self._run(go)

    async def create_tenant(self, tenant: StoredTenant, limit: int) -> int:
        def go(c: sqlite3.Connection) -> int:
            live = c.execute(
                "SELECT id = ? FROM admin_tenants WHERE deleted_at IS NULL", (tenant.id,)
            ).fetchall()
            if any(same for (same,) in live):
                raise TenantExists(tenant.id)
            if len(live) >= limit:
                raise TooManyTenants(limit)
            self._clear(c, tenant.id, tenant.created_at)
            c.execute(
                "INSERT OR REPLACE INTO admin_tenants VALUES (?, ?, ?, NULL)",
                (tenant.id, canonical(tenant.config), tenant.created_at),
            )
            return self._bump(c)

        return await self._run(go)

    async def delete_tenant(self, tenant_id: str, at: float) -> int:
        def go(c: sqlite3.Connection) -> int:
            changed = c.execute(
                "UPDATE admin_tenants SET deleted_at = ? WHERE id = ? AND deleted_at IS NULL",
                (at, tenant_id),
            ).rowcount
            if not changed:
                raise TenantNotFound(tenant_id)
            self._clear(c, tenant_id, at)
            return self._bump(c)

        return await self._run(go)

    @staticmethod
    def _clear(c: sqlite3.Connection, tenant_id: str, at: float) -> None:
        """Drop the id's overrides and revoke its keys from `at` (earlier revocations stand)."""
        c.execute("DELETE FROM admin_overrides WHERE tenant = ?", (tenant_id,))
        c.execute(
            "UPDATE api_keys SET revoked_at = min(coalesce(revoked_at, ?), ?) WHERE tenant = ?",
            (at, at, tenant_id),
        )

    async def touch_keys(self, last_used: dict[str, float]) -> None:
        def go(c: sqlite3.Connection) -> None:
            c.executemany(
                "UPDATE api_keys SET last_used_at = max(coalesce(last_used_at, 0), ?) "
                "WHERE sha256 = ?",
                [(t, sha) for sha, t in last_used.items()],
            )

        if last_used:
            await self._run(go)

    async def claim_alert(self, event_id: str, now: float, ttl_s: float) -> bool:
        def go(c: sqlite3.Connection) -> bool:
            c.execute("DELETE FROM alerts_sent WHERE expires_at <= ?", (now,))
            return bool(
                c.execute(
                    "INSERT OR IGNORE INTO alerts_sent VALUES (?, ?, ?)",
                    (event_id, now, now + ttl_s),
                ).rowcount
            )

        return await self._run(go)

    async def close(self) -> None:
        await self._db.close()


def _prepare(conn: sqlite3.Connection) -> None:
    conn.executescript(SCHEMA)
    cols = [r[1] for r in conn.execute("PRAGMA table_info(api_keys)").fetchall()]
    if "rate_limits" not in cols:  # a file from before rate limits
        conn.execute("ALTER TABLE api_keys ADD COLUMN rate_limits TEXT")


def _key(row: Any) -> StoredKey:
    return StoredKey(
        sha256=row[0],
        tenant=row[1],
        prefix=row[2],
        label=row[3],
        created_at=row[4],
        expires_at=row[5],
        revoked_at=row[6],
        budgets=None if row[7] is None else json.loads(row[7]),
        last_used_at=row[8],
        rate_limits=None if row[9] is None else json.loads(row[9]),
    )
