"""The one way every SQLite store reaches its file: a connection on a worker thread, and one
`BEGIN IMMEDIATE` transaction per step.

`BEGIN IMMEDIATE` takes the write lock before reading, so processes sharing the file (several
uvicorn workers) serialise their steps without a lost update. The worker thread waits for the
lock (`busy_timeout_ms`), so the event loop never blocks on it. A store on the hot path (the
ledger) also opens an `inline` connection with no busy timeout: a step first runs on the loop's
thread there (~0.1 ms, a thread hop costs more than the transaction) and moves to the worker
only if another connection holds the lock.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal, TypeVar

from controller.stores import StoreUnavailable

T = TypeVar("T")
Step = Callable[[sqlite3.Connection], T]


def transaction(conn: sqlite3.Connection, fn: Step[T]) -> T:
    """`fn` in one `BEGIN IMMEDIATE` transaction: committed if it returns, rolled back if not."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result


def _busy(exc: sqlite3.OperationalError) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)


UNUSABLE = frozenset(
    (
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_READONLY,
    )
)
"""Primary result codes that say the file cannot be used now (still locked after the busy
timeout, full, unreadable, read-only), not that a statement is wrong."""


def openable(path: str | Path) -> str | None:
    """Why a SQLite store could not use the file at `path` (None: it can; the file and its
    folder are created as the store would), checked before a server starts on it."""
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot make its folder ({exc})"
    try:
        conn = sqlite3.connect(path)
        try:
            conn.execute("PRAGMA schema_version")
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return f"cannot open {str(path)!r} as a SQLite database ({exc})"
    return None


class SQLiteDatabase:
    """One store's connection(s) to a SQLite file in WAL mode (created with its folder).

    `prepare` creates or migrates the store's tables on each new connection."""

    def __init__(
        self,
        path: str | Path,
        prepare: Callable[[sqlite3.Connection], None],
        *,
        thread_name: str,
        busy_timeout_ms: int = 10_000,
        synchronous: Literal["NORMAL", "FULL"] | None = None,
        inline: bool = False,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._prepare = prepare
        self._synchronous = synchronous
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)
        self._conn = self._pool.submit(self._connect, busy_timeout_ms).result()
        self._inline = self._connect(0) if inline else None
        self._closed = False

    def _connect(self, busy_timeout_ms: int) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        conn.execute("PRAGMA journal_mode=WAL")
        if self._synchronous is not None:
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
        self._prepare(conn)
        return conn

    async def run(self, fn: Step[T], *, write: bool = True) -> T:
        """`fn` in one transaction (`write=False`: as it is, for reads that need no lock).
        StoreUnavailable when the file cannot be used now (UNUSABLE)."""
        try:
            return await self._run(fn, write)
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF not in UNUSABLE:
                raise
            raise StoreUnavailable(f"the SQLite file {self.path}: {exc}") from exc

    async def _run(self, fn: Step[T], write: bool) -> T:
        if write and self._inline is not None:
            try:
                return transaction(self._inline, fn)
            except sqlite3.OperationalError as exc:
                if not _busy(exc):
                    raise

        def go() -> T:
            return transaction(self._conn, fn) if write else fn(self._conn)

        return await asyncio.get_running_loop().run_in_executor(self._pool, go)

    async def close(self) -> None:
        """Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._inline is not None:
            self._inline.close()
        await asyncio.get_running_loop().run_in_executor(self._pool, self._conn.close)
        self._pool.shutdown(wait=True)
