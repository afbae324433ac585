"""The pending-settles journal (controller.budget.pending) on a local SQLite file.

Local to the replica whatever the ledger's backend: it holds what the ledger's store could not
take, so it must not live in that store. `synchronous=FULL` in WAL mode: a settle is on disk
(fsynced) before `add` returns, so neither a killed process nor a power loss drops it. Writes
come only from settles that failed for good, so the fsync costs nothing on the normal path.

A journal file deleted (or replaced) while the server runs would go on taking writes in the
file still open, unlinked, and lost at the next start: before each write the path is checked
to still name the file open (its st_dev and st_ino), and when it does not, the entries are
moved into the file now at the path (made anew if none is).

Tables: `pending_settles` (one row per settle, keyed like the ledger's settlements, its body
the JSON of `encode`), `pending_finishes` (one row per request: how it ended). `seq` orders
them oldest first.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from pathlib import Path
from typing import Any

from controller.budget.pending import PendingFinish, PendingSettle, decode, encode
from storage.sqlite.database import SQLiteDatabase, writable

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


Rows = list[tuple[Any, ...]]


def _identity(path: Path) -> tuple[int, int] | None:
    """Which file `path` names (None: none)."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return st.st_dev, st.st_ino


def _take(c: sqlite3.Connection) -> tuple[Rows, Rows]:
    """Every entry, oldest first, off the file (so another worker still on it moves none of
    them again)."""
    settles = c.execute(
        "SELECT tenant, request_id, wave, body FROM pending_settles ORDER BY seq"
    ).fetchall()
    finishes = c.execute(
        "SELECT tenant, request_id, stop_reason, status, samples FROM pending_finishes ORDER BY seq"
    ).fetchall()
    c.execute("DELETE FROM pending_settles")
    c.execute("DELETE FROM pending_finishes")
    return settles, finishes


def _put(c: sqlite3.Connection, settles: Rows, finishes: Rows) -> None:
    """Entries `_take` took, after those already there (which win: the same key is the same
    settle)."""
    c.executemany(
        "INSERT INTO pending_settles (tenant, request_id, wave, body) VALUES (?, ?, ?, ?) "
        "ON CONFLICT DO NOTHING",
        settles,
    )
    c.executemany(
        "INSERT INTO pending_finishes (tenant, request_id, stop_reason, status, samples) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        finishes,
    )


class SQLitePendingSettles:
    """`PendingSettleStore` on one SQLite file (created with its folder at the first step)."""

    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 10_000) -> None:
        self.path = Path(path)
        self._busy_timeout_ms = busy_timeout_ms
        self._opened_as: tuple[int, int] | None = None  # the file open, once a step opened it
        self._moving = asyncio.Lock()
        self._db = self._database()

    def _database(self) -> SQLiteDatabase:
        return SQLiteDatabase(
            self.path,
            self._prepare,
            thread_name="t2-pending-settles",
            busy_timeout_ms=self._busy_timeout_ms,
            synchronous="FULL",
        )

    def _prepare(self, conn: sqlite3.Connection) -> None:
        conn.executescript(SCHEMA)
        self._opened_as = _identity(self.path)  # the file just opened: its tables are in it

    async def _follow(self) -> None:
        """Before a write: if the path no longer names the file open (deleted or replaced),
        move the entries into the one it names. Returns at once, with no await, otherwise."""
        if self._opened_as is None or _identity(self.path) == self._opened_as:
            return
        async with self._moving:
            if self._opened_as is None or _identity(self.path) == self._opened_as:
                return  # a write waiting here behind the move
            problem = await asyncio.to_thread(writable, self.path)
            if problem is not None:  # this process still replays what the old file holds
                log.error(
                    "the pending-settles journal %s was deleted or replaced while open, and "
                    "the path %s; writing on in the old file, lost at the next start",
                    self.path, problem,
                )  # fmt: skip
                return
            await self._move()

    async def _move(self) -> None:
        old = self._db
        settles, finishes = await old.run(_take)
        # The old file closes before the new one opens: its -wal and -shm files are named as
        # the new file's would be, and SQLite would pair them with it.
        self._db, self._opened_as = self._database(), None
        await old.close()
        if not self.path.exists():  # the old file's, left behind: none of the new one's
            for suffix in ("-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        try:
            await self._db.run(lambda c: _put(c, settles, finishes))
        except Exception:
            log.error(
                "moving %d pending settle(s) into %s failed; lost: %s",
                len(settles), self.path, [tuple(r[:3]) for r in settles],
            )  # fmt: skip
            raise
        log.warning(
            "the pending-settles journal %s was deleted or replaced while open; its %d "
            "settle(s) and %d finish(es) moved into the file now there",
            self.path, len(settles), len(finishes),
        )  # fmt: skip

    async def add(self, settle: PendingSettle) -> None:
        await self._follow()

        def go(c: sqlite3.Connection) -> None:
            c.execute(
                "INSERT INTO pending_settles (tenant, request_id, wave, body) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (tenant, request_id, wave) DO UPDATE SET body = excluded.body",
                (*settle.key, encode(settle)),
            )

        await self._db.run(go)

    async def add_finish(self, finish: PendingFinish) -> None:
        await self._follow()

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
        async with self._moving:  # a move under way finishes first: it holds entries
            await self._db.close()
