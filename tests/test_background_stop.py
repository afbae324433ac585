"""The server's background loops stop when the server does, even when a store's client swallows
a cancellation: redis-py 8.2 was seen returning a command's reply to a task cancelled while the
command ran, and the admin state's poll then ran on while the app's shutdown awaited it for ever
(15% of app stops against Redis, under load). The Redis client raises such a cancellation again
(storage.redis.connection), checked here on a real Redis with redis-py's swallow made certain;
and a loop still stops when a store swallows one every time (a real SQLite admin store made to)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from server.admin_state import AdminSync
from server.background import stop
from server.config import LedgerConfig
from storage.redis.connection import connect
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


async def test_the_redis_client_raises_a_cancellation_redis_py_swallowed(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command, and a pipeline, cancelled while it ran raise CancelledError, even where
    redis-py returns the reply instead (made certain here: the command waits, swallows the
    cancel, then really runs on the real Redis)."""
    real_command = aioredis.Redis.execute_command
    real_pipeline = aioredis.client.Pipeline.execute

    async def swallowing_command(self: aioredis.Redis, *args: object, **kw: object) -> object:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(3600)
        return await real_command(self, *args, **kw)

    async def swallowing_pipeline(self: aioredis.client.Pipeline, raise_on_error: bool = True
                                  ) -> object:  # fmt: skip
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(3600)
        return await real_pipeline(self, raise_on_error)

    client = connect(redis_url)
    try:
        await client.set("swallow", "1")
        monkeypatch.setattr(aioredis.Redis, "execute_command", swallowing_command)
        monkeypatch.setattr(aioredis.client.Pipeline, "execute", swallowing_pipeline)

        async def command() -> object:
            return await client.get("swallow")

        async def pipelined() -> object:
            async with client.pipeline() as pipe:
                pipe.get("swallow")
                return await pipe.execute()

        for call in (command, pipelined):
            task = asyncio.create_task(call())
            await asyncio.sleep(0.05)  # in flight: waiting inside redis-py's command
            assert not task.done()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, STOP_WITHIN_S)
    finally:
        monkeypatch.undo()
        await client.aclose()
