"""This replica's journal of settles the ledger's store could not take, and the task that
replays them (controller.budget.pending holds the entries and one replay pass).

A request whose settle fails past its in-wave retries hands the settle to `PendingSettles.keep`
(durable before it returns) and reports the wave's cost as pending; from then on the journal
owns it: the request's handle neither retries it nor releases its hold (the store deletes the
hold when the replayed settle lands, or its TTL frees it). A background task replays the
journal with backoff (REPLAY_BACKOFF_S) until the store takes every entry, and is woken early
when a ledger call of this replica succeeds again. At start-up a journal left by an earlier run
(a crash, a restart mid-outage) is replayed first. With nothing left to replay, the task still
looks at the journal every SWEEP_S: workers of one replica share its file, and a worker that
journaled settles and then stopped for good (scaled down, crashed) leaves them to the others.

The journal file is opened only when a settle is first kept, or at start when it exists, so a
server whose store never fails never creates it. A settle kept once the server has stopped
(`close`: a request still running then) is written on a handle of its own, closed at once, and
starts no replay: the next start replays it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from controller.budget.ledger import LedgerStore
from controller.budget.pending import (
    PendingFinish,
    PendingSettle,
    PendingSettleStore,
    Replayed,
    ReplayReport,
    replay,
)
from controller.stores import StoreUnavailable
from server import metrics
from server.background import stop, stopping
from server.billing.admission import SettleSignal
from server.billing.prices import count_spend

log = logging.getLogger("t2serve.billing")
REPLAY_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
"""Waits between replay passes while the store still refuses (the last one repeats)."""
SWEEP_S = 60.0
"""How often an idle replayer looks for settles another worker left in the shared journal (a
stat while there is no file; a count once there is)."""


class PendingSettles:
    """One per app (the budget provider's): the journal at `path`, opened by `open_journal`,
    replayed into the ledger store `store()` gives."""

    def __init__(
        self,
        path: Path,
        open_journal: Callable[[], PendingSettleStore],
        store: Callable[[], LedgerStore],
        settles: SettleSignal,
        backoff_s: tuple[float, ...] = REPLAY_BACKOFF_S,
        sweep_s: float = SWEEP_S,
    ) -> None:
        self.path = path
        self._open_journal = open_journal
        self._store = store
        self._settles = settles
        self._backoff_s = backoff_s
        self._sweep_s = sweep_s
        self._journal: PendingSettleStore | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._pass = asyncio.Lock()
        self.pending = 0  # settles in the journal, as of the last write or pass
        self._closed = False  # `close` ran: the server is stopping
        self._store_down = False  # the last pass ended on a store that could not be used

    def _opened(self) -> PendingSettleStore:
        if self._journal is None:
            self._journal = self._open_journal()
        return self._journal

    async def start(self) -> None:
        """Replay what an earlier run left, then sweep (without a journal, only the sweep)."""
        if self._task is not None:
            return
        if self.path.exists():
            try:
                self.pending = await self._opened().count()
                metrics.set_settles_pending(self.pending)
                log.info("%d settle(s) pending in %s: replaying", self.pending, self.path)
            except Exception:  # the replay task keeps trying; the server starts regardless
                log.exception("reading the pending settles in %s failed", self.path)
        self._run()

    async def _write(self, step: Callable[[PendingSettleStore], Awaitable[None]]) -> None:
        """`step` on the journal; once the server has stopped (before or during the write), on
        a handle of its own, closed after (the step is an upsert: trying it again is safe)."""
        if not self._closed:
            try:
                await step(self._opened())
                return
            except Exception:
                if not self._closed:
                    raise
        journal = self._open_journal()
        try:
            await step(journal)
        finally:
            await journal.close()

    async def keep(self, settle: PendingSettle) -> bool:
        """Write the settle to the journal (fsynced) and wake the replayer; False when even
        the journal cannot take it (then the caller keeps the old fallback). Once the server
        has stopped, it is only written, for the next start to replay."""
        try:
            await self._write(lambda journal: journal.add(settle))
        except Exception:
            log.exception("journaling settle %s failed", settle.key)
            return False
        # It is the journal's now, whatever happens next: were this False, the request would
        # settle it too, and the replay would count its spend a second time.
        if self._closed:
            log.warning("settle %s kept in %s for the next start", settle.key, self.path)
            return True
        try:
            self.pending = await self._opened().count()
        except Exception:
            log.exception("counting the pending settles in %s failed", self.path)
            self.pending += 1
        metrics.set_settles_pending(self.pending)
        log.warning("settle %s kept in %s until the ledger takes it", settle.key, self.path)
        self._run()
        return True

    async def keep_finish(self, finish: PendingFinish) -> bool:
        """Note how a request ended once its pending settles are in."""
        try:
            await self._write(lambda journal: journal.add_finish(finish))
        except Exception:
            log.exception("journaling the end of %s failed", finish.request_id)
            return False
        self._run()
        return True

    def wake(self) -> None:
        """The store answered this replica again: replay now rather than at the next backoff,
        if the last pass ended because the store could not be used (an entry that failed for
        its own sake would fail again: every reserve would start a pass)."""
        if self.pending and self._task is not None and self._store_down:
            self._wake.set()

    async def replay(self) -> ReplayReport:
        """One pass over the journal now (the task's step; tests call it too)."""
        async with self._pass:
            report = await replay(self._opened(), self._store(), self._count)
            self._store_down = isinstance(report.error, StoreUnavailable)
            self.pending = await self._opened().count()
        metrics.set_settles_pending(self.pending)
        metrics.inc_settle_replay("failed", report.failed)
        if report.settled or report.finished:
            log.info(
                "replayed %d pending settle(s) and %d finish(es); %d left",
                len(report.settled), report.finished, self.pending,
            )  # fmt: skip
        if report.error is not None:
            log.warning("replaying pending settles: %s; %d left", report.error, self.pending)
        return report

    def _count(self, done: Replayed) -> None:
        """A settle the store took: counted by the pass that took it off the journal, once
        (another worker replaying the same file may have been first)."""
        if done.removed:
            settle = done.settle
            count_spend(settle.hold.tenant, settle.unit, done.outcome.cost)
            metrics.inc_settle_replay("duplicate" if done.outcome.duplicate else "settled")
            self._settles.fire(settle.hold.tenant)

    def _run(self) -> None:
        """Start the replay task if it is not running, and wake it (not once the server has
        stopped: nothing would cancel it)."""
        if self._closed:
            return
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._replay_until_empty())

    async def _replay_until_empty(self) -> None:
        tries = 0
        while not stopping():  # a store client may swallow the cancellation (server.background)
            self._wake.clear()  # a settle kept during this pass sets it again
            done = self._journal is None and not self.path.exists()  # nothing journaled yet
            if not done:
                try:
                    report = await self.replay()
                    done = report.error is None and not self.pending
                except Exception:  # the journal itself failed: try again later
                    log.exception("replaying pending settles failed")
            if done:
                tries = 0
                with contextlib.suppress(TimeoutError):  # until a settle is kept, or the sweep
                    await asyncio.wait_for(self._wake.wait(), self._sweep_s)
                continue
            wait = self._backoff_s[min(tries, len(self._backoff_s) - 1)]
            tries += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def close(self) -> None:
        """Stop replaying; what is left stays in the journal for the next start."""
        self._closed = True
        if self._task is not None:
            await stop(self._task)  # cancelled until it ends: a store client may swallow one
            self._task = None
        if self._journal is not None:
            await self._journal.close()
            self._journal = None
