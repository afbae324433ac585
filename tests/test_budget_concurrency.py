"""Budgets under concurrency, across replicas and through kill -9, on the real backends.

Each "request" runs the orchestrator's billing call order (reserve a wave's worst case, draw,
settle the tokens drawn, close) through `server.billing.BudgetProvider`; token counts are drawn at
random up to max_tokens, as an engine would report them. Replicas and crashes are separate OS
processes (`python -c` into `worker_main` below) sharing one ledger.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from server.billing import BudgetProvider, WaveHold
from server.config import AppConfig, TenantConfig, hash_key, parse_config
from server.errors import InsufficientQuota

MODEL = "m"
PROMPT = 40
MAX_TOKENS = 32
WAVE = 4
K = 8  # samples a request wants: two waves of four
PRICE = {"prompt_per_1m": 1.0, "completion_per_1m": 2.0}
# expected cost of one request: 2 waves × (40 + 4 × 16.5 × 2) / 1e6
EXPECTED_REQUEST = 2 * (PROMPT * 1.0 + WAVE * 16.5 * 2.0) / 1e6
LIMIT_50 = round(50 * EXPECTED_REQUEST, 6)


def config(backend: str, location: str, limit: float, ttl_s: float = 120.0) -> AppConfig:
    ledger: dict[str, Any] = {"backend": backend, "reservation_ttl_s": ttl_s}
    ledger.update({"path": location} if backend == "sqlite" else {"redis_url": location})
    return parse_config(
        {
            "models": [{"id": MODEL, "path": "/nonexistent"}],
            "ledger": ledger,
            "server": {"request_timeout_s": ttl_s / 2},
            "tenants": [
                {
                    "id": "acme",
                    "api_keys": [{"sha256": hash_key("k")}],
                    "prices": {"currency": "USD", "models": {"*": PRICE}},
                    "budgets": {"day": {"limit": limit, "hard": True}},
                }
            ],
        },
        "test",
    )


async def run_request(
    provider: BudgetProvider,
    tenant: TenantConfig,
    request_id: str,
    rng: random.Random,
    log: Any = None,
    arrival_s: float = 0.0,
) -> tuple[int, float, float | None]:
    """One request's billing calls; returns (samples, cost, Retry-After if refused)."""
    await asyncio.sleep(arrival_s)
    billing = provider.for_request(tenant, MODEL, request_id)
    drawn, cost, wave = 0, 0.0, 0
    try:
        while drawn < K:
            asked = min(WAVE, K - drawn)
            try:
                hold = await billing.reserve(WaveHold(wave, asked, PROMPT, MAX_TOKENS))
            except InsufficientQuota as exc:
                if drawn == 0:
                    return 0, 0.0, exc.retry_after_s
                break
            granted = hold.samples
            await asyncio.sleep(rng.uniform(0, 0.004))  # the engine at work
            tokens = sum(rng.randint(1, MAX_TOKENS) for _ in range(granted))
            charged = await billing.settle(hold, prompt_tokens=PROMPT, completion_tokens=tokens)
            if log is not None:
                log.write(f"{request_id} {wave} {charged!r}\n")
                log.flush()
            cost += charged
            drawn += granted
            wave += 1
            if granted < asked:
                break
    finally:
        await billing.close()
    return drawn, cost, None


async def spent_and_reserved(provider: BudgetProvider, tenant: TenantConfig) -> tuple[float, float]:
    day = next(u for u in await provider.ledger.usage(tenant.id, tenant.budgets) if u.name == "day")
    return day.spent_value, day.reserved_value


