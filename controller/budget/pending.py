"""Pending settles: spend the ledger's store could not take, kept on the replica until it does.

A wave's spend happened whether or not the store answered its settle. When every try of a
settle fails (the store down longer than the in-wave retries), the server writes the settle to
a durable local journal (a `PendingSettleStore`, storage/sqlite/pending.py): the exact `Hold`
its last try built (the windows of when the spend happened, and the spend-log entry) and its
cost. `replay` offers each to the store again, oldest first, and removes it once the store has
taken it; the server runs it in the background with backoff, and at start-up.

Replaying is safe because every backend's settle is idempotent by (tenant, request, wave): a
try that committed but lost its reply is answered as a duplicate with what it charged then, so
it never bills twice. And a settle charges even when its hold has expired or is gone (the
store deletes the hold if it is still there), so a late settle still charges what was spent,
even past the tenant's budget: it was spent.

Each entry names its format (`FORMAT`): a server refuses an entry of a format it does not know
rather than guess at it, and the journal leaves it for a server that does (a newer version's,
after a rollback), replaying the others meanwhile.

How the request ended (`PendingFinish`, the store's `finish_log`) waits in the journal too,
behind its request's settles: it sets the record's samples and trues up its per-model
breakdown, so it must come after the settles that add to them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from controller.budget.ledger import Hold, LedgerStore, Limit, SettleOutcome, SpendEntry
from controller.budget.pricing import ZERO, Cost
from controller.budget.windows import WindowSpan
from controller.shield import shielded
from controller.stores import StoreUnavailable

FORMAT = 1
"""The version of `encode`'s text; an entry without one is of the first format."""


@dataclass(frozen=True)
class PendingSettle:
    """A settle as its last try built it. `unit` is the request's cost unit ("currency",
    "flops" or "tokens"): what the replica's spend counter files the charge under."""

    hold: Hold
    cost: Cost
    unit: str

    @property
    def key(self) -> tuple[str, str, int]:
        """(tenant, request id, wave): the settle's idempotency key, and the journal's."""
        return self.hold.tenant, self.hold.request_id, self.hold.wave


@dataclass(frozen=True)
class PendingFinish:
    """How a request ended, to note on its spend-log record once its settles are in."""

    tenant: str
    request_id: str
    stop_reason: str | None
    status: int
    samples: int


def encode(settle: PendingSettle) -> str:
    """The journal's text of a pending settle (JSON; floats round-trip exactly)."""
    h = settle.hold
    body = {
        "v": FORMAT,
        "tenant": h.tenant,
        "request_id": h.request_id,
        "wave": h.wave,
        "now": h.now,
        "ttl_s": h.ttl_s,
        "limits": [
            {
                "span": asdict(lim.span),
                "unit": lim.unit,
                "limit": lim.limit,
                "hard": lim.hard,
                "scope": lim.scope,
                "kind": lim.kind,
            }
            for lim in h.limits
        ],
        "entry": asdict(h.entry) if h.entry is not None else None,
        "cost": asdict(settle.cost),
        "unit": settle.unit,
    }
    return json.dumps(body, separators=(",", ":"))


def decode(text: str) -> PendingSettle:
    """The pending settle `encode` wrote; ValueError when `text` is none this server can read
    (malformed, or of another format)."""
    try:
        d = json.loads(text)
        version = d.get("v", 1)
    except (ValueError, AttributeError) as exc:
        raise ValueError(f"not a pending settle: {exc}") from exc
    if version != FORMAT:
        raise ValueError(f"a pending settle of format {version!r}; this server reads {FORMAT}")
    try:
        return _decode(d)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"a malformed pending settle: {exc!r}") from exc


def _decode(d: dict[str, Any]) -> PendingSettle:
    limits = tuple(
        Limit(WindowSpan(**x["span"]), x["unit"], x["limit"], x["hard"], x["scope"], x["kind"])
        for x in d["limits"]
    )
    entry = SpendEntry(**d["entry"]) if d["entry"] is not None else None
    hold = Hold(
        d["tenant"], d["request_id"], d["wave"], 0, ZERO, ZERO, limits, d["now"], d["ttl_s"],
        entry=entry,
    )  # fmt: skip
    return PendingSettle(hold, Cost(**d["cost"]), d["unit"])


class PendingSettleStore(Protocol):
    """The journal: durable before `add` returns, keyed by the settle's key (adding the same
    settle again replaces it)."""

    async def add(self, settle: PendingSettle) -> None: ...

    async def add_finish(self, finish: PendingFinish) -> None: ...

    async def settles(self) -> list[PendingSettle]:
        """Every pending settle this server can read, oldest first (one it cannot `decode`
        stays in the journal, and in `count`, for a server that can)."""
        ...

    async def finishes(self) -> list[PendingFinish]:
        """The pending finishes whose request has no settle pending, oldest first."""
        ...

    async def remove(self, settle: PendingSettle) -> bool:
        """Drop it; True when this call did (another process replaying the same journal may
        have first)."""
        ...

    async def remove_finish(self, finish: PendingFinish) -> bool: ...

    async def count(self) -> int:
        """Pending settles."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class Replayed:
    """A settle the store took: `outcome.duplicate` when an earlier try had committed it;
    `removed` when this replay took it off the journal (count it then, and only then)."""

    settle: PendingSettle
    outcome: SettleOutcome
    removed: bool


@dataclass
class ReplayReport:
    """One pass: the settles the store took, the finishes noted, the settles that failed and
    the error that ended the pass early (None: every pending entry was offered)."""

    settled: list[Replayed] = field(default_factory=list)
    finished: int = 0
    failed: int = 0
    error: Exception | None = None


async def replay(
    journal: PendingSettleStore,
    store: LedgerStore,
    on_settled: Callable[[Replayed], None] = lambda _: None,
) -> ReplayReport:
    """Offer every pending settle to the store, oldest first, then the finishes whose settles
    are all in. A store that cannot be used (`StoreUnavailable`) ends the pass: the rest would
    fail the same way. Any other error skips that entry, which stays for the next pass.
    `on_settled` is told of each settle the store took as soon as it is off the journal, with
    no await in between, so a pass cancelled at any point loses no count of it: a cancel that
    arrives while the removal runs (it finishes on the journal's thread regardless) waits for
    it, and is raised once the settle is counted."""
    report = ReplayReport()
    for pending in await journal.settles():
        try:
            outcome = await store.settle(pending.hold, pending.cost)
        except StoreUnavailable as exc:
            report.failed, report.error = report.failed + 1, exc
            return report
        except Exception as exc:
            report.failed, report.error = report.failed + 1, exc
            continue
        removed, cancelled = await shielded(journal.remove(pending))
        done = Replayed(pending, outcome, removed)
        on_settled(done)
        report.settled.append(done)
        if cancelled:
            raise asyncio.CancelledError
    for finish in await journal.finishes():  # those of requests with no settle left
        try:
            await store.finish_log(
                finish.tenant, finish.request_id, finish.stop_reason, finish.status, finish.samples
            )
        except Exception as exc:
            report.error = exc
            return report
        await journal.remove_finish(finish)
        report.finished += 1
    return report
