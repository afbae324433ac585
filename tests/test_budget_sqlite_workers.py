"""Several worker processes on one SQLite ledger file (README, Tenants and budgets: each
reserve or settle is one `BEGIN IMMEDIATE` transaction, so workers on one file serialise).

Three OS processes, each a replica with 16 requests in flight, start together against one
file whose day budget fits about 200, 50 or 5 requests (the larger, the more settles race;
the smaller, the more reservations race for its last unit): together they spend it and never
more, every settled wave is in the ledger exactly once, and no hold is left behind. The
request loop, the worker and the log format are test_budget_concurrency.py's."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from server.billing import BudgetProvider
from storage.sqlite.ledger import SQLiteStore
from tests.test_budget_concurrency import (
    LIMIT_50,
    config,
    logged,
    spawn,
    spent_and_reserved,
)

WORKERS = 3
REQUESTS = 150  # per worker: 450 in all, more than twice the largest budget


@pytest.mark.parametrize("attempt", [1, 2, 3])  # a race: each run is one more chance to lose
@pytest.mark.parametrize("limit", [4 * LIMIT_50, LIMIT_50, LIMIT_50 / 10])
async def test_worker_processes_on_one_sqlite_file_share_the_budget(
    tmp_path: Path, limit: float, attempt: int
) -> None:
    where = str(tmp_path / "ledger.sqlite")
    # The file exists before the workers start, as a deployed ledger does. (Several processes
    # creating a fresh file at the same moment can fail `PRAGMA journal_mode=WAL` with
    # "database is locked": seen about once in ten runs, reported, not fixed here.)
    await SQLiteStore(where).close()
    barrier = tmp_path / "go"
    procs = [
        spawn(
            "sqlite", where, limit, 120.0, REQUESTS, f"worker{i}", tmp_path / f"w{i}.log", barrier
        )
        for i in range(WORKERS)
    ]
    deadline = time.monotonic() + 120
    while not all(Path(f"{barrier}.worker{i}").exists() for i in range(WORKERS)):
        assert all(p.poll() is None for p in procs), "a worker died while starting"
        assert time.monotonic() < deadline, "the workers did not start"
        await asyncio.sleep(0.02)
    barrier.touch()  # all workers start their load together
    for p in procs:
        _, err = await asyncio.to_thread(p.communicate, timeout=300)
        assert p.returncode == 0, err.decode()
    settled = {}
    for i in range(WORKERS):
        settled.update(logged(tmp_path / f"w{i}.log"))
    if limit > LIMIT_50:  # a budget this size outlasts the workers' start: they overlap
        assert len({request.split("-")[0] for request, _ in settled}) >= 2
    cfg = config("sqlite", where, limit)
    provider = BudgetProvider(cfg, publish_metrics=False)
    try:
        spent, reserved = await spent_and_reserved(provider, cfg.tenants[0])
    finally:
        await provider.close()
    assert spent <= limit * (1 + 1e-9)
    # the budget was used, not refused early (a small one can end with holds' slack unused)
    assert spent >= (0.9 if limit >= LIMIT_50 else 0.25) * limit
    assert spent == pytest.approx(sum(settled.values()), rel=1e-9)  # no lost or double write
    assert reserved == pytest.approx(0.0, abs=1e-12)
