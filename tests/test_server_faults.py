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
async def test_disconnect_aborts_outstanding_samples(live_server: LiveServer, stream: bool) -> None:
    recorder = live_server.billing_recorder
    before = len(recorder.calls)
    body = {
        "model": MODEL,
        "prompt": "<|user|>Q: 6+7-5=?<|assistant|>",
        "max_tokens": 64,
        "stream": stream,
        "temperature": 1.0,
        "t2": BIG_WAVE,
    }
    headers = {"Authorization": f"Bearer {DEMO_KEY}"}

    async def call() -> None:
        async with (
            httpx.AsyncClient(base_url=live_server.v1, timeout=60) as http,
            http.stream("POST", "/completions", json=body, headers=headers) as resp,
        ):
            async for _ in resp.aiter_lines():
                pass

    generated_before = vllm_counter("vllm:generation_tokens_total")
    task = asyncio.create_task(call())
    engine = live_server.app.state.t2.engines[MODEL]
    deadline = time.monotonic() + 20
    while (engine.queue_depth() or 0) == 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert (engine.queue_depth() or 0) > 0, "the wave never reached the engine"
    await asyncio.sleep(0.05)
    task.cancel()  # closes the connection mid-wave
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert await _engine_idle(live_server, 5.0), "samples kept running after the disconnect"
    for _ in range(100):  # settlement follows the abort
        if len(recorder.calls) > before:
            break
        await asyncio.sleep(0.02)
    settled = recorder.calls[before:]
    assert len(settled) == 1, settled
    assert settled[0]["completion_tokens"] < 48 * 64  # billed what was generated, not reserved
    # ... and every generated token, the aborted samples' partial ones included.
    generated = vllm_counter("vllm:generation_tokens_total") - generated_before
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
