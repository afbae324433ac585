"""Work that must finish even when it is cancelled (a client hang-up, a server stopping):
settling spend, recording a hold the ledger granted, closing a request's billing, taking a replayed
settle off the journal."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def shielded(work: Awaitable[T]) -> tuple[T, bool]:
    """Run `work` to completion even if cancelled meanwhile, however often; (its result, whether
    a cancellation arrived). The caller re-raises it once its own bookkeeping is done."""
    task = asyncio.ensure_future(work)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
    return task.result(), cancelled


async def uncancellable(work: Awaitable[None]) -> None:
    """Run `work` to completion; re-raise a cancellation that arrived meanwhile, afterwards."""
    _, cancelled = await shielded(work)
    if cancelled:
        raise asyncio.CancelledError
