"""`LearnedStore` in the ledger's SQLite file: t2's count tables, one row per (n, c) cell.

Each step is one `BEGIN IMMEDIATE` transaction on a worker thread (`storage.sqlite.database`),
so two processes sharing the file (workers) merge their counts without a lost update.
`t2_learned_rows` holds one row per (tenant, model) with its last use; beyond `max_rows` the
least recently used goes, cells too.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from pathlib import Path

from controller.policy.learned import DEFAULT_MAX_ROWS, Learned, Pair
from controller.policy.prior import LeaderPrior
from storage.sqlite.database import SQLiteDatabase

SCHEMA = """
CREATE TABLE IF NOT EXISTS t2_learned_rows (
    tenant TEXT NOT NULL, model TEXT NOT NULL, used_at REAL NOT NULL,
    prior_a REAL, prior_b REAL, PRIMARY KEY (tenant, model)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS t2_learned_rows_used ON t2_learned_rows (used_at);
CREATE TABLE IF NOT EXISTS t2_learned (
    tenant TEXT NOT NULL, model TEXT NOT NULL, n INTEGER NOT NULL, c INTEGER NOT NULL,
    count INTEGER NOT NULL, PRIMARY KEY (tenant, model, n, c)
) WITHOUT ROWID;
"""


class SQLiteLearnedStore:
    def __init__(
        self, path: str | Path, *, max_rows: int = DEFAULT_MAX_ROWS, busy_timeout_ms: int = 10_000
    ) -> None:
        self.max_rows = max_rows
        self._db = SQLiteDatabase(
            path,
            _prepare,
            thread_name="t2-learned-sqlite",
            busy_timeout_ms=busy_timeout_ms,
        )
        self.path = self._db.path
        self._run = self._db.run

    def _touch(self, c: sqlite3.Connection, tenant: str, model: str, now: float) -> None:
        c.execute(
            "INSERT INTO t2_learned_rows (tenant, model, used_at) VALUES (?, ?, ?) "
            "ON CONFLICT (tenant, model) DO UPDATE SET used_at = max(used_at, excluded.used_at)",
            (tenant, model, now),
        )
        (rows,) = c.execute("SELECT count(*) FROM t2_learned_rows").fetchone()
        if rows > self.max_rows:
            gone = c.execute(
                "SELECT tenant, model FROM t2_learned_rows ORDER BY used_at LIMIT ?",
                (rows - self.max_rows,),
            ).fetchall()
            c.executemany("DELETE FROM t2_learned WHERE tenant = ? AND model = ?", gone)
            c.executemany("DELETE FROM t2_learned_rows WHERE tenant = ? AND model = ?", gone)

    async def load(self, tenant: str, model: str, now: float) -> Learned:
        def go(c: sqlite3.Connection) -> Learned:
            self._touch(c, tenant, model, now)
            cells = c.execute(
                "SELECT n, c, count FROM t2_learned WHERE tenant = ? AND model = ?",
                (tenant, model),
            ).fetchall()
            a, b = c.execute(
                "SELECT prior_a, prior_b FROM t2_learned_rows WHERE tenant = ? AND model = ?",
                (tenant, model),
            ).fetchone()
            prior = LeaderPrior(a, b) if a is not None and b is not None else None
            return Learned(Counter({(int(n), int(k)): int(v) for n, k, v in cells}), prior)

        return await self._run(go)

    async def add(self, tenant: str, model: str, pair: Pair, now: float) -> None:
        def go(c: sqlite3.Connection) -> None:
            self._touch(c, tenant, model, now)
            c.execute(
                "INSERT INTO t2_learned VALUES (?, ?, ?, ?, 1) "
                "ON CONFLICT (tenant, model, n, c) DO UPDATE SET count = count + 1",
                (tenant, model, int(pair[0]), int(pair[1])),
            )

        await self._run(go)

    async def set_prior(self, tenant: str, model: str, prior: LeaderPrior, now: float) -> None:
        def go(c: sqlite3.Connection) -> None:
            self._touch(c, tenant, model, now)
            c.execute(
                "UPDATE t2_learned_rows SET prior_a = ?, prior_b = ? "
                "WHERE tenant = ? AND model = ?",
                (prior.a, prior.b, tenant, model),
            )

        await self._run(go)

    async def rows(self) -> int:
        def go(c: sqlite3.Connection) -> int:
            return int(c.execute("SELECT count(*) FROM t2_learned_rows").fetchone()[0])

        return await self._run(go)

    async def close(self) -> None:
        """Idempotent."""
        await self._db.close()


def _prepare(conn: sqlite3.Connection) -> None:
    conn.executescript(SCHEMA)