def location(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if backend == "sqlite":
        return str(tmp_path / "ledger.sqlite")
    url: str = request.getfixturevalue("redis_url")
    return url


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_200_concurrent_requests_never_overspend(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    cfg = config(backend, location(backend, tmp_path, request), LIMIT_50)
    provider = BudgetProvider(cfg, publish_metrics=False)
    tenant = cfg.tenants[0]
    rng = random.Random(7)
    try:
        results = await asyncio.gather(
            *(
                run_request(
                    provider, tenant, f"req-{i}", random.Random(i), arrival_s=rng.uniform(0, 0.3)
                )
                for i in range(200)
            )
        )
        spent, reserved = await spent_and_reserved(provider, tenant)
    finally:
        await provider.close()
    served = [r for r in results if r[0] > 0]
    refused = [r for r in results if r[0] == 0]
    assert spent <= LIMIT_50 * (1 + 1e-9)  # per-wave reservation: zero overspend
    assert reserved == pytest.approx(0.0, abs=1e-12)
    assert spent == pytest.approx(sum(r[1] for r in results), rel=1e-9)
    assert 40 <= len(served) <= 120  # about 50 full requests' worth, some degraded
    assert spent >= 0.9 * LIMIT_50  # and the budget was actually used, not refused early
    assert refused and all(r[2] is not None and r[2] > 0 for r in refused)
    assert any(0 < r[0] < K for r in served)  # some requests got smaller waves first


# -- separate processes -------------------------------------------------------------------


def worker_main(
    backend: str,
    where: str,
    limit: float,
    ttl_s: float,
    n: int,
    prefix: str,
    barrier: str | None = None,
) -> None:
    """A replica: `n` requests, 16 at a time, logging every settled wave to stdout. With a
    `barrier` path, it writes `<barrier>.<prefix>` when ready and starts once `barrier` exists."""

    async def go() -> None:
        cfg = config(backend, where, limit, ttl_s)
        provider = BudgetProvider(cfg, publish_metrics=False)
        tenant = cfg.tenants[0]
        # open the store before saying ready: a replica that connects to Redis only after the
        # start signal can find the other one has spent the whole budget meanwhile
        await provider.ledger.usage(tenant.id, tenant.budgets)
        if barrier is not None:
            Path(f"{barrier}.{prefix}").touch()
            while not Path(barrier).exists():
                await asyncio.sleep(0.01)
        sem = asyncio.Semaphore(16)
        rng = random.Random(prefix)

        async def one(i: int) -> None:
            async with sem:
                await run_request(  # arrivals spread over a second, so the replicas interleave
                    provider,
                    tenant,
                    f"{prefix}-{i}",
                    random.Random(rng.random()),
                    sys.stdout,
                    arrival_s=rng.uniform(0, 1.0) if barrier is not None else 0.0,
                )

        await asyncio.gather(*(one(i) for i in range(n)))
        await provider.close()

    asyncio.run(go())


def spawn(
    backend: str,
    where: str,
    limit: float,
    ttl_s: float,
    n: int,
    prefix: str,
    out: Path,
    barrier: Path | None = None,
) -> subprocess.Popen[bytes]:
    gate = None if barrier is None else str(barrier)
    code = (
        "from tests.test_budget_concurrency import worker_main; "
        f"worker_main({backend!r}, {where!r}, {limit!r}, {ttl_s!r}, {n!r}, {prefix!r}, {gate!r})"
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=root,
        env=env,
        stdout=out.open("wb"),
        stderr=subprocess.PIPE,
    )


def logged(path: Path) -> dict[tuple[str, int], float]:
    out: dict[tuple[str, int], float] = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:
            out[(parts[0], int(parts[1]))] = float(parts[2])
    return out


@pytest.mark.redis
async def test_two_replicas_on_one_redis_share_the_budget(tmp_path: Path, redis_url: str) -> None:
    limit = LIMIT_50
    barrier = tmp_path / "go"
    procs = [
        spawn("redis", redis_url, limit, 120.0, 100, f"replica{i}", tmp_path / f"r{i}.log", barrier)
        for i in range(2)
    ]
    deadline = time.monotonic() + 60
    while not all(Path(f"{barrier}.replica{i}").exists() for i in range(2)):
        assert all(p.poll() is None for p in procs), "a replica died while starting"
        assert time.monotonic() < deadline, "the replicas did not start"
        await asyncio.sleep(0.02)
    barrier.touch()  # both replicas start their load together
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    settled = {**logged(tmp_path / "r0.log"), **logged(tmp_path / "r1.log")}
    assert {k[0].split("-")[0] for k in settled} == {"replica0", "replica1"}  # both served
    cfg = config("redis", redis_url, limit)
    provider = BudgetProvider(cfg, publish_metrics=False)
    try:
        spent, reserved = await spent_and_reserved(provider, cfg.tenants[0])
    finally:
        await provider.close()
    assert spent <= limit * (1 + 1e-9)
    assert spent >= 0.9 * limit
    assert spent == pytest.approx(sum(settled.values()), rel=1e-9)
    assert reserved == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_kill_9_under_load_keeps_the_ledger_consistent(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    where = location(backend, tmp_path, request)
    limit, ttl = 1000.0, 2.0  # large budget: the load is still running when it is killed
    log = tmp_path / "victim.log"
    victim = spawn(backend, where, limit, ttl, 100_000, "victim", log)
    deadline = time.monotonic() + 60
    while len(logged(log)) < 200:  # let it settle a few hundred waves first
        assert victim.poll() is None, victim.stderr.read().decode() if victim.stderr else ""
        assert time.monotonic() < deadline, "the worker settled too little"
        await asyncio.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)
    acknowledged = logged(log)  # settles the worker saw succeed before it died

    cfg = config(backend, where, limit, ttl)
    provider = BudgetProvider(cfg, publish_metrics=False)  # "the restart"
    tenant = cfg.tenants[0]
    try:
        spent, reserved = await spent_and_reserved(provider, tenant)
        # every acknowledged settle survived; at most the in-flight ones (≤ 16) were also committed
        assert spent >= sum(acknowledged.values()) * (1 - 1e-9)
        assert spent <= sum(acknowledged.values()) + 16 * 2 * (PROMPT + WAVE * MAX_TOKENS * 2) / 1e6
        await asyncio.sleep(ttl + 0.2)  # no hold outlives its TTL
        spent_later, reserved_later = await spent_and_reserved(provider, tenant)
        assert reserved_later == pytest.approx(0.0, abs=1e-12)
        assert await provider.ledger.store.reserved_holds() == 0
        assert spent_later == pytest.approx(spent)
        # and the restarted replica bills on from there
        served, cost, _ = await run_request(provider, tenant, "after-restart", random.Random(1))
        assert served == K
        after, _ = await spent_and_reserved(provider, tenant)
        assert after == pytest.approx(spent + cost)
    finally:
        await provider.close()
    if backend == "sqlite":
        import sqlite3

        with sqlite3.connect(where) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            journal = conn.execute("SELECT sum(money) FROM settlements").fetchone()[0]
        assert journal == pytest.approx(after)
    # what was still held at the kill is at most the victim's 16 in-flight waves' worst case
    assert reserved <= 16 * (PROMPT * 1.0 + WAVE * MAX_TOKENS * 2.0) / 1e6 * (1 + 1e-9)
