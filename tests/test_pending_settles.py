"""No spend is lost in a long store outage: a settle the ledger's store cannot take past its
retries is journaled on the replica and replayed until the store takes it, through the real
sampling loop on real ledgers: a Redis killed mid-request and started again on its data (AOF), a
SQLite ledger locked by another writer, a server started again on a non-empty journal, and a
replay whose first try committed but lost its reply. The engines are scripted (one character =
one token), and the ledger's spend is compared to what the responses reported."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from controller.budget.ledger import Hold, Ledger, SettleOutcome, SpendEntry, SpendRecord
from controller.budget.pending import PendingFinish, PendingSettle, ReplayReport
from controller.budget.pricing import Cost
from controller.stores import StoreUnavailable
from server import metrics
from server.app import create_app
from server.billing import BudgetProvider
from server.billing.pending import PendingSettles
from server.config import AppConfig
from server.engine.service import EngineService
from server.sampling import Outcome, PolicyBook, Sampler
from storage.sqlite.ledger import SQLiteStore
from tests.fakes import ScriptedEngine
from tests.fixtures.redis import running_redis
from tests.fixtures.server import serve_in_loop
from tests.test_billing_guarantees import config
from tests.test_sampling_loop import job

DRAIN_S = 120  # the replayer backs off to 30 s between passes; a loaded box is slow too
ANSWER = "A: 2"


class Served:
    """The real loop and billing on a scripted engine whose sampling can run a side effect
    (kill the store, lock it) when the `at`-th sample is drawn."""

    def __init__(self, cfg: AppConfig, *, ledger: Ledger | None = None) -> None:
        self.tenant = cfg.tenants[0]
        self.provider = BudgetProvider(cfg, ledger=ledger, publish_metrics=False)
        self.effects: dict[int, Callable[[], object]] = {}
        self.service = EngineService("m", {}, ScriptedEngine(self._script))
        self.sampler = Sampler(self.service, PolicyBook())

    def _script(self, i: int) -> str:
        effect = self.effects.pop(i, None)
        if effect is not None:
            effect()
        return ANSWER

    async def ask(self, rid: str, policy: str = "fixed:4") -> Outcome:
        billing = self.provider.for_request(self.tenant, "m", rid)
        return await self.sampler.run(
            job(self.service, policy, request_id=rid, tenant="acme"), billing
        )

    async def spent(self) -> float:
        usage = await self.provider.ledger.usage(self.tenant.id, self.tenant.budgets)
        return next(u.spent_value for u in usage if u.name == "day")

    async def record(self, rid: str) -> SpendRecord:
        records = await self.provider.ledger.store.spend_logs("acme", 0, time.time() + 10)
        return next(r for r in records if r.request_id == rid)


def journaled(cfg: AppConfig, tmp_path: Path) -> AppConfig:
    cfg.ledger.pending_settles_path = str(tmp_path / "journal" / "pending.sqlite")
    return cfg


async def until(check: Callable[[], Awaitable[bool]], timeout_s: float = DRAIN_S) -> None:
    give_up = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < give_up, "the journal did not drain in time"
        await asyncio.sleep(0.1)


def replays(outcome: str) -> float:
    return metrics.SETTLE_REPLAYS.labels(outcome=outcome)._value.get()


def assert_journaled(out: Outcome) -> None:
    """The response reports the pending wave's cost and says it is pending, not why."""
    assert out.cost > 0 and out.cost == pytest.approx(out.prompt_tokens + out.completion_tokens)
    assert out.note is not None and "billing of wave 1 is pending" in out.note
    assert "once the ledger is back" in out.note


