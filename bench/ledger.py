"""Ledger throughput: reserve+settle pairs per second, SQLite and Redis, at concurrency 1 and 32.

Each pair is one wave of one request through the server's real billing path
(`server.billing.LedgerBilling`: pricing, per-request budget, ledger call, λ, metrics), against
a tenant with a hard daily budget large enough never to refuse. Baselines measured in the same
run, through the same asyncio harness:
- `noop`: the billing path with a store that does nothing (the Python cost of the path);
- `sqlite-raw`: one `BEGIN IMMEDIATE; UPSERT; COMMIT` per call on the same kind of file, on
  the loop's thread like the store's fast path (what a minimal SQLite write costs here);
- `redis-ping`: two PING round trips per pair on the same connection pool (the network floor).

Latency: the p50 of one reserve+settle pair is what the ledger adds to a one-wave request (a
request with w waves pays it w times). `sqlite-levels` / `redis-levels` hold and charge each
wave at three budget levels (tenant, the request's key, its user) and log it; their ratio
against the tenant-only rows of the same run is what levels cost. `sqlite-rated` /
`redis-rated` add the rate limits on top: the tenant's rpm and tpm and the key's rpm, checked in
the same reserve, each pair a new HTTP request entering both rpm logs (limits set high enough
never to refuse, so the logs grow as a busy tenant's do). Run: `python -m bench ledger`
(or `make bench`).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from controller.budget import Cost, Ledger
from controller.budget.ledger import (
    Hold,
    Limit,
    RequestLimit,
    RequestUsage,
    ReserveOutcome,
    SettleOutcome,
    SpendRecord,
    WindowUsage,
)
from server.billing import BudgetProvider, WaveHold
from server.billing.identity import bind_key, bind_request, bind_user
from server.config import AppConfig, hash_key, parse_config
from storage import Stores, open_stores
from storage.redis.ledger import RedisStore
from storage.sqlite.database import transaction

PAIRS = {1: 1500, 32: 4000}
Pair = Callable[[int], Awaitable[None]]


class NoopStore:
    """A store that grants everything and records nothing: the harness's own cost."""

    async def reserve(self, hold: Hold) -> ReserveOutcome:
        return ReserveOutcome(hold.samples, Cost(), None, [])

    async def settle(self, hold: Hold, cost: Cost) -> SettleOutcome:
        return SettleOutcome(cost, False, [])

    async def release(self, tenant: str, request_id: str, wave: int) -> None:
        return None

    async def usage(self, tenant: str, limits: Sequence[Limit], now: float) -> list[WindowUsage]:
        return []

    async def requests(
        self, tenant: str, limits: Sequence[RequestLimit], now: float
    ) -> list[RequestUsage]:
        return []

    async def purge_expired(self, now: float) -> int:
        return 0

    async def reserved_holds(self, tenant: str | None = None) -> int:
        return 0

    async def finish_log(
        self, tenant: str, request_id: str, stop_reason: str | None, status: int, samples: int
    ) -> None:
        return None

    async def spend_logs(self, tenant: str, since: float, until: float) -> list[SpendRecord]:
        return []

    async def purge_logs(self, before: float) -> int:
        return 0

    async def close(self) -> None:
        return None


def config(path: str, rated: bool = False) -> AppConfig:
    limits = {"rate_limits": {"rpm": 10**9, "tpm": 10**12}} if rated else {}
    return parse_config(
        {
            "models": [{"id": "m", "path": "/nonexistent"}],
            "ledger": {"backend": "sqlite", "path": path},
            "tenants": [
                {
                    "id": "bench",
                    "api_keys": [{"sha256": hash_key("bench")}],
                    "policy": "t2",
                    "prices": {"models": {"*": {"prompt_per_1m": 1.0, "completion_per_1m": 2.0}}},
                    "budgets": {"day": {"limit": 1e12}, "month": {"limit": 1e13}},
                    "user_budgets": {"day": {"limit": 1e12}},
                    **limits,
                }
            ],
        },
        "bench",
    )


def billing_pair(
    provider: BudgetProvider, cfg: AppConfig, tag: str, levels: bool = False, rated: bool = False
) -> Pair:
    """One wave's reserve+settle. `levels`: also at a key's own day budget and a user's (one of
    8 users), as a request with an API-made key and a `user` field is. `rated`: and the key's
    own rpm (the tenant's rate limits come with its config)."""
    tenant = cfg.tenants[0]

    async def pair(i: int) -> None:
        if levels:
            rates = {"rpm": 10**9} if rated else None
            bind_key("t2-benchkey0", {"day": {"limit": 1e12}}, rates)
            bind_user(f"user-{i % 8}")
            bind_request(f"{tag}-{i}")
        else:
            bind_key(None)
        billing = provider.for_request(tenant, "m", f"{tag}-{i}")
        hold = await billing.reserve(WaveHold(0, 4, 100, 64))
        await billing.settle(hold, prompt_tokens=100, completion_tokens=150)
        await billing.close()

    return pair


