"""The serving layer over real HTTP (uvicorn on loopback) and a scripted engine: the answer is
the voted sample, streams send keep-alives and then exactly that text, and a client that leaves
aborts the wave and is still billed. Runs in seconds; the real-engine versions of these paths
are in test_server_api.py and test_server_faults.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import httpx
import pytest_asyncio

from server.app import create_app, serve_in_loop
from server.config import parse_config
from tests.fakes import ScriptedEngine, cycle
from tests.fixtures.server import DEMO_KEY, MODEL, RecordingProvider, server_config_dict

AUTH = {"Authorization": f"Bearer {DEMO_KEY}"}
# the vote goes to 6; the returned text must be one of the samples that say so
SCRIPT = cycle("7+8=15;15-9=6;A: 6", "7+8=15;15-9=5;A: 5", "7+8=9;9-9=16;A: 6", "A: 6")


@pytest_asyncio.fixture
async def served() -> AsyncIterator[tuple[str, ScriptedEngine, RecordingProvider]]:
    engine = ScriptedEngine(SCRIPT, token_s=0.002)
    billing = RecordingProvider()
    config = parse_config(server_config_dict(keepalive_interval_s=0.05))
    async with serve_in_loop(create_app(config, engine=engine, billing=billing)) as live:
        yield live.v1, engine, billing


def chat(**extra: object) -> dict[str, object]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Q: 7+8-9=?"}],
        "max_tokens": 32,
        "t2": {"policy": "fixed:8"},
        **extra,
    }


async def test_the_answer_is_a_sample_that_carries_the_winning_vote(
    served: tuple[str, ScriptedEngine, RecordingProvider],
) -> None:
    v1, engine, billing = served
    async with httpx.AsyncClient(base_url=v1, headers=AUTH, timeout=30) as http:
        body = (await http.post("/chat/completions", json=chat())).json()
    t2 = body["t2"]
    assert t2["answer"] == "6" and t2["votes"] == {"6": 6, "5": 2} and t2["samples"] == 8
    content = body["choices"][0]["message"]["content"]
    assert content in {SCRIPT(i) for i in range(4)} and content.endswith("A: 6")
    [call] = engine.calls
    assert body["usage"]["completion_tokens"] == sum(len(SCRIPT(i)) for i in range(8))
    assert body["usage"]["prompt_tokens"] == call.prompt.tokens
    [settled] = [c for c in billing.calls if c["request_id"].startswith(body["id"])]
    assert settled["completion_tokens"] == body["usage"]["completion_tokens"]


async def test_a_stream_keeps_alive_then_sends_exactly_the_chosen_text(
    served: tuple[str, ScriptedEngine, RecordingProvider],
) -> None:
    v1, engine, _ = served
    engine.token_s = 0.02  # ~0.4 s a wave: several keep-alive intervals
    lines: list[str] = []
    async with (
        httpx.AsyncClient(base_url=v1, headers=AUTH, timeout=30) as http,
        http.stream(
            "POST",
            "/chat/completions",
            json=chat(stream=True, stream_options={"include_usage": True}),
        ) as resp,
    ):
        assert resp.status_code == 200
        async for line in resp.aiter_lines():
            if line:
                lines.append(line)
    assert all(line.startswith("data: ") for line in lines)  # no comments: see server/api/sse
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}  # at once
    keepalives = [c for c in chunks if "t2_progress" in c]
    assert len(keepalives) >= 2 and chunks[1] in keepalives
    assert all(c["choices"][0]["delta"] == {"content": ""} for c in keepalives)
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    summary, final = chunks[-2], chunks[-1]
    # t2 rides on the finish chunk: only the usage chunk has no choices, as in OpenAI's stream
    assert summary["choices"][0]["finish_reason"] == "stop" and summary["t2"]["answer"] == "6"
    assert "usage" not in summary
    assert all(c["choices"] for c in chunks[:-1])
    assert streamed.endswith("A: 6") and streamed in {SCRIPT(i) for i in range(4)}
    assert final == {k: final[k] for k in ("id", "object", "created", "model", "choices", "usage")}
    assert final["choices"] == []
    assert final["usage"]["completion_tokens"] == sum(len(SCRIPT(i)) for i in range(8))
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-2])


async def _leave_mid_wave(v1: str, engine: ScriptedEngine, stream: bool) -> None:
    async def call() -> None:
        async with (
            httpx.AsyncClient(base_url=v1, headers=AUTH, timeout=30) as http,
            http.stream("POST", "/chat/completions", json=chat(stream=stream)) as resp,
        ):
            async for _ in resp.aiter_lines():
                pass

    task = asyncio.create_task(call())
    for _ in range(500):
        if engine.calls:
            break
        await asyncio.sleep(0.01)
    assert engine.calls, "the wave never reached the engine"
    await asyncio.sleep(0.1)  # part-way through every sample (each takes ≥ 0.8 s)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_a_client_that_leaves_aborts_the_wave_and_is_billed_for_it(
    served: tuple[str, ScriptedEngine, RecordingProvider],
) -> None:
    v1, engine, billing = served
    engine.token_s = 0.05
    for stream in (False, True):
        engine.calls.clear()
        engine.aborted.clear()
        await _leave_mid_wave(v1, engine, stream)
        for _ in range(200):
            if engine.aborted:
                break
            await asyncio.sleep(0.01)
        [call] = engine.calls
        assert engine.aborted == [call.request_id]
        for _ in range(200):
            settled = [c for c in billing.calls if call.request_id.startswith(c["request_id"])]
            if settled:
                break
            await asyncio.sleep(0.01)
        usage = engine.request_usage(call.request_id)
        assert usage is not None and settled, "the aborted wave was never settled"
        assert 0 < settled[0]["completion_tokens"] == usage.completion_tokens
