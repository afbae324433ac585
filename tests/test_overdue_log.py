"""`OverdueLog`: a completion request running well past the server's time limit says where it
waits (the limit bounds only waits on the engine, so that is where a request past it is not)."""

from __future__ import annotations

import asyncio

import pytest
from starlette.types import Receive, Scope, Send

import server.api.middleware as middleware
from server.api.middleware import OverdueLog


async def _stuck_in_the_ledger(forever: asyncio.Event) -> None:
    await forever.wait()


async def test_an_overdue_request_logs_its_await_chain(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(middleware, "OVERDUE_GRACE_S", 0.0)
    forever = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await _stuck_in_the_ledger(forever)

    async def receive() -> dict[str, object]:
        return {"type": "http.request"}

    async def send(message: object) -> None:
        return None

    scope = {"type": "http", "path": "/v1/chat/completions"}
    task = asyncio.create_task(OverdueLog(app, limit=lambda: 0.05)(scope, receive, send))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [line] = [r.getMessage() for r in caplog.records if "still running" in r.getMessage()]
    assert "_stuck_in_the_ledger" in line and "Event.wait" in line


async def test_a_request_that_ends_in_time_logs_nothing(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(middleware, "OVERDUE_GRACE_S", 0.0)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await asyncio.sleep(0.01)

    async def nothing() -> dict[str, object]:
        return {"type": "http.request"}

    async def ignore(message: object) -> None:
        return None

    scope = {"type": "http", "path": "/v1/chat/completions"}
    await OverdueLog(app, limit=lambda: 0.05)(scope, nothing, ignore)
    await asyncio.sleep(0.1)
    assert not [r for r in caplog.records if "still running" in r.getMessage()]