async def measure(pair: Pair, concurrency: int, n: int) -> dict[str, float]:
    """Run n pairs with `concurrency` in flight; pairs/s and the per-pair latency p50/p99."""
    for i in range(min(50, n)):  # warm up: connections, statements, scripts
        await pair(-1 - i)
    latencies: list[float] = []
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            t = time.perf_counter()
            await pair(i)
            latencies.append(time.perf_counter() - t)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "pairs_per_s": n / elapsed,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
    }


UPSERT = "INSERT INTO t VALUES ('k', 1) ON CONFLICT (k) DO UPDATE SET v = v + 1"


def raw_sqlite_pair(path: Path) -> tuple[Pair, Callable[[], None]]:
    pool = ThreadPoolExecutor(max_workers=1)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY, v REAL)")

    def write() -> None:  # the stores' own transaction runner, around the smallest write
        transaction(conn, lambda c: c.execute(UPSERT))

    async def pair(_: int) -> None:  # like the store's fast path: on the loop's thread
        write()
        await asyncio.sleep(0)
        write()
        await asyncio.sleep(0)

    def close() -> None:
        conn.close()
        pool.shutdown()

    return pair, close


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str] | None:
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.1):
                return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    return None


async def run(workdir: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}

    async def row(name: str, pair: Pair) -> None:
        for c, n in PAIRS.items():
            results[f"{name}@{c}"] = await measure(pair, c, n)
            print(f"  {name:<12} c={c:<3} {results[f'{name}@{c}']}", file=sys.stderr, flush=True)

    cfg = config(str(workdir / "noop.sqlite"))
    noop = BudgetProvider(cfg, ledger=Ledger(NoopStore()))
    await row("noop", billing_pair(noop, cfg, "noop"))

    cfg = config(str(workdir / "ledger.sqlite"))
    sqlite_provider = BudgetProvider(cfg, ledger=Ledger(open_stores(cfg.ledger).ledger()))
    await row("sqlite", billing_pair(sqlite_provider, cfg, "sqlite"))
    await row("sqlite-levels", billing_pair(sqlite_provider, cfg, "sqlite-l", levels=True))
    await sqlite_provider.close()
    rated = config(str(workdir / "ledger.sqlite"), rated=True)
    rated_provider = BudgetProvider(rated, ledger=Ledger(open_stores(rated.ledger).ledger()))
    await row("sqlite-rated", billing_pair(rated_provider, rated, "sqlite-r", True, True))
    await rated_provider.close()
    raw, close_raw = raw_sqlite_pair(workdir / "raw.sqlite")
    await row("sqlite-raw", raw)
    close_raw()

    redis = start_redis(workdir)
    if redis is None:
        results["redis"] = "skipped: redis-server not installed"
        return results
    proc, url = redis
    try:
        store = RedisStore(url)  # its client is the ping baseline's pool too
        redis_provider = BudgetProvider(cfg, ledger=Ledger(store))
        await row("redis", billing_pair(redis_provider, cfg, "redis"))
        await row("redis-levels", billing_pair(redis_provider, cfg, "redis-l", levels=True))
        rated_redis = BudgetProvider(rated, ledger=Ledger(Stores("redis", url=url).ledger()))
        await row("redis-rated", billing_pair(rated_redis, rated, "redis-r", True, True))
        await rated_redis.close()

        async def ping(_: int) -> None:
            await store.client.ping()
            await store.client.ping()

        await row("redis-ping", ping)
        await redis_provider.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return results


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="t2-bench-ledger-") as tmp:
        results = asyncio.run(run(Path(tmp)))
    results["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    print(json.dumps(results, indent=2))
    print(
        "\n| backend | concurrency | pairs/s | p50 ms/pair | baseline | baseline pairs/s | ratio |"
    )
    print("|---|---|---|---|---|---|---|")
    for backend, base in (
        ("sqlite-rated", "sqlite"),
        ("redis-rated", "redis"),
        ("sqlite-rated", "sqlite-levels"),
        ("redis-rated", "redis-levels"),
        ("sqlite-levels", "sqlite"),
        ("redis-levels", "redis"),
        ("sqlite", "sqlite-raw"),
        ("redis", "redis-ping"),
        ("sqlite", "noop"),
        ("redis", "noop"),
    ):
        for c in PAIRS:
            r, b = results.get(f"{backend}@{c}"), results.get(f"{base}@{c}")
            if not isinstance(r, dict) or not isinstance(b, dict):
                continue
            print(
                f"| {backend} | {c} | {r['pairs_per_s']:,.0f} | {r['p50_ms']:.3f} | {base} | "
                f"{b['pairs_per_s']:,.0f} | {r['pairs_per_s'] / b['pairs_per_s']:.2f} |"
            )


if __name__ == "__main__":
    main()
