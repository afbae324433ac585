"""Admission under a burst: 200 concurrent requests against a budget that fits about 30.

Each request runs the sampling loop's billing calls through `BudgetProvider` (reserve a wave's
worst case, "draw" it for 50–150 ms, settle what it really used, which is 10–40% of max_tokens,
close) on the real ledger, SQLite and Redis. Measured with admission waiting for outstanding
holds (`ledger.admission_wait_s`, the default 10 s) against refusing at once (0 s, the old
behaviour), in the same run. Goals: ≥ 95% of the budget used, 0 overspend, and every 429 only
after the budget is spent (settled spend within one sample's worst case of the limit).

Run: `python -m bench admission`. Prints JSON and writes var/bench/admission.json.
"""

from __future__ import annotations

import asyncio
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.ledger import start_redis
from controller.budget import Ledger
from server.billing import BudgetProvider, WaveHold
from server.config import AppConfig, TenantConfig, parse_config
from server.errors import InsufficientQuota
from storage import Stores

REQUESTS = 200
PROMPT, MAX_TOKENS, WAVE, WAVES = 40, 64, 4, 2
PER_TOKEN = {"prompt_per_1m": 1000.0, "completion_per_1m": 1000.0}  # 1e-3 per token
# what a request really costs on average: WAVES × (prompt + WAVE × 25% × max_tokens) tokens
TYPICAL = WAVES * (PROMPT + WAVE * 0.25 * MAX_TOKENS) * 1e-3
LIMIT = 30 * TYPICAL
WORST_SAMPLE = (PROMPT + MAX_TOKENS) * 1e-3


def config(backend: str, where: str, wait_s: float) -> AppConfig:
    return parse_config(
        {
            "models": [{"id": "m", "path": "models/tiny-arith"}],
            "ledger": {
                "backend": backend,
                "path": where,
                "redis_url": where if backend == "redis" else None,
                "admission_wait_s": wait_s,
            },
            "tenants": [
                {
                    "id": "burst",
                    "api_keys": [{"plain": "k"}],
                    "prices": {"models": {"*": PER_TOKEN}},
                    "budgets": {"day": {"limit": LIMIT}},
                }
            ],
            "demo": True,
        },
        "bench",
    )


async def one(
    provider: BudgetProvider, tenant: TenantConfig, rid: str, rng: random.Random
) -> dict[str, Any]:
    billing = provider.for_request(tenant, "m", rid)
    got = 0
    try:
        for wave in range(WAVES):
            try:
                hold = await billing.reserve(WaveHold(wave, WAVE, PROMPT, MAX_TOKENS))
            except InsufficientQuota as exc:
                if got == 0:
                    return {"refused": True, "retry_after": exc.retry_after_s}
                break
            await asyncio.sleep(rng.uniform(0.05, 0.15))  # the engine at work
            used = sum(rng.randint(6, 26) for _ in range(hold.samples))
            await billing.settle(hold, prompt_tokens=PROMPT, completion_tokens=used)
            got += hold.samples
    finally:
        await billing.close()
    return {"refused": False, "samples": got}


async def burst(backend: str, where: str, wait_s: float) -> dict[str, Any]:
    cfg = config(backend, where, wait_s)
    store = Stores(backend, path=where, url=where if backend == "redis" else None).ledger()
    provider = BudgetProvider(cfg, ledger=Ledger(store), publish_metrics=False)
    tenant = cfg.tenants[0]
    started = time.monotonic()
    outcomes = await asyncio.gather(
        *(
            one(provider, tenant, f"{backend}-{wait_s}-{i}", random.Random(i))
            for i in range(REQUESTS)
        )
    )
    wall = time.monotonic() - started
    usage = await provider.ledger.usage(tenant.id, tenant.budgets)
    day = next(u for u in usage if u.name == "day")
    await provider.close()
    refused = [o for o in outcomes if o["refused"]]
    spent = day.spent_value
    return {
        "backend": backend,
        "admission_wait_s": wait_s,
        "answered": REQUESTS - len(refused),
        "refused": len(refused),
        "spent_fraction": round(spent / LIMIT, 4),
        "overspend": round(max(0.0, spent - LIMIT), 9),
        "refusals_before_spent": (len(refused) if spent < LIMIT - WORST_SAMPLE else 0),
        "max_retry_after_s": max((o["retry_after"] or 0 for o in refused), default=None),
        "wall_s": round(wall, 2),
    }


async def run() -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for wait_s in (0.0, 10.0):
            rows.append(await burst("sqlite", str(work / f"ledger-{wait_s}.sqlite"), wait_s))
        redis = start_redis(work)
        if redis is not None:
            proc, url = redis
            try:
                for i, wait_s in enumerate((0.0, 10.0)):
                    rows.append(await burst("redis", url.replace("/0", f"/{i + 1}"), wait_s))
            finally:
                proc.terminate()
    return {"limit": LIMIT, "requests": REQUESTS, "fits_about": 30, "rows": rows}


def main() -> None:
    summary = asyncio.run(run())
    out = Path("var/bench/admission.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
