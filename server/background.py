"""Stopping the server's background loops (the admin state's poll, the pending-settles replayer)
for good.

Why: a store's client can swallow a cancellation. redis-py 8.2 was seen returning a command's
reply to a task cancelled while the command ran (`RedisAdminStore.version`, under load: about
one app stop in a hundred), so the loop ran on, and a shutdown that cancelled it once and then
awaited it waited for ever. So a loop runs `while not stopping()`, which sees a cancellation an
await swallowed, and `stop` cancels again until the task has ended.
"""

from __future__ import annotations

import asyncio
import contextlib

STOP_RETRY_S = 0.5
"""How long a cancelled task may take to end before it is cancelled again."""


def stopping() -> bool:
    """Whether the current task has been cancelled, even if the await the cancellation landed
    in swallowed it (the task still counts it: `Task.cancelling`)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def stop(task: asyncio.Task[None]) -> None:
    """Cancel `task` and wait until it has ended, cancelling it again every STOP_RETRY_S while it
    runs on. What it ended with (cancelled, an error) is not raised: it is stopping."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=STOP_RETRY_S)
    with contextlib.suppress(asyncio.CancelledError, Exception):
        task.result()  # retrieved, so asyncio does not log it as never retrieved
