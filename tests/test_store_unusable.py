"""A store that is there but cannot be used: a SQLite file that cannot be opened (a directory,
a folder that cannot be made, a file that is not a database), one locked when it is first opened,
a Redis that refuses writes (maxmemory, a read-only replica) or a URL that is not Redis or names
a database the server lacks. Each is StoreUnavailable, so the app answers 503 with Retry-After
(never a 500), the event loop never waits on it, and the next request after the store is fixed
is served (docs/storage.md)."""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from controller.budget import Budget, Budgets, Cost, Ledger
from controller.stores import StoreUnavailable
from server.app import create_app
from server.config import hash_key, parse_config
from storage import Stores
from storage.redis.ledger import RedisStore
from storage.sqlite.ledger import SQLiteStore
from tests.fakes import ScriptedEngine, cycle
from tests.fixtures.redis import RedisServer
from tests.fixtures.server import serve_in_loop

KEY = {"Authorization": "Bearer k"}
ADMIN = {"Authorization": "Bearer admin"}
CHAT = {"model": "m", "messages": [{"role": "user", "content": "Q: 1+1=?"}]}
BUDGETS = Budgets(day=Budget(limit=100.0))
FIXED, PER = Cost(0.01, 100.0), Cost(0.1, 1000.0)
GIVE_UP_S = 60  # far beyond the stores' own timeouts: a hang fails here instead of blocking


def app(ledger: dict[str, Any], *, admin: bool = False) -> Any:
    """One metered tenant (key `k`) on the scripted engine, its ledger where `ledger` says
    (a settle it journals goes to a temporary file, not to var/ where other tests start)."""
    journal = str(Path(tempfile.mkdtemp(prefix="t2-pending-")) / "pending.sqlite")
    data: dict[str, Any] = {
        "models": [{"id": "m", "path": "/nonexistent"}],
        "ledger": {"pending_settles_path": journal, **ledger},
        "defaults": {"policy": "fixed:2", "extractor": "last_number", "max_tokens": 8},
        "tenants": [
            {
                "id": "acme",
                "api_keys": [{"sha256": hash_key("k")}],
                "budgets": {"day": {"limit": 1e6}},
                "prices": {"models": {"m": {"prompt_per_1m": 1.0, "completion_per_1m": 1.0}}},
            }
        ],
    }
    if admin:
        data["admin"] = {"key_sha256": hash_key("admin")}
    return create_app(parse_config(data, "test"), engine=ScriptedEngine(cycle("A: 2")))


def assert_503(resp: httpx.Response, code: str, hidden: str) -> None:
    """The OpenAI-shaped 503 with Retry-After, naming nothing of where the store lives."""
    error = resp.json()["error"]
    assert resp.status_code == 503 and error["code"] == code, resp.text
    assert resp.headers["retry-after"] == "5" and hidden not in error["message"]


# -- SQLite ---------------------------------------------------------------------------------


def a_directory(path: Path) -> Callable[[], None]:
    path.mkdir(parents=True)  # stands for a read-only mount, missing permissions: "unable to open"
    return path.rmdir


def a_folder_that_is_a_file(path: Path) -> Callable[[], None]:
    path.parent.parent.mkdir(exist_ok=True)
    path.parent.write_text("not a folder")  # the store's folder cannot be made
    return path.parent.unlink


def not_a_database(path: Path) -> Callable[[], None]:
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not a SQLite database\n" * 200)  # a corrupt file
    return path.unlink


@pytest.mark.parametrize("spoil", [a_directory, a_folder_that_is_a_file, not_a_database])
async def test_an_unusable_sqlite_file_answers_503_until_it_is_fixed(
    tmp_path: Path, spoil: Callable[[Path], Callable[[], None]]
) -> None:
    """Opening the file used to happen outside the store's error mapping (a 500 on every
    request); it now happens in the first step, as a 503, and again at the next one."""
    path = tmp_path / "state" / "ledger.sqlite"
    live_app = app({"backend": "sqlite", "path": str(path)})  # the config's checks pass
    fix = spoil(path)  # and then the file goes bad
    async with (
        serve_in_loop(live_app) as live,
        httpx.AsyncClient(base_url=live.base_url, timeout=GIVE_UP_S) as http,
    ):
        down = await http.post("/v1/chat/completions", headers=KEY, json=CHAT)
        fix()
        up = await http.post("/v1/chat/completions", headers=KEY, json=CHAT)
    assert_503(down, "ledger_unavailable", str(tmp_path))
    assert up.status_code == 200, up.text