async def test_a_redis_killed_mid_request_gets_the_spend_once_it_is_back(tmp_path: Path) -> None:
    data = tmp_path / "redis"
    data.mkdir()
    with running_redis(data, appendonly=True) as redis:
        port = redis.port
        cfg = journaled(config(("redis", redis.url()), budgets={"day": {"limit": 1e6}}), tmp_path)
        rig = Served(cfg)
        try:
            warm = await rig.ask("warm")  # settled as usual, before the outage

            def kill() -> None:  # while the request's wave is being drawn, after its hold
                redis.process.kill()
                redis.process.wait()

            rig.effects[4] = kill
            settled_before = replays("settled")
            out = await rig.ask("during")
            assert out.answer == "2" and out.stop_reason == "fixed"
            assert_journaled(out)
            assert rig.provider.pending.pending == 1
            assert b"t2_settles_pending 1.0" in metrics.render_latest()[0]
            with running_redis(data, port=port, appendonly=True):  # back, on its AOF
                await until(lambda: _drained(rig))
                assert await rig.spent() == pytest.approx(warm.cost + out.cost, abs=1e-9)
                assert await rig.provider.ledger.store.reserved_holds("acme") == 0
                record = await rig.record("during")
                assert record.money == pytest.approx(out.cost)
                assert (record.status, record.stop_reason, record.samples) == (200, "fixed", 4)
                assert replays("settled") == settled_before + 1
                assert b"t2_settles_pending 0.0" in metrics.render_latest()[0]
        finally:
            await rig.provider.close()


async def _drained(rig: Served) -> bool:
    """The background replayer emptied the journal (its pass ends with the finishes)."""
    return rig.provider.pending.pending == 0


