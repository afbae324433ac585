"""Faults: a client that disconnects mid-request aborts its samples and is billed only for the
tokens generated; schemathesis finds no input that makes a 500."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck

from tests.fixtures.server import CAPPED_KEY, DEMO_KEY, MODEL, LiveServer, vllm_counter

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
    fixed_length_server: LiveServer, stream: bool
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
    generated_before = vllm_counter("vllm:generation_tokens_total")
    task = asyncio.create_task(call())
    engine = live.app.state.t2.engines[MODEL]
    deadline = time.monotonic() + 60
    while (engine.queue_depth() or 0) == 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert (engine.queue_depth() or 0) > 0, "the wave never reached the engine"
    # the samples are generating (the request is in flight, not just queued)
    while vllm_counter("vllm:generation_tokens_total") == generated_before:
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
    generated = vllm_counter("vllm:generation_tokens_total") - generated_before
    assert 0 < generated < 48 * max_tokens, generated  # cut short: not every token was made
    # billed every generated token, the aborted samples' partial ones included, and no more
    assert settled[0]["completion_tokens"] == generated


async def test_schemathesis_finds_no_server_error(live_server: LiveServer) -> None:
    """Requests generated from the app's own OpenAPI schema: no 5xx, every error OpenAI-shaped.

    The server runs in this event loop, so the (synchronous) schemathesis calls run in a thread.
    """
    failures = await asyncio.to_thread(_run_schemathesis, live_server)
    assert not failures, failures


def _run_schemathesis(live_server: LiveServer) -> list[str]:
    schema = schemathesis.openapi.from_dict(live_server.app.openapi())
    headers = {"Authorization": f"Bearer {CAPPED_KEY}"}
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]

        @hypothesis.settings(
            max_examples=30 if operation.method.upper() == "POST" else 5,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
            phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
        )
        @hypothesis.given(case=operation.as_strategy())
        def check(case: schemathesis.Case) -> None:
            response = case.call(base_url=live_server.base_url, headers=headers, timeout=60)
            if response.status_code >= 500 and response.status_code != 503:
                failures.append(f"{case.method} {case.formatted_path}: {response.text[:200]}")
            if response.status_code >= 400:
                body = response.json()
                assert set(body["error"]) == {"message", "type", "param", "code"}, body

        check()
    return failures