async def test_the_admin_api_answers_an_unopenable_sqlite_file_with_503(tmp_path: Path) -> None:
    """Admin reads of the ledger (a tenant's windows, spend logs) open it like a completion."""
    path = tmp_path / "ledger.sqlite"
    live_app = app({"backend": "sqlite", "path": str(path)}, admin=True)
    a_directory(path)
    async with (
        serve_in_loop(live_app) as live,
        httpx.AsyncClient(base_url=live.base_url, timeout=GIVE_UP_S) as http,
    ):
        got = [
            await http.get("/admin/tenants/acme", headers=ADMIN),
            await http.get("/admin/spend/logs", headers=ADMIN),
        ]
    for resp in got:
        assert_503(resp, "store_unavailable", str(tmp_path))


async def test_opening_stores_on_a_locked_file_waits_off_the_event_loop(tmp_path: Path) -> None:
    """Making a store used to open the file on the loop's thread: with another writer holding
    the lock before the tables exist, `prepare` froze the loop for the busy timeout, then
    raised sqlite3's error. Now nothing waits until the first step, which waits on the worker
    thread and is a StoreUnavailable; once the lock is gone the next step opens the file."""
    path = tmp_path / "ledger.sqlite"
    other = sqlite3.connect(path, isolation_level=None)  # a backup tool, another worker
    other.execute("PRAGMA journal_mode=WAL")
    other.execute("BEGIN IMMEDIATE")
    other.execute("CREATE TABLE other_tool (x)")
    gaps: list[float] = []

    async def tick() -> None:
        while True:
            last = time.monotonic()
            await asyncio.sleep(0.05)
            gaps.append(time.monotonic() - last - 0.05)

    ticker = asyncio.create_task(tick())
    store = SQLiteStore(path, busy_timeout_ms=5_000)
    ledger = Ledger(store)
    stores = Stores("sqlite", path=path)
    admin, learned = stores.admin(), stores.learned()
    try:
        with pytest.raises(StoreUnavailable, match="locked"):
            await asyncio.wait_for(ledger.reserve("acme", BUDGETS, "r", 0, 1, FIXED, PER), 60)
        ticker.cancel()
        other.execute("ROLLBACK")
        out = await ledger.reserve("acme", BUDGETS, "r", 0, 1, FIXED, PER)
        assert out.granted == 1
    finally:
        ticker.cancel()
        other.close()
        await store.close()
        await admin.close()
        await learned.close()
    assert max(gaps) < 2.0, f"the event loop stalled {max(gaps):.1f} s"


# -- Redis ----------------------------------------------------------------------------------


@pytest.fixture
def refusing(own_redis: RedisServer) -> Iterator[Callable[[str], Callable[[], None]]]:
    """Makes `own_redis` refuse writes one way; each call returns how to undo it."""
    client = redis.Redis(port=own_redis.port)

    def refuse(how: str) -> Callable[[], None]:
        if how == "oom":  # maxmemory reached under noeviction
            client.config_set("maxmemory-policy", "noeviction")
            client.config_set("maxmemory", "1")
            args: tuple[str, ...] = ("CONFIG", "SET", "maxmemory", "0")
        else:  # a demoted primary after failover: a replica of nobody, read-only
            client.execute_command("REPLICAOF", "127.0.0.1", "1")
            args = ("REPLICAOF", "NO", "ONE")

        def undo() -> None:
            client.execute_command(*args)

        return undo

    yield refuse
    client.close()


