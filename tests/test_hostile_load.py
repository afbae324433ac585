"""Hostile load on the real app over HTTP (scripted engine): distinct `t2.policy` strings do
not grow memory, a large body is refused before it is parsed, tokenizing does not stall
/healthz, and a disconnect counts as 499 with no task left pending."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from server import metrics
from server.app import create_app, serve_in_loop
from server.config import parse_config
from tests.fakes import ScriptedEngine, cycle
from tests.fixtures.server import DEMO_KEY, MODEL, server_config_dict

AUTH = {"Authorization": f"Bearer {DEMO_KEY}"}


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        line = next(x for x in status if x.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


@pytest_asyncio.fixture
async def live() -> AsyncIterator[tuple[str, Any, ScriptedEngine]]:
    engine = ScriptedEngine(cycle("A: 1", "A: 1", "A: 2"))
    config = parse_config(server_config_dict(max_body_bytes=256 * 1024))
    app = create_app(config, engine=engine)
    async with serve_in_loop(app) as server:
        yield server.base_url, app, engine


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Q: 1+1=?"}], **extra}


async def test_3000_distinct_policies_grow_neither_the_book_nor_memory(
    live: tuple[str, Any, ScriptedEngine],
) -> None:
    base, app, _ = live
    book = app.state.t2.policies

    async with httpx.AsyncClient(base_url=base, headers=AUTH, timeout=60) as http:

        async def ask(i: int) -> None:
            spec = f"t2:lam=0.{i:06d}1"  # 3,000 different strings, each a valid t2 spec
            # at most 4 samples: what is under test is the spec's policy, not how deep it draws
            t2 = {"policy": spec, "max_samples": 4}
            resp = await http.post("/v1/chat/completions", json=chat(t2=t2))
            assert resp.status_code == 200, resp.text

        for i in range(300):  # warm up: allocator pools, caches, the first value tables
            await ask(i)
        gc.collect()
        before = rss_bytes()
        for start in range(300, 3300, 50):
            await asyncio.gather(*(ask(i) for i in range(start, start + 50)))
        gc.collect()
        grown = rss_bytes() - before
    assert len(book) <= book.capacity
    assert grown < 20 * 2**20, f"RSS grew {grown / 2**20:.1f} MiB over 3,000 policy specs"


async def test_a_large_body_is_a_413_declared_or_chunked(
    live: tuple[str, Any, ScriptedEngine],
) -> None:
    base, _, engine = live
    big = chat(messages=[{"role": "user", "content": "x" * 300_000}])
    async with httpx.AsyncClient(base_url=base, headers=AUTH, timeout=60) as http:
        declared = await http.post("/v1/chat/completions", json=big)

        async def chunks() -> AsyncIterator[bytes]:
            payload = httpx.Request("POST", base, json=big).content
            for i in range(0, len(payload), 16_384):
                yield payload[i : i + 16_384]

        chunked = await http.post(
            "/v1/chat/completions",
            content=chunks(),
            headers={"Content-Type": "application/json"},
        )
    for resp in (declared, chunked):
        assert resp.status_code == 413, resp.text[:200]
        assert resp.json()["error"]["code"] == "request_too_large"
    assert engine.calls == []


async def test_tokenizing_a_large_prompt_does_not_stall_healthz(
    live: tuple[str, Any, ScriptedEngine],
) -> None:
    """The client and the server share this event loop, so /healthz is probed from a thread
    of its own: its latency is the server loop's, not this test's."""
    base, _, engine = live
    slow = 2.0
    engine.context = 100_000  # room for a prompt large enough to be tokenized off the loop

    def slow_tokenize(prompt: str, *, chat: bool = False) -> Any:
        time.sleep(slow)  # a tokenizer busy with a huge prompt, holding its thread
        return ScriptedEngine.tokenize(engine, prompt, chat=chat)

    engine.tokenize = slow_tokenize  # type: ignore[method-assign]
    big = chat(messages=[{"role": "user", "content": "7" * 20_000}], max_tokens=4)
    waits: list[float] = []

    def probe() -> None:
        time.sleep(0.3)  # the POST is being tokenized by now
        with httpx.Client(base_url=base, timeout=30) as http:
            started = time.monotonic()
            assert http.get("/healthz").status_code == 200
            waits.append(time.monotonic() - started)

    async with httpx.AsyncClient(base_url=base, headers=AUTH, timeout=60) as http:
        prober = asyncio.create_task(asyncio.to_thread(probe))
        resp = await http.post("/v1/chat/completions", json=big)
        await prober
    assert resp.status_code == 200, resp.text[:200]
    assert waits and waits[0] < slow / 4, f"/healthz took {waits[0]:.2f} s"


async def test_a_disconnect_is_499_and_leaves_no_task_pending(
    live: tuple[str, Any, ScriptedEngine], caplog: pytest.LogCaptureFixture
) -> None:
    base, _, engine = live
    engine.token_s = 0.05
    metrics.configure_labels(tenants=["demo"], models=[MODEL])

    def count_499() -> float:
        from prometheus_client import REGISTRY

        return sum(
            s.value
            for fam in REGISTRY.collect()
            for s in fam.samples
            if s.name == "t2_requests_total" and s.labels.get("status") == "499"
        )

    before = count_499()
    caplog.set_level(logging.ERROR, logger="asyncio")
    for stream in (True, False):
        engine.calls.clear()

        async def call(stream: bool = stream) -> None:
            async with (
                httpx.AsyncClient(base_url=base, headers=AUTH, timeout=60) as http,
                http.stream(
                    "POST", "/v1/chat/completions", json=chat(stream=stream, max_tokens=40)
                ) as resp,
            ):
                async for _ in resp.aiter_lines():
                    pass

        task = asyncio.create_task(call())
        while not engine.calls:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for _ in range(100):
            if engine.aborted:
                break
            await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)
    gc.collect()
    await asyncio.sleep(0.1)
    assert count_499() >= before + 2
    assert "Task was destroyed but it is pending" not in caplog.text


async def test_a_prompt_longer_than_any_tokenization_can_fit_is_refused_untokenized(
    live: tuple[str, Any, ScriptedEngine],
) -> None:
    base, _, engine = live

    def no_tokenizing(prompt: str, *, chat: bool = False) -> Any:
        raise AssertionError("a prompt that cannot fit was tokenized")

    engine.tokenize = no_tokenizing  # type: ignore[method-assign]
    too_long = "7" * (engine.context * engine.max_token_chars + 1)
    async with httpx.AsyncClient(base_url=base, headers=AUTH, timeout=60) as http:
        resp = await http.post(
            "/v1/chat/completions", json=chat(messages=[{"role": "user", "content": too_long}])
        )
    assert resp.status_code == 400, resp.text[:300]
    assert resp.json()["error"]["code"] == "context_length_exceeded"
    assert resp.json()["error"]["param"] == "messages"
