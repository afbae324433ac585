"""t2's learned state (per tenant and model: the (n, c) table and its prior) in the ledger's
store: real SQLite and real Redis. Restarts keep it, replicas merge it, its size is bounded."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from controller.policy.learned import LearnedStore, MemoryLearnedStore
from controller.policy.prior import MAX_PAIR_VOTES, LeaderPrior, leader_pair
from controller.policy.t2 import T2
from server.sampling.policies import PolicyBook
from storage.redis.learned import RedisLearnedStore
from storage.sqlite.learned import SQLiteLearnedStore

Opener = Callable[[int], LearnedStore]


@pytest_asyncio.fixture(params=["sqlite", "redis", "memory"])
async def opener(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opener]:
    """Opens a store on one shared backing (file, database): each call is another process."""
    url = request.getfixturevalue("redis_url") if request.param == "redis" else ""
    shared = MemoryLearnedStore()
    opened: list[LearnedStore] = []

    def open_(max_rows: int = 4096) -> LearnedStore:
        store: LearnedStore
        if request.param == "sqlite":
            store = SQLiteLearnedStore(tmp_path / "ledger.sqlite", max_rows=max_rows)
        elif request.param == "redis":
            store = RedisLearnedStore(url, max_rows=max_rows)
        else:
            shared.max_rows = max_rows
            store = shared
        opened.append(store)
        return store

    yield open_
    for store in opened:
        await store.close()


async def test_counts_and_prior_survive_a_restart(opener: Opener) -> None:
    store = opener(4096)
    for pair in [(3, 3), (3, 3), (5, 4), (1, 1)]:
        await store.add("acme", "m", pair, now=1.0)
    await store.set_prior("acme", "m", LeaderPrior(4.0, 1.5), now=2.0)
    await store.close()
    again = opener(4096)
    learned = await again.load("acme", "m", now=3.0)
    assert learned.counts == {(3, 3): 2, (5, 4): 1, (1, 1): 1}
    assert learned.prior == LeaderPrior(4.0, 1.5)
    assert (await again.load("acme", "other", now=3.0)).counts == {}


async def test_replicas_merge_their_counts_without_losing_an_update(opener: Opener) -> None:
    a, b = opener(4096), opener(4096)

    async def traffic(store: LearnedStore, n: int) -> None:
        for i in range(n):
            await store.add("acme", "m", (2 + i % 3, 2), now=float(i))

    await asyncio.gather(traffic(a, 150), traffic(b, 150))
    for store in (a, b):
        learned = await store.load("acme", "m", now=1000.0)
        assert learned.counts.total() == 300
        assert learned.counts[(2, 2)] == 100


async def test_the_number_of_tables_is_bounded_least_recently_used_first(opener: Opener) -> None:
    store = opener(3)
    for i in range(10):
        await store.add(f"t{i}", "m", (2, 1), now=float(i))
    await store.load("t7", "m", now=100.0)  # t7 used last: it stays
    await store.add("t10", "m", (2, 1), now=101.0)
    assert await store.rows() == 3
    assert (await store.load("t7", "m", now=102.0)).counts == {(2, 1): 1}
    assert (await store.load("t10", "m", now=103.0)).counts == {(2, 1): 1}
    assert await store.rows() == 3
    assert (await store.load("t0", "m", now=104.0)).counts == {}  # evicted; now a new row


def test_a_table_is_bounded_whatever_the_votes() -> None:
    assert leader_pair(["x"] * 500 + ["y"] * 300) == (MAX_PAIR_VOTES, 40)
    assert leader_pair([None, None]) is None


async def test_the_policy_book_persists_t2_learning_and_restores_it(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    store = SQLiteLearnedStore(path)
    book = PolicyBook(store=store)
    policy = await book.get("acme", "m", "t2")
    assert isinstance(policy, T2)
    for i in range(40):  # 40 questions: the prior is refitted on schedule (at 20 and 40)
        votes = ["7"] * 5 + ["3"] * (i % 3)
        await book.observe("acme", "m", policy, votes)
    learned_prior = policy.prior
    assert learned_prior != policy.initial_prior
    await store.close()
    # a restart: a new process, a new book, the same file
    store2 = SQLiteLearnedStore(path)
    restarted = await PolicyBook(store=store2).get("acme", "m", "t2:lam=0.001")
    assert isinstance(restarted, T2)
    assert restarted.counts == policy.counts and restarted.seen == 40
    assert restarted.prior == pytest.approx(learned_prior)
    assert (await store2.load("acme", "m", now=0.0)).prior == pytest.approx(learned_prior)
    other = await PolicyBook(store=store2).get("other-tenant", "m", "t2")
    assert isinstance(other, T2) and other.seen == 0  # per tenant
    await store2.close()


async def test_a_joining_policy_takes_the_stored_prior_and_refits_on_schedule(
    opener: Opener,
) -> None:
    """A new spec (or a restart) joins the stream at its last scheduled refit, without a fit
    on the event loop; its own schedule then refits the merged table and stores the result."""
    store = opener(4096)
    book = PolicyBook(store=store)
    first = await book.get("acme", "m", "t2")
    for i in range(39):  # the refit at 20 stores a prior; the next is due at 40
        await book.observe("acme", "m", first, ["7"] * 5 + ["3"] * (i % 3))
    marked = LeaderPrior(3.0, 0.5)  # no fit of this table gives it
    await store.set_prior("acme", "m", marked, now=1.0)
    joining = await book.get("acme", "m", "t2:lam=0.002")
    assert isinstance(joining, T2) and joining.seen == 39
    assert joining.prior == marked
    await book.observe("acme", "m", joining, ["7"] * 5)  # the 40th question: a refit is due
    assert joining.prior != marked
    assert (await store.load("acme", "m", now=2.0)).prior == joining.prior


async def test_replica_books_share_learning_through_redis(redis_url: str) -> None:
    stores = [RedisLearnedStore(redis_url), RedisLearnedStore(redis_url)]
    books = [PolicyBook(store=s) for s in stores]
    policies = [await b.get("acme", "m", "t2") for b in books]
    for i in range(10):  # ten questions on each replica: 20 in total reach the refit at 20
        for book, policy in zip(books, policies, strict=True):
            await book.observe("acme", "m", policy, ["1"] * 4 + ["2"] * (i % 2))
    merged = await stores[0].load("acme", "m", now=0.0)
    assert merged.counts.total() == 20
    fresh = await PolicyBook(store=stores[1]).get("acme", "m", "t2")
    assert isinstance(fresh, T2) and fresh.seen == 20
    for s in stores:
        await s.close()
