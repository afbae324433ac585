"""The remote backend's failures as a client sees them, during a request through the real app:
an upstream that drops connections is retried with doubling backoff and the request succeeds;
one that never recovers is a 502; one slower than `remote.timeout_s` is a 504. The upstream is
the scriptable loopback one (tests/fixtures/upstream.py), so each fault happens on cue."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from server.app import create_app, serve_in_loop
from server.config import parse_config
from tests.fixtures.server import DEMO_KEY, MODEL, RecordingProvider, server_config_dict
from tests.fixtures.upstream import ANSWER, FakeUpstream, serve_upstream

AUTH = {"Authorization": f"Bearer {DEMO_KEY}"}
BODY = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Q: 7+8-9=?"}],
    "max_tokens": 32,
    "t2": {"policy": "fixed:3"},
}


@contextlib.asynccontextmanager
async def remote_app(
    up: FakeUpstream, **remote: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, RecordingProvider]]:
    settings = server_config_dict()
    settings["engine"] = {"backend": "remote", "remote": {"urls": [up.url], **remote}}
    billing = RecordingProvider()
    app = create_app(parse_config(settings), billing=billing)  # the app starts the engine
    async with (
        serve_in_loop(app) as live,
        httpx.AsyncClient(base_url=live.base_url, headers=AUTH, timeout=60) as http,
    ):
        for _ in range(600):  # the tokenizer loads, then the upstream is probed
            if (await http.get("/readyz")).status_code == 200:
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("the remote engine never became ready")
        yield http, billing


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with serve_upstream() as up:
        yield up


async def test_dropped_connections_are_retried_with_backoff(upstream: FakeUpstream) -> None:
    async with remote_app(upstream, retries=3, backoff_s=0.3) as (http, billing):
        upstream.drop_first = 2
        reply = await http.post("/v1/chat/completions", json=BODY)
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["content"] == ANSWER
        assert reply.json()["t2"]["samples"] == 3
        # three attempts of the one wave, 0.3 s and then 0.6 s apart
        first, second, third = upstream.arrivals
        assert second - first >= 0.3 and third - second >= 0.6
        assert [b["n"] for b in upstream.bodies] == [3, 3, 3]
        [settled] = billing.calls
        assert settled["completion_tokens"] == 3 * len(ANSWER)  # billed once, for the answer


async def test_an_upstream_that_stays_down_is_a_502(upstream: FakeUpstream) -> None:
    async with remote_app(upstream, retries=1, backoff_s=0.05) as (http, billing):
        upstream.drop_first = 100
        reply = await http.post("/v1/chat/completions", json=BODY)
        assert reply.status_code == 502, reply.text
        assert reply.json()["error"]["code"] == "upstream_error"
        assert len(upstream.arrivals) == 2  # the attempt and its one retry
        assert [c["completion_tokens"] for c in billing.calls] == [0]  # settled, nothing billed


async def test_an_upstream_slower_than_its_timeout_is_a_504(upstream: FakeUpstream) -> None:
    async with remote_app(upstream, timeout_s=0.5, retries=3) as (http, _):
        upstream.delay_s = 5.0
        reply = await http.post("/v1/chat/completions", json=BODY)
        assert reply.status_code == 504, reply.text
        assert reply.json()["error"]["code"] == "upstream_timeout"
        assert len(upstream.arrivals) == 1  # a timeout is not retried: the upstream is busy
        upstream.delay_s = 0.0
        assert (await http.post("/v1/chat/completions", json=BODY)).status_code == 200
