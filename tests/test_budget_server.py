"""Budgets end to end: official openai client → live app → real engine → SQLite ledger file.

A tenant whose daily budget fits less than one full wave gets a smaller wave first, then 429
`insufficient_quota` with Retry-After at the UTC day's end; the ledger's spend equals what the
responses reported and never exceeds the limit; a t2 tenant sees its pacing λ in `t2`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from server.app import create_app
from server.config import AppConfig, hash_key, parse_config
from tests.fixtures.server import MODEL, LiveServer, OpenClient, serve_in_loop

pytestmark = pytest.mark.engine

TIGHT_KEY, PACED_KEY, ADMIN_KEY = "tight-key", "paced-key", "admin-key"
CAP_KEY = "cap-key"
MAX_TOKENS = 16
MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Q: 12+30-7=? Budget test, please show your work."}
]
PER_TOKEN = {"prompt_per_1m": 1e6, "completion_per_1m": 1e6}  # 1 unit per token: easy sums


def budget_config(tmp_path: Path, prompt_tokens: int) -> AppConfig:
    return parse_config(
        {
            "models": [{"id": MODEL, "path": "models/tiny-arith"}],
            "ledger": {"backend": "sqlite", "path": str(tmp_path / "ledger.sqlite")},
            "admin": {"key_sha256": hash_key(ADMIN_KEY)},
            "defaults": {"max_samples": 16, "max_tokens": MAX_TOKENS},
            "tenants": [
                {
                    "id": "tight",
                    "api_keys": [{"sha256": hash_key(TIGHT_KEY)}],
                    "policy": "fixed:4",
                    "prices": {"models": {"*": PER_TOKEN}},
                    # fits the prompt and 2.5 samples' worst case: a wave of 4 must shrink
                    "budgets": {"day": {"limit": prompt_tokens + 2.5 * MAX_TOKENS}},
                },
                {
                    "id": "paced",
                    "api_keys": [{"sha256": hash_key(PACED_KEY)}],
                    "policy": "t2",
                    "prices": {"models": {"*": PER_TOKEN}},
                    "budgets": {"day": {"limit": 1e7}},
                    # a prepaid allotment to use up: slack sets a (low) price, where the
                    # default cap mode would add none
                    "pacing": {"mode": "spend"},
                },
                {
                    "id": "capped",
                    "api_keys": [{"sha256": hash_key(CAP_KEY)}],
                    "policy": "t2",
                    "prices": {"models": {"*": PER_TOKEN}},
                    "budgets": {"day": {"limit": 1e7}},
                },
            ],
        },
        "budget test",
    )


@pytest.fixture
async def live(engine: Any, tmp_path: Path) -> AsyncIterator[tuple[LiveServer, AppConfig]]:
    prompt_tokens = int(engine.count_tokens(engine.apply_chat_template(MESSAGES)))
    cfg = budget_config(tmp_path, prompt_tokens)
    app = create_app(cfg, engine=engine)
    async with serve_in_loop(app) as server:
        yield server, cfg
    await app.state.t2.billing.close()


async def test_shrink_then_429_with_retry_after(
    live: tuple[LiveServer, AppConfig], openai_client: OpenClient
) -> None:
    server, cfg = live
    limit = cfg.tenants[0].budgets.day.limit  # type: ignore[union-attr]
    tight = openai_client(server.v1, TIGHT_KEY, timeout=60)
    first = await tight.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=MAX_TOKENS,
    )
    t2 = first.parse().model_extra["t2"]  # type: ignore[index]
    assert 1 <= t2["samples"] < 4 and t2["stop_reason"] == "budget"  # a smaller wave, not 429
    costs = [t2["cost"]]
    refusal: openai.RateLimitError | None = None
    for _ in range(12):
        try:
            resp = await tight.chat.completions.create(
                model=MODEL,
                messages=MESSAGES,
                max_tokens=MAX_TOKENS,
            )
        except openai.RateLimitError as exc:
            refusal = exc
            break
        costs.append(resp.model_extra["t2"]["cost"])  # type: ignore[index]
    assert refusal is not None, "the budget never ran out"
    assert refusal.status_code == 429
    body = refusal.response.json()["error"]
    assert body["code"] == "insufficient_quota" and body["type"] == "insufficient_quota"
    retry_after = int(refusal.response.headers["retry-after"])
    to_midnight = 86400 - time.time() % 86400
    assert abs(retry_after - to_midnight) <= 5

    async with httpx.AsyncClient() as admin:
        report = (
            await admin.get(
                f"{server.base_url}/admin/tenants/tight",
                headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            )
        ).json()
    day = next(w for w in report["windows"] if w["window"] == "day")
    assert day["spent"] == pytest.approx(sum(costs))  # billing == what responses reported
    assert day["spent"] <= limit and day["reserved"] == 0


async def test_t2_tenant_sees_its_price_of_compute(
    live: tuple[LiveServer, AppConfig], openai_client: OpenClient
) -> None:
    server, _ = live
    paced = openai_client(server.v1, PACED_KEY, timeout=60)
    for _ in range(2):  # the first request primes this replica's view of the ledger
        raw = await paced.chat.completions.with_raw_response.create(
            model=MODEL,
            messages=MESSAGES,
            max_tokens=MAX_TOKENS,
        )
    t2 = raw.parse().model_extra["t2"]  # type: ignore[index]
    assert t2["price_of_compute"] is not None and t2["price_of_compute"] > 0
    assert float(raw.headers["x-t2-budget-remaining"]) < 1e7
    for _ in range(2):  # the same budget as a cap: far from spent, so no price at all
        raw = await openai_client(
            server.v1, CAP_KEY, timeout=60
        ).chat.completions.with_raw_response.create(
            model=MODEL, messages=MESSAGES, max_tokens=MAX_TOKENS
        )
    assert raw.parse().model_extra["t2"]["price_of_compute"] is None  # type: ignore[index]
    assert float(raw.headers["x-t2-budget-remaining"]) < 1e7
