"""Admission: a wave that does not fit only because other requests' holds are outstanding waits
for them to settle, for a bounded time, instead of being refused.

Every wave holds its worst case (prompt + w × max_tokens) until it settles at what it really
used, usually far less. Under concurrency the holds of waves in flight can cover the whole
remaining budget while settled spend is still well below the limit; refusing then answered
181 of 200 concurrent requests with 429 and left 45% of the budget unspent, with a Retry-After
of the window's reset (16 hours) for budget that freed up a second later.

So a refusal while holds are outstanding waits, woken by any settlement or release of the
tenant's holds on this replica and polling every POLL_S for other replicas', and tries again.
A 429 then means the budget is spent net of holds: either none are outstanding (Retry-After is
the window reset) or they did not settle within the wait (Retry-After is the sooner of the
reset and HOLD_RETRY_S, when they are expected to have settled).
"""

from __future__ import annotations

import asyncio
import contextlib

POLL_S = 0.25
HOLD_RETRY_S = 1.0


class SettleSignal:
    """Wakes the requests of a tenant waiting for budget when one of its holds settles."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def fire(self, tenant: str) -> None:
        event = self._events.pop(tenant, None)
        if event is not None:
            event.set()

    async def wait(self, tenant: str, timeout_s: float) -> None:
        """Until the next settlement of `tenant`'s holds here, or `timeout_s`."""
        event = self._events.setdefault(tenant, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout=max(0.0, timeout_s))