async def test_a_sqlite_ledger_locked_past_the_retries_gets_the_spend_once_unlocked(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ledger.sqlite"
    cfg = journaled(config(("sqlite", str(path)), budgets={"day": {"limit": 1e6}}), tmp_path)
    rig = Served(cfg, ledger=Ledger(SQLiteStore(path, busy_timeout_ms=100)))
    other = sqlite3.connect(path, isolation_level=None)  # another process's writer
    try:
        warm = await rig.ask("warm")
        rig.effects[4] = lambda: other.execute("BEGIN EXCLUSIVE")
        out = await rig.ask("locked")
        assert_journaled(out)
        await asyncio.sleep(1.0)  # the replayer tries meanwhile, and keeps it
        assert rig.provider.pending.pending == 1
        other.execute("ROLLBACK")
        await until(lambda: _drained(rig))
        assert await rig.spent() == pytest.approx(warm.cost + out.cost, abs=1e-9)
        assert await rig.provider.ledger.store.reserved_holds("acme") == 0
        record = await rig.record("locked")
        assert (record.money, record.status, record.stop_reason) == (
            pytest.approx(out.cost), 200, "fixed",
        )  # fmt: skip
    finally:
        other.close()
        await rig.provider.close()


async def test_a_server_started_on_a_non_empty_journal_replays_it(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    cfg = journaled(config(("sqlite", str(path)), budgets={"day": {"limit": 1e6}}), tmp_path)
    first = Served(cfg, ledger=Ledger(SQLiteStore(path, busy_timeout_ms=100)))
    other = sqlite3.connect(path, isolation_level=None)
    try:
        warm = await first.ask("warm")
        first.effects[4] = lambda: other.execute("BEGIN EXCLUSIVE")
        out = await first.ask("before-restart")
        assert_journaled(out)
    finally:
        await first.provider.close()  # the server stops with the store still locked
    other.execute("ROLLBACK")
    other.close()
    assert (tmp_path / "journal" / "pending.sqlite").exists()

    app = create_app(cfg, engine=ScriptedEngine())
    async with serve_in_loop(app) as live:  # its start-up replays the journal
        reader = Ledger(SQLiteStore(path))
        try:

            async def spent() -> float:
                usage = await reader.usage("acme", cfg.tenants[0].budgets)
                return next(u.spent_value for u in usage if u.name == "day")

            async def finished() -> bool:  # the pass notes the finish after the settle
                records = await reader.store.spend_logs("acme", 0, time.time() + 10)
                record = next((r for r in records if r.request_id == "before-restart"), None)
                return record is not None and (record.status, record.stop_reason) == (
                    200, "fixed",
                )  # fmt: skip

            await until(finished)
            assert await _near(spent(), warm.cost + out.cost)
            async with httpx.AsyncClient(base_url=live.base_url) as http:
                scrape = (await http.get("/metrics")).text
            assert "t2_settles_pending 0.0" in scrape
        finally:
            await reader.close()


async def _near(value: Awaitable[float], want: float) -> bool:
    return abs(await value - want) < 1e-9


async def test_a_replay_that_committed_but_lost_its_reply_does_not_bill_twice(
    location: tuple[str, str], tmp_path: Path
) -> None:
    rig = Served(journaled(config(location, budgets={"day": {"limit": 1e6}}), tmp_path))
    store = rig.provider.ledger.store
    real = store.settle
    calls: list[int] = []

    async def settle(hold: Hold, cost: Cost) -> SettleOutcome:
        """In the wave: 4 tries fail, the first of them after committing (a lost reply); the
        first replay commits again and loses its reply too; the next one is answered."""
        calls.append(hold.wave)
        if len(calls) in (1, 5):
            await real(hold, cost)
        if len(calls) <= 5:
            raise StoreUnavailable("the reply was lost")
        return await real(hold, cost)

    store.settle = settle  # type: ignore[method-assign]
    try:
        duplicates = replays("duplicate")
        out = await rig.ask("twice", policy="fixed:2")
        assert_journaled(out)
        await until(lambda: _drained(rig))
        assert len(calls) >= 6 and set(calls) == {0}  # one settlement key throughout
        assert await rig.spent() == pytest.approx(out.cost, abs=1e-9)  # once, not three times
        assert replays("duplicate") == duplicates + 1
        record = await rig.record("twice")
        assert (record.money, record.samples, record.waves) == (pytest.approx(out.cost), 2, 1)
    finally:
        await rig.provider.close()


def _pending_settle(provider: BudgetProvider, rid: str, money: float = 1.5) -> PendingSettle:
    """A settle of wave 0 of `rid` as `_journal` would keep it (the windows of now)."""
    tenant = provider.config.tenants[0]
    entry = SpendEntry("m", 1, 3, 4)
    hold = provider.ledger.settle_hold(tenant.id, tenant.budgets, rid, 0, entry)
    return PendingSettle(hold, Cost(money, 0.0, 7.0), "currency")


def _journal_row(path: Path, rid: str, body: str) -> None:
    """A row written straight into the journal file (another version of the server's)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(
            "INSERT INTO pending_settles (tenant, request_id, wave, body) VALUES (?, ?, 0, ?)",
            ("acme", rid, body),
        )
    finally:
        conn.close()


async def test_an_entry_this_server_cannot_read_does_not_hold_up_the_others(
    location: tuple[str, str], tmp_path: Path
) -> None:
    """A row of a format this server does not know (a newer version's, rolled back; or one
    damaged by hand) is left for a server that can read it; every other settle is replayed."""
    rig = Served(journaled(config(location, budgets={"day": {"limit": 1e6}}), tmp_path))
    pending = rig.provider.pending
    try:
        journal = pending._opened()
        await journal.add(_pending_settle(rig.provider, "readable-before"))
        _journal_row(pending.path, "newer", json.dumps({"v": 2, "hold": {"tenant": "acme"}}))
        _journal_row(pending.path, "damaged", "{not json")
        await journal.add(_pending_settle(rig.provider, "readable-after"))
        report = await pending.replay()
        assert len(report.settled) == 2
        assert await rig.spent() == pytest.approx(3.0, abs=1e-9)
        assert pending.pending == 2  # the unreadable rows stay, and show in t2_settles_pending
        rows = sqlite3.connect(pending.path).execute("SELECT request_id FROM pending_settles")
        assert sorted(r[0] for r in rows) == ["damaged", "newer"]
    finally:
        await rig.provider.close()


def test_a_pending_settle_names_its_format() -> None:
    """Each entry carries its format's version, and a server refuses one it does not know
    rather than guess at it (an entry of the first format, with none, reads as it)."""
    from controller.budget.pending import FORMAT, decode, encode

    hold = Hold("acme", "r", 0, 0, Cost(), Cost(), (), 1.0, 60.0)
    settle = PendingSettle(hold, Cost(1.0), "currency")
    body = json.loads(encode(settle))
    assert body["v"] == FORMAT == 1
    assert decode(json.dumps({k: v for k, v in body.items() if k != "v"})) == settle
    with pytest.raises(ValueError, match="format 2"):
        decode(json.dumps({**body, "v": 2}))


async def test_a_successful_ledger_call_wakes_the_replayer_only_when_the_store_was_down(
    tmp_path: Path,
) -> None:
    """Every reserve that reaches the store calls `wake`. With an entry that fails for its own
    sake (not the store's), that must not turn the backoff into a pass per request."""
    where = ("sqlite", str(tmp_path / "ledger.sqlite"))
    rig = Served(journaled(config(where, budgets={"day": {"limit": 1e6}}), tmp_path))
    pending = rig.provider.pending
    passes = 0
    real = pending.replay

    async def counted() -> ReplayReport:
        nonlocal passes
        passes += 1
        return await real()

    pending.replay = counted  # type: ignore[method-assign]
    try:
        await pending._opened().add(_pending_settle(rig.provider, "fine"))
        _journal_row(pending.path, "damaged", "{not json")
        await pending.start()  # as a server starting on this journal
        give_up = time.monotonic() + 1.2
        while time.monotonic() < give_up:  # a busy replica: a reserve every 10 ms
            pending.wake()
            await asyncio.sleep(0.01)
        assert passes <= 3, passes  # the backoff's: at 0, 0.5 and 1.5 s (a slow box: fewer)
        assert pending.pending == 1
    finally:
        await rig.provider.close()


async def test_a_server_stopping_mid_replay_counts_what_left_the_journal(
    location: tuple[str, str], tmp_path: Path
) -> None:
    """Shutdown cancels the replayer while it removes a settle the store took: the removal
    finishes on the journal's thread regardless, so the settle must be counted (spend and
    replays), or it is counted nowhere: it is no longer pending."""
    rig = Served(journaled(config(location, budgets={"day": {"limit": 1e6}}), tmp_path))
    pending = rig.provider.pending
    await pending._opened().add(_pending_settle(rig.provider, "at-shutdown"))
    other = sqlite3.connect(pending.path, isolation_level=None)  # another worker's writer
    settled = replays("settled")
    closing: asyncio.Task[None] | None = None
    try:
        other.execute("BEGIN IMMEDIATE")  # the replay's removal waits for it
        await pending.start()
        await until(lambda: _near(rig.spent(), 1.5), 30)  # the store took it
        await asyncio.sleep(0.2)  # the pass waits in its removal
        closing = asyncio.create_task(pending.close())  # the server stops
        await asyncio.sleep(0.2)
        other.execute("ROLLBACK")
        await closing
        rows = other.execute("SELECT count(*) FROM pending_settles").fetchone()[0]
        assert rows == 0  # it left the journal...
        assert replays("settled") == settled + 1  # ...and was counted
    finally:
        if other.in_transaction:
            other.execute("ROLLBACK")
        other.close()
        if closing is not None and not closing.done():
            await closing
        await rig.provider.close()


async def test_a_settle_the_journal_took_is_the_journals_even_if_counting_it_fails(
    tmp_path: Path,
) -> None:
    """`keep` must not say False once the settle is in the journal: the request would keep it
    too and settle it itself when it closes, and the replay would then count its spend in
    t2_spend_total a second time."""
    where = ("sqlite", str(tmp_path / "ledger.sqlite"))
    rig = Served(journaled(config(where, budgets={"day": {"limit": 1e6}}), tmp_path))
    pending = rig.provider.pending
    journal = pending._opened()

    async def count() -> int:
        raise StoreUnavailable("the journal is busy")

    journal.count = count  # type: ignore[method-assign]
    try:
        assert await pending.keep(_pending_settle(rig.provider, "kept"))
    finally:
        await rig.provider.close()


async def test_a_journaled_settle_wakes_the_waves_waiting_for_its_hold(tmp_path: Path) -> None:
    """Journaling takes the wave's hold off the request's tally (its cap counts the cost as
    spent), so the answers of the same request waiting for that hold are woken, as by a
    settle, rather than at their next poll."""
    path = tmp_path / "ledger.sqlite"
    cfg = journaled(config(("sqlite", str(path)), budgets={"day": {"limit": 1e6}}), tmp_path)
    rig = Served(cfg, ledger=Ledger(SQLiteStore(path, busy_timeout_ms=100)))
    other = sqlite3.connect(path, isolation_level=None)
    waiter = asyncio.create_task(asyncio.sleep(0))
    try:
        await rig.ask("warm")
        rig.effects[4] = lambda: other.execute("BEGIN EXCLUSIVE")
        waiter = asyncio.create_task(rig.provider.settles.wait("acme", 30.0))
        out = await rig.ask("locked")
        assert_journaled(out)
        for _ in range(3):
            await asyncio.sleep(0)
        assert waiter.done()
    finally:
        waiter.cancel()
        other.close()
        await rig.provider.close()


@pytest.mark.parametrize(
    "ledger",
    [
        {"path": "var/pending-settles.sqlite"},  # the journal's default would be this very file
        {"path": "var/ledger.sqlite", "pending_settles_path": "var/ledger.sqlite"},
        {"path": "var/ledger.sqlite", "pending_settles_path": "var/../var/ledger.sqlite-wal"},
        {"path": "var/ledger.sqlite", "pending_settles_path": "var/ledger.sqlite-shm"},
        {"path": "var/ledger.sqlite", "pending_settles_path": "var/ledger.sqlite-journal"},
    ],
)
def test_the_journal_never_shares_the_sqlite_ledgers_files(ledger: dict[str, str]) -> None:
    """The journal keeps what the ledger's store could not take: in the ledger's own file it
    is locked, full or lost with it; in its WAL, shared-memory or rollback-journal file,
    SQLite takes it for the ledger's and overwrites (or replays) it."""
    from server.config import LedgerConfig

    with pytest.raises(ValueError, match="ledger's own"):
        LedgerConfig.model_validate(ledger)
    LedgerConfig.model_validate({**ledger, "backend": "redis"})  # `path` holds no ledger there


def _bare_settle(rid: str) -> PendingSettle:
    hold = Hold("acme", rid, 0, 0, Cost(), Cost(), (), 1.0, 60.0)
    return PendingSettle(hold, Cost(1.0), "currency")


@pytest.mark.parametrize("gone", ["file", "file, -wal and -shm", "folder", "replaced"])
async def test_a_journal_deleted_while_the_server_runs_is_made_again_with_what_it_held(
    tmp_path: Path, gone: str
) -> None:
    """SQLite writes on into a file deleted under it (its inode lives while open), so every
    settle kept after the deletion was lost at the next start. Keeping one notices the path
    names another file (or none) and moves the pending entries into the file at the path."""
    from storage.sqlite.pending import SQLitePendingSettles

    path = tmp_path / "journal" / "pending.sqlite"
    journal = SQLitePendingSettles(path)
    try:
        await journal.add(_bare_settle("before"))
        await journal.add_finish(PendingFinish("acme", "before", "fixed", 200, 4))
        if gone == "folder":
            shutil.rmtree(path.parent)
        else:
            for suffix in ("", "-wal", "-shm") if gone != "file" else ("",):
                Path(f"{path}{suffix}").unlink()
        if gone == "replaced":  # by another worker, say, that made it again first
            other = SQLitePendingSettles(path)
            await other.add(_bare_settle("other"))
        await journal.add(_bare_settle("after"))
        await journal.add_finish(PendingFinish("acme", "after", "fixed", 200, 4))
    finally:
        await journal.close()
        if gone == "replaced":
            await other.close()
    conn = sqlite3.connect(path)  # as the next start reads it
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = conn.execute("SELECT request_id FROM pending_settles ORDER BY seq").fetchall()
        want = ["other"] if gone == "replaced" else []
        assert [r[0] for r in rows] == [*want, "before", "after"]
        finishes = conn.execute("SELECT request_id FROM pending_finishes ORDER BY seq")
        assert [r[0] for r in finishes] == ["before", "after"]
    finally:
        conn.close()


async def test_a_settle_kept_after_the_server_stopped_is_written_and_starts_nothing(
    tmp_path: Path,
) -> None:
    """A request still running while the server stops keeps its settle after the journal
    closed: it reopened the journal and started a replay task nobody would cancel. The entry
    is written (for the next start to replay), and nothing is left open or running."""
    where = ("sqlite", str(tmp_path / "ledger.sqlite"))
    rig = Served(journaled(config(where, budgets={"day": {"limit": 1e6}}), tmp_path))
    pending = rig.provider.pending
    await rig.provider.close()
    tasks = asyncio.all_tasks()
    assert await pending.keep(_pending_settle(rig.provider, "late"))
    assert await pending.keep_finish(PendingFinish("acme", "late", "fixed", 200, 4))
    assert asyncio.all_tasks() == tasks
    assert pending._task is None and pending._journal is None
    conn = sqlite3.connect(pending.path)
    try:
        rows = conn.execute("SELECT request_id FROM pending_settles").fetchall()
        finishes = conn.execute("SELECT request_id FROM pending_finishes").fetchall()
        assert rows == finishes == [("late",)]
    finally:
        conn.close()


async def test_a_settle_kept_while_the_server_stops_is_written_and_starts_nothing(
    tmp_path: Path,
) -> None:
    """The journal closes while a settle is being kept: it is still written, and no task
    starts after the close."""
    where = ("sqlite", str(tmp_path / "ledger.sqlite"))
    rig = Served(journaled(config(where, budgets={"day": {"limit": 1e6}}), tmp_path))
    pending = rig.provider.pending
    await pending.keep(_pending_settle(rig.provider, "first"))  # opened, its task running
    keeping = asyncio.create_task(pending.keep(_pending_settle(rig.provider, "during")))
    await asyncio.sleep(0)
    await rig.provider.close()
    assert await keeping
    assert pending._task is None and pending._journal is None
    rows = sqlite3.connect(pending.path).execute("SELECT request_id FROM pending_settles")
    assert "during" in {r[0] for r in rows}


async def test_a_worker_replays_what_a_stopped_worker_left_in_the_shared_journal(
    tmp_path: Path,
) -> None:
    """Workers of one replica share the journal file. A worker that journaled a settle and
    then stopped for good left it to the others, which replayed only when they next started
    (or kept a settle themselves): an idle replayer sweeps the journal, even one that started
    before the file existed."""
    from storage.sqlite.pending import SQLitePendingSettles

    where = ("sqlite", str(tmp_path / "ledger.sqlite"))
    rig = Served(journaled(config(where, budgets={"day": {"limit": 1e6}}), tmp_path))
    stopped = rig.provider.pending
    path = stopped.path
    survivor = PendingSettles(
        path, lambda: SQLitePendingSettles(path), lambda: rig.provider.ledger.store,
        rig.provider.settles, sweep_s=0.2,
    )  # fmt: skip
    try:
        await survivor.start()
        assert not path.exists()  # the sweep makes no journal
        before = await rig.spent()
        await stopped.close()  # the worker stops with a request still running, which keeps:
        assert await stopped.keep(_pending_settle(rig.provider, "orphan", money=2.5))
        assert path.exists()

        async def replayed() -> bool:
            return await _near(rig.spent(), before + 2.5)

        await until(replayed, timeout_s=30)
        assert survivor.pending == 0
    finally:
        await survivor.close()
        await rig.provider.close()
