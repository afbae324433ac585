"""The server's background loops stop when the server does, even when a store's client swallows
a cancellation: redis-py 8.2 was seen returning a command's reply to a task cancelled while the
command ran, and the admin state's poll then ran on while the app's shutdown awaited it for ever
(about one app stop in a hundred against Redis, under load). Here a real SQLite admin store is
made to swallow one, every time, at the moment the poll is cancelled."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from server.admin_state import AdminSync
from server.background import stop
from server.config import LedgerConfig
from storage.sqlite.admin import SQLiteAdminStore

STOP_WITHIN_S = 30  # the loop needs a second cancel, 0.5 s later; a loaded box is slow too


class SwallowingStore(SQLiteAdminStore):
    """A real store whose version read, once the poll is running, waits and answers even when
    cancelled meanwhile, as the redis-py client did."""

    slow = False

    async def version(self) -> int:
        if self.slow:
            with contextlib.suppress(asyncio.CancelledError):  # swallowed: the read "completed"
                await asyncio.sleep(3600)
        return await super().version()


async def test_the_admin_poll_stops_though_its_store_swallows_the_cancel(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    store = SwallowingStore(path)
    sync = AdminSync(LedgerConfig(path=str(path)), lambda: None, poll_s=0.01, store=store)
    await sync.start()
    store.slow = True
    await asyncio.sleep(0.1)  # the poll now waits in `version`, where the cancel will land
    await asyncio.wait_for(sync.aclose(), STOP_WITHIN_S)


async def test_stop_ends_a_loop_that_swallows_cancels_and_keeps_its_error_quiet() -> None:
    swallowed = 0

    async def loop() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                swallowed += 1
                if swallowed == 3:
                    raise ValueError("ended badly") from None

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)
    await asyncio.wait_for(stop(task), STOP_WITHIN_S)
    assert task.done() and swallowed == 3
