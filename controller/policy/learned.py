"""What t2 learns from traffic, kept beyond one process: per (tenant, model), the (n, c) count
table its prior is fitted from (controller.policy.prior), and the prior last fitted.

`LearnedStore` is the protocol of atomic steps the two backends (SQLite table, Redis hash, in
storage/ beside the ledger) implement. `add` increments one (n, c) cell atomically, so
replicas sharing a store merge their traffic without a lost update; `load` reads the merged
table. Size is bounded whatever the traffic: a table has at most ~2,100 cells (n is capped at
MAX_PAIR_VOTES) and a store keeps at most `max_rows` (tenant, model) tables, dropping the
least recently used. Times come from the caller (an injectable clock).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

from controller.policy.prior import LeaderPrior

DEFAULT_MAX_ROWS = 4096
Pair = tuple[int, int]


@dataclass
class Learned:
    """One (tenant, model)'s learned state: the count table and the prior last fitted."""

    counts: Counter[Pair] = field(default_factory=Counter)
    prior: LeaderPrior | None = None


class LearnedStore(Protocol):
    async def load(self, tenant: str, model: str, now: float) -> Learned:
        """The (tenant, model)'s table (empty if none); marks it used at `now`."""
        ...

    async def add(self, tenant: str, model: str, pair: Pair, now: float) -> None:
        """Count one finished question's pair, atomically; drops the least recently used
        tables beyond the store's bound."""
        ...

    async def set_prior(self, tenant: str, model: str, prior: LeaderPrior, now: float) -> None:
        """Record the prior refitted from the table (for inspection and a warm restart)."""
        ...

    async def rows(self) -> int:
        """How many (tenant, model) tables the store holds."""
        ...

    async def close(self) -> None: ...


class MemoryLearnedStore:
    """`LearnedStore` in memory (one process, forgotten at exit): tests and store-less runs."""

    def __init__(self, max_rows: int = DEFAULT_MAX_ROWS) -> None:
        self.max_rows = max_rows
        self._rows: dict[tuple[str, str], tuple[Learned, float]] = {}

    def _touch(self, key: tuple[str, str], now: float) -> Learned:
        learned = self._rows.pop(key, (Learned(), now))[0]
        self._rows[key] = (learned, now)
        while len(self._rows) > self.max_rows:
            oldest = min(self._rows, key=lambda k: self._rows[k][1])
            del self._rows[oldest]
        return learned

    async def load(self, tenant: str, model: str, now: float) -> Learned:
        learned = self._touch((tenant, model), now)
        return Learned(Counter(learned.counts), learned.prior)

    async def add(self, tenant: str, model: str, pair: Pair, now: float) -> None:
        self._touch((tenant, model), now).counts[pair] += 1

    async def set_prior(self, tenant: str, model: str, prior: LeaderPrior, now: float) -> None:
        self._touch((tenant, model), now).prior = prior

    async def rows(self) -> int:
        return len(self._rows)

    async def close(self) -> None:
        return None