@pytest.mark.parametrize("how", ["oom", "readonly"])
async def test_a_redis_refusing_writes_answers_503_until_it_accepts_them(
    own_redis: RedisServer, refusing: Callable[[str], Callable[[], None]], how: str
) -> None:
    """OOM and READONLY are Redis error replies, not connection errors, and used to reach the
    client as a 500. A read-only Redis refuses the reserve: 503 before anything is drawn. Under
    OOM Redis (7.0) lets the reserve script through and refuses the settle: the answer is
    served with its billing pending, the hold kept (docs/billing-guarantees.md), or a 503."""
    live_app = app({"backend": "redis", "redis_url": own_redis.url()}, admin=True)
    async with (
        serve_in_loop(live_app) as live,
        httpx.AsyncClient(base_url=live.base_url, timeout=GIVE_UP_S) as http,
    ):
        assert (await http.post("/v1/chat/completions", headers=KEY, json=CHAT)).is_success
        undo = refusing(how)
        down = await http.post("/v1/chat/completions", headers=KEY, json=CHAT)
        change = await http.put(
            "/admin/tenants/acme/budgets", headers=ADMIN, json={"day": {"limit": 5}}
        )
        undo()
        up = await http.post("/v1/chat/completions", headers=KEY, json=CHAT)
    if how == "readonly" or down.status_code != 200:  # another Redis may refuse the reserve
        assert_503(down, "ledger_unavailable", str(own_redis.port))
    else:
        assert "pending" in down.json()["t2"]["note"], down.text
    assert_503(change, "store_unavailable", str(own_redis.port))
    assert up.status_code == 200, up.text


@pytest.mark.parametrize("how", ["oom", "readonly"])
async def test_a_settle_refused_by_redis_is_unavailable_and_charges_once_when_retried(
    own_redis: RedisServer, refusing: Callable[[str], Callable[[], None]], how: str
) -> None:
    """A wave held before Redis began refusing: its settle is a StoreUnavailable (the caller
    keeps the hold and retries), and the retry once Redis accepts writes charges it once."""
    store = RedisStore(own_redis.url())
    ledger = Ledger(store)
    try:
        assert (await ledger.reserve("acme", BUDGETS, "r", 0, 1, FIXED, PER)).granted == 1
        undo = refusing(how)
        with pytest.raises(StoreUnavailable, match=how.upper()):
            await ledger.settle("acme", BUDGETS, "r", 0, Cost(0.2, 2000.0))
        undo()
        first = await ledger.settle("acme", BUDGETS, "r", 0, Cost(0.2, 2000.0))
        again = await ledger.settle("acme", BUDGETS, "r", 0, Cost(0.2, 2000.0))
    finally:
        await store.close()
    assert not first.duplicate and again.duplicate
    day = next(u for u in again.usage if u.name == "day")
    assert day.spent_value == pytest.approx(0.2) and day.reserved_value == 0


@pytest.mark.parametrize("what", ["not-redis", "db-out-of-range"])
async def test_a_wrong_redis_url_answers_503(redis_server: RedisServer, what: str) -> None:
    """Like a wrong password (already a 503): a port that answers but is not Redis
    (InvalidResponse) or a database index the server lacks (its SELECT's error reply)."""
    server = None
    if what == "not-redis":

        async def http_reply(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            writer.close()

        server = await asyncio.start_server(http_reply, "127.0.0.1", 0)
        url = f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/0"
    else:
        url = redis_server.url(99)
    try:
        async with (
            serve_in_loop(app({"backend": "redis", "redis_url": url})) as live,
            httpx.AsyncClient(base_url=live.base_url, timeout=GIVE_UP_S) as http,
        ):
            resp = await http.post("/v1/chat/completions", headers=KEY, json=CHAT)
    finally:
        if server is not None:
            server.close()
    assert_503(resp, "ledger_unavailable", "127.0.0.1")


async def test_stores_opening_one_new_file_at_once_all_open(tmp_path: Path) -> None:
    """Opening moved into the first step, so stores on one new file (a server's ledger, admin
    and learned stores at its first requests; replicas starting together) open at once, and
    switching the file to WAL failed "database is locked" without waiting (14 of 200 pairs)."""
    from storage.sqlite.learned import SQLiteLearnedStore

    for i in range(40):
        path = tmp_path / f"{i}" / "ledger.sqlite"
        stores = [SQLiteLearnedStore(path), SQLiteLearnedStore(path), SQLiteLearnedStore(path)]
        try:
            await asyncio.gather(*(s.add("acme", "m", (2, 1), now=1.0) for s in stores))
            assert (await stores[0].load("acme", "m", now=2.0)).counts == {(2, 1): 3}
        finally:
            for store in stores:
                await store.close()
