"""The one way every SQLite store reaches its file: a connection on a worker thread, and one
`BEGIN IMMEDIATE` transaction per step.

`BEGIN IMMEDIATE` takes the write lock before reading, so processes sharing the file (several
uvicorn workers) serialise their steps without a lost update. The worker thread waits for the
lock (`busy_timeout_ms`), so the event loop never blocks on it. A store on the hot path (the
ledger) also opens an `inline` connection with no busy timeout: a step first runs on the loop's
thread there (~0.1 ms, a thread hop costs more than the transaction) and moves to the worker
only if another connection holds the lock.

Nothing touches the file until the first step: the worker thread opens it then (folder, file,
pragmas, the store's `prepare`, the inline connection), inside `run`, so an open that fails
(unopenable, locked, full, corrupt) is a StoreUnavailable like any step's, is retried by the
next step, and never waits on the event loop.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
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


def _code(exc: sqlite3.Error) -> int:
    """`exc`'s primary result code (0 when sqlite3 raised it without one)."""
    return (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF


OPEN_RETRY_S = 0.01
"""Pause between tries of a first open that met another connection's lock."""

UNUSABLE = frozenset(
    (
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_CORRUPT,
        sqlite3.SQLITE_NOTADB,
    )
)
"""Primary result codes that say the file cannot be used now (still locked after the busy
timeout, full, unreadable or unopenable, read-only, corrupt or not a database), not that a
statement is wrong."""


def openable(path: str | Path) -> str | None:
    """Why a SQLite store could not use the file at `path` (None: it can; the file and its
    folder are created as the store would), checked before a server starts on it."""
    return _folder_made(Path(path)) or _opens(path, str(path))


def writable(path: str | Path) -> str | None:
    """Why a SQLite store could not write the file at `path` (None: it can), checked without
    making anything: the nearest folder on its path that exists must take new entries (the
    store makes the folders below it, then the file and its -wal and -shm); a file already
    there must be a SQLite database this process can write."""
    path = Path(path).absolute()
    nearest = next(p for p in path.parents if p.exists())
    if not nearest.is_dir():
        return f"cannot make its folder ({str(nearest)!r} is not a folder)"
    if not os.access(nearest, os.W_OK | os.X_OK):
        return f"cannot write in its folder {str(nearest)!r}"
    if not path.exists():
        return None
    if not os.access(path, os.R_OK | os.W_OK):
        return f"cannot write {str(path)!r}"
    return _opens(path, f"{path.resolve().as_uri()}?mode=rw", uri=True)  # never makes it


def _folder_made(path: Path) -> str | None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot make its folder ({exc})"
    return None


def _opens(path: str | Path, target: str, uri: bool = False) -> str | None:
    try:
        conn = sqlite3.connect(target, uri=uri)
        try:
            conn.execute("PRAGMA schema_version")
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return f"cannot open {str(path)!r} as a SQLite database ({exc})"
    return None


class SQLiteDatabase:
    """One store's connection(s) to a SQLite file in WAL mode (created with its folder).

    `prepare` creates or migrates the store's tables; it runs on the worker's connection when
    the first step opens the file (and again at the next step if that open failed)."""

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
        self._prepare = prepare
        self._busy_timeout_ms = busy_timeout_ms
        self._synchronous = synchronous
        self._want_inline = inline
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)
        self._conn: sqlite3.Connection | None = None  # the worker's; opened by the first step
        self._inline: sqlite3.Connection | None = None  # the loop's; set once the file is open
        self._closed = False

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
            conn.execute("PRAGMA journal_mode=WAL")
            if self._synchronous is not None:
                conn.execute(f"PRAGMA synchronous={self._synchronous}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _open(self) -> sqlite3.Connection:
        """The worker's connection, opening the file first if no step has yet (on the worker
        thread: every wait here is the worker's). The inline connection is made here too,
        waiting like the worker while it sets up, and only then loses its busy timeout."""
        if self._conn is not None:
            return self._conn
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(f"the SQLite file {self.path}: {exc}") from exc
        # Stores on one new file open together (the ledger, admin and learned stores at a
        # server's first requests, replicas starting at once), and switching a file to WAL
        # can fail "locked" at once, without the busy handler: retry within the busy timeout.
        give_up = time.monotonic() + self._busy_timeout_ms / 1000
        while True:
            try:
                conn, inline = self._open_once()
                break
            except sqlite3.OperationalError as exc:
                if not _busy(exc) or time.monotonic() >= give_up:
                    raise
                time.sleep(OPEN_RETRY_S)
        self._conn, self._inline = conn, inline
        return conn

    def _open_once(self) -> tuple[sqlite3.Connection, sqlite3.Connection | None]:
        conn = self._connect()
        inline = None
        try:
            self._prepare(conn)
            if self._want_inline:
                inline = self._connect()
                inline.execute("PRAGMA busy_timeout=0")
        except BaseException:
            conn.close()
            if inline is not None:
                inline.close()
            raise
        return conn, inline

    async def run(self, fn: Step[T], *, write: bool = True) -> T:
        """`fn` in one transaction (`write=False`: as it is, for reads that need no lock), the
        file opened first if it is not yet. StoreUnavailable when the file cannot be used now
        (UNUSABLE, or its folder cannot be made)."""
        try:
            return await self._run(fn, write)
        except sqlite3.DatabaseError as exc:  # OperationalError, and NOTADB / CORRUPT
            if _code(exc) not in UNUSABLE:
                raise
            raise StoreUnavailable(f"the SQLite file {self.path}: {exc}") from exc

    async def _run(self, fn: Step[T], write: bool) -> T:
        inline = self._inline
        if write and inline is not None:
            try:
                return transaction(inline, fn)
            except sqlite3.OperationalError as exc:
                if not _busy(exc):
                    raise

        def go() -> T:
            conn = self._open()
            return transaction(conn, fn) if write else fn(conn)

        return await asyncio.get_running_loop().run_in_executor(self._pool, go)

    async def close(self) -> None:
        """Idempotent. Waits (off the loop) for a step or an open still on the worker."""
        if self._closed:
            return
        self._closed = True
        inline, self._inline = self._inline, None  # no step runs on the loop's thread now

        def shut() -> None:  # after any open still queued, which may have set new ones
            for conn in (inline, self._inline, self._conn):
                if conn is not None:
                    conn.close()

        await asyncio.get_running_loop().run_in_executor(self._pool, shut)
        self._pool.shutdown(wait=True)
