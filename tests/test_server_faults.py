"""Faults: a client that disconnects mid-request aborts its samples and is billed only for the
tokens generated; schemathesis with every check finds nothing wrong with the API."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import httpx
import pytest

from tests.fixtures.schemathesis import schemathesis_passes
from tests.fixtures.server import CAPPED_KEY, DEMO_KEY, MODEL, LiveServer, generated_tokens

pytestmark = pytest.mark.engine

BIG_WAVE = {"policy": "fixed:48", "max_samples": 48}


async def _engine_idle(live: LiveServer, within_s: float) -> bool:
    engine = live.app.state.t2.engines[MODEL]
    stop = time.monotonic() + within_s
    while time.monotonic() < stop:
        if engine.queue_depth() == 0:
            return True
        await asyncio.sleep(0.02)
    return False


def _settled(live: LiveServer, marker: str) -> list[dict[str, Any]]:
    return [c for c in live.billing_recorder.calls if marker in c["request_id"]]


@pytest.mark.parametrize("stream", [True, False])
async def test_disconnect_aborts_outstanding_samples(
    fixed_length_server: LiveServer, engine: Any, stream: bool
) -> None:
    """48 samples of exactly 400 tokens (EOS ignored) would take the engine many seconds; the
    client leaves once they are generating. Had they not been aborted, vLLM would generate all
    48 × 400 tokens, and the bill (taken at the abort) would not match what it generated."""
    live = fixed_length_server
    recorder = live.billing_recorder
    before = len(recorder.calls)
    max_tokens = 400
    body = {
        "model": MODEL,
        "prompt": "<|user|>Q: 6+7-5=?<|assistant|>",
        "max_tokens": max_tokens,
        "stream": stream,
        "temperature": 1.0,
        "t2": BIG_WAVE,
    }
    headers = {"Authorization": f"Bearer {DEMO_KEY}"}

    async def call() -> None:
        async with (
            httpx.AsyncClient(base_url=live.v1, timeout=120) as http,
            http.stream("POST", "/completions", json=body, headers=headers) as resp,
        ):
            async for _ in resp.aiter_lines():
                pass

    assert await _engine_idle(live, 60.0), "the engine was busy before the test"
    generated_before = generated_tokens(engine)
    task = asyncio.create_task(call())
    service = live.app.state.t2.engines[MODEL]
    deadline = time.monotonic() + 60
    while (service.queue_depth() or 0) == 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert (service.queue_depth() or 0) > 0, "the wave never reached the engine"
    # the samples are generating (the request is in flight, not just queued)
    while generated_tokens(engine) == generated_before:
        assert time.monotonic() < deadline, "no token was generated"
        await asyncio.sleep(0.01)
    assert not task.done()
    task.cancel()  # closes the connection mid-wave
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert await _engine_idle(live, 60.0), "samples kept running after the disconnect"
    for _ in range(500):  # settlement follows the abort
        if len(recorder.calls) > before:
            break
        await asyncio.sleep(0.02)
    settled = recorder.calls[before:]
    assert len(settled) == 1, settled
    generated = generated_tokens(engine) - generated_before
    assert 0 < generated < 48 * max_tokens, generated  # cut short: not every token was made
    # billed every generated token, the aborted samples' partial ones included, and no more
    assert settled[0]["completion_tokens"] == generated


async def test_schemathesis_with_every_check_finds_nothing(live_server: LiveServer) -> None:
    """`schemathesis run --checks all` against the live server on the real engine: no 5xx, every
    status and body as the OpenAPI document says (errors OpenAI-shaped), valid data accepted,
    invalid data refused, auth enforced (tests/schemathesis.toml states the one exception). The
    document names the served model as an example, so generated requests reach the sampling
    loop. Seeded and bounded by examples, not by a time box: every phase runs to the end and
    every run tests the same cases whatever the box's load (about 40 s idle)."""
    await schemathesis_passes(live_server.base_url, CAPPED_KEY, seed=7, max_examples=40)
