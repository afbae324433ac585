"""The pending-settles journal (controller.budget.pending) on a local SQLite file.

Local to the replica whatever the ledger's backend: it holds what the ledger's store could not
take, so it must not live in that store. `synchronous=FULL` in WAL mode: a settle is on disk
(fsynced) before `add` returns, so neither a killed process nor a power loss drops it. Writes
come only from settles that failed for good, so the fsync costs nothing on the normal path.

Tables: `pending_settles` (one row per settle, keyed like the ledger's settlements, its body
the JSON of `encode`), `pending_finishes` (one row per request: how it ended). `seq` orders
them oldest first.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

from controller.budget.pending import PendingFinish, PendingSettle, decode, encode
from storage.sqlite.database import SQLiteDatabase

log = logging.getLogger("t2serve.billing")

SCHEMA = """
CREATE TABLE IF NOT EXISTS pending_settles (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL, request_id TEXT NOT NULL, wave INTEGER NOT NULL,
    body TEXT NOT NULL,
    UNIQUE (tenant, request_id, wave)
);
CREATE TABLE IF NOT EXISTS pending_finishes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL, request_id TEXT NOT NULL,
    stop_reason TEXT, status INTEGER NOT NULL, samples INTEGER NOT NULL,
    UNIQUE (tenant, request_id)
);
"""


def _prepare(conn: sqlite3.Connection) -> None:
    conn.executescript(SCHEMA)


class SQLitePendingSettles:
    """`PendingSettleStore` on one SQLite file (created with its folder at the first step)."""

    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 10_000) -> None:
        self._db = SQLiteDatabase(
            path,
            _prepare,
            thread_name="t2-pending-settles",
            busy_timeout_ms=busy_timeout_ms,
            synchronous="FULL",
        )
        self.path = self._db.path

    async def add(self, settle: PendingSettle) -> None:
        def go(c: sqlite3.Connection) -> None:
            c.execute(
                "INSERT INTO pending_settles (tenant, request_id, wave, body) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (tenant, request_id, wave) DO UPDATE SET body = excluded.body",
                (*settle.key, encode(settle)),
            )

        await self._db.run(go)

    async def add_finish(self, finish: PendingFinish) -> None:
        def go(c: sqlite3.Connection) -> None:
            c.execute(
                "INSERT INTO pending_finishes (tenant, request_id, stop_reason, status, samples) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (tenant, request_id) DO UPDATE SET "
                "stop_reason = excluded.stop_reason, status = excluded.status, "
                "samples = excluded.samples",
                (finish.tenant, finish.request_id, finish.stop_reason, finish.status,
                 finish.samples),
            )  # fmt: skip

        await self._db.run(go)

    async def settles(self) -> list[PendingSettle]:
        """Every row this server can decode, oldest first. One it cannot (another version's
        format, or damaged) is left where it is, and logged: it must not hold up the others."""

        def go(c: sqlite3.Connection) -> list[tuple[str, str, int, str]]:
            return c.execute(
                "SELECT tenant, request_id, wave, body FROM pending_settles ORDER BY seq"
            ).fetchall()

        out = []
        for tenant, request_id, wave, body in await self._db.run(go, write=False):
            try:
                out.append(decode(body))
            except ValueError as exc:
                log.error(
                    "pending settle %s in %s cannot be read (%s); left in the journal",
                    (tenant, request_id, wave), self.path, exc,
                )  # fmt: skip
        return out

    async def finishes(self) -> list[PendingFinish]:
        def go(c: sqlite3.Connection) -> list[PendingFinish]:
            rows = c.execute(
                "SELECT tenant, request_id, stop_reason, status, samples FROM pending_finishes f "
                "WHERE NOT EXISTS (SELECT 1 FROM pending_settles s WHERE s.tenant = f.tenant "
                "AND s.request_id = f.request_id) ORDER BY seq"
            )
            return [PendingFinish(*row) for row in rows]

        return await self._db.run(go, write=False)

    async def remove(self, settle: PendingSettle) -> bool:
        def go(c: sqlite3.Connection) -> bool:
            return bool(
                c.execute(
                    "DELETE FROM pending_settles WHERE tenant=? AND request_id=? AND wave=?",
                    settle.key,
                ).rowcount
            )

        return await self._db.run(go)

    async def remove_finish(self, finish: PendingFinish) -> bool:
        def go(c: sqlite3.Connection) -> bool:
            return bool(
                c.execute(
                    "DELETE FROM pending_finishes WHERE tenant=? AND request_id=?",
                    (finish.tenant, finish.request_id),
                ).rowcount
            )

        return await self._db.run(go)

    async def count(self) -> int:
        def go(c: sqlite3.Connection) -> int:
            return int(c.execute("SELECT count(*) FROM pending_settles").fetchone()[0])

        return await self._db.run(go, write=False)

    async def close(self) -> None:
        await self._db.close()
