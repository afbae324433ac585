"""Pure ASGI middleware (not BaseHTTPMiddleware, so streaming and disconnects pass through).

- `BodyLimit`: a request body over the limit gets 413 in OpenAI's error shape before anything
  parses it, whether it declares its length or streams it chunked. The limit is read per
  request, so it can follow what the served models can hold (ServingState.body_limit).
- `RequestMetrics`: every completion request counted by its final status and timed, 4xx and 5xx
  included. It is the outermost middleware, so a 413 from `BodyLimit` and a drain's 503 count;
  an unhandled error counts as 500 (Starlette writes that response outside all middleware); a
  stream that began with 200 and ended with an error event counts as the error's status
  (`note_stream_errors`); a client that leaves before the response is complete counts as 499,
  as nginx logs it.
- `OverdueLog`: a completion request still running well past the server's own time limit is
  logged with where it waits (its task's await chain), so a request that hangs outside the
  limit's reach says where.
- `DrainDeadline`: when a SIGTERM's drain time runs out, requests still in flight are cancelled
  (their spend settles in the serving code's `finally`) and answered 503 in OpenAI's shape.
  Left to uvicorn, the cut-off would cancel them itself and send a bare-text 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server import metrics
from server.api.sse import encode
from server.errors import APIError
from server.serving.events import Done, StreamError, StreamEvent

COMPLETION_PATHS = ("/v1/chat/completions", "/v1/completions")
FINAL_STATUS = "final_status"
"""Key in the request's scope state: the status a response told its client after its start line
(a stream's error event), which RequestMetrics counts instead of the start line's 200."""
OVERDUE_GRACE_S = 10.0
"""How long past the request time limit a completion request may run before `OverdueLog`."""

log = logging.getLogger(__name__)


def too_large(limit: int) -> APIError:
    return APIError(
        413,
        f"The request body is larger than this server's limit of {limit} bytes.",
        code="request_too_large",
    )


async def _send_error(send: Send, error: APIError) -> None:
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """Refuse bodies over `limit()` bytes with 413 before the app reads them."""

    def __init__(self, app: ASGIApp, limit: Callable[[], int]) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.limit()
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                length = -1
            if length > max_bytes:
                await _send_error(send, too_large(max_bytes))
                return
            if length >= 0:  # the server enforces the declared length itself
                await self.app(scope, receive, send)
                return
        # chunked (or a bad length): read it here, up to the limit, then hand it on
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message], receive), send)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > max_bytes:
                await _send_error(send, too_large(max_bytes))
                return
            chunks.append(chunk)
            more = bool(message.get("more_body", False))
        whole = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([whole], receive), send)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A `receive` that first returns `messages`, then what the client sends next."""
    pending = list(messages)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


class RequestMetrics:
    """Count and time completion requests by final status (see the module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in COMPLETION_PATHS:
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status = 0
        complete = failed = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, complete
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                complete = True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except ClientDisconnect:  # the client left (asyncio's CancelledError is no Exception)
            raise
        except Exception:  # Starlette's outermost handler answers it with a 500
            failed = True
            raise
        finally:
            state = scope.get("state") or {}
            final = _final_status(status, complete, failed, state.get(FINAL_STATUS))
            tenant = getattr(state.get("tenant"), "id", None)
            duration = time.monotonic() - started
            metrics.observe_request(tenant, state.get("model"), final, duration)


def _final_status(status: int, complete: bool, failed: bool, noted: int | None) -> int:
    """What the client was told: the noted error of a stream, else the start line's status;
    500 for an error no response was finished for, and 499 when the client left first."""
    if complete:
        return noted or status
    return 500 if failed else 499


async def note_stream_errors(
    events: AsyncIterator[StreamEvent], state: Any
) -> AsyncIterator[StreamEvent]:
    """Pass a stream's events on, noting an error event's status in the request's `state`
    (Starlette's `request.state`) for RequestMetrics: the 200 went out before the error."""
    async for event in events:
        if isinstance(event, StreamError):
            setattr(state, FINAL_STATUS, event.error.status)
        yield event


class OverdueLog:
    """Log a completion request still running OVERDUE_GRACE_S past `limit()` seconds, with its
    await chain. The limit bounds a request's waits on the engine; a request past it by that
    much waits on something else, and the chain names it (one timer per request)."""

    def __init__(self, app: ASGIApp, limit: Callable[[], float]) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in COMPLETION_PATHS:
            await self.app(scope, receive, send)
            return
        task = asyncio.current_task()
        started = time.monotonic()

        def overdue() -> None:
            if task is not None and not task.done():
                waited = time.monotonic() - started
                log.warning("%s still running %.0f s after it started; it waits in:\n%s",
                            scope["path"], waited, await_chain(task))  # fmt: skip

        timer = asyncio.get_running_loop().call_later(self.limit() + OVERDUE_GRACE_S, overdue)
        try:
            await self.app(scope, receive, send)
        finally:
            timer.cancel()


def await_chain(task: asyncio.Task[Any]) -> str:
    """Where a suspended task waits: each coroutine of its await chain, outermost first (into
    tasks it awaits), then what the innermost one awaits."""
    lines: list[str] = []
    node: Any = task.get_coro()
    for _ in range(200):  # a chain is finite; the bound only guards against a cycle
        if isinstance(node, asyncio.Task):
            node = node.get_coro()
        frame = getattr(node, "cr_frame", None) or getattr(node, "ag_frame", None)
        frame = frame or getattr(node, "gi_frame", None)
        if frame is None:
            break
        lines.append(f"  {frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_qualname}")
        nxt = getattr(node, "cr_await", None) or getattr(node, "ag_await", None)
        nxt = nxt or getattr(node, "gi_yieldfrom", None)
        if nxt is None:
            break
        node = nxt
    lines.append(f"  awaiting {node!r:.300}")
    return "\n".join(lines)


class Drain:
    """The drain deadline of a shutdown: set once, by the server, when SIGTERM arrives."""

    def __init__(self) -> None:
        self._expired = asyncio.Event()

    def begin(self, timeout_s: float) -> None:
        """Start the clock: in-flight requests get `timeout_s` more seconds."""
        asyncio.get_running_loop().call_later(max(timeout_s, 0.0), self._expired.set)

    @property
    def expired(self) -> bool:
        return self._expired.is_set()

    async def wait(self) -> None:
        await self._expired.wait()


def shutting_down() -> APIError:
    return APIError(
        503,
        "The server is shutting down and could not finish this request in its drain time; "
        "retry it.",
        type="server_error",
        code="server_shutting_down",
        headers={"Retry-After": "1"},
    )


class DrainDeadline:
    """Answer requests still running at the drain deadline with 503 (module docstring)."""

    def __init__(self, app: ASGIApp, drain: Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = sse = False

        async def tracked(message: Message) -> None:
            nonlocal started, sse
            if message["type"] == "http.response.start":
                started = True
                sse = any(k == b"content-type" and v.startswith(b"text/event-stream")
                          for k, v in message.get("headers", ()))  # fmt: skip
            await send(message)

        work = asyncio.ensure_future(self.app(scope, receive, tracked))
        deadline = asyncio.ensure_future(self.drain.wait())
        try:
            await asyncio.wait((work, deadline), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # our own cancellation (a disconnect, uvicorn's cut-off)
            await _cancel(work)
            raise
        finally:
            deadline.cancel()
        if work.done():
            work.result()  # the app's own outcome, exceptions included
            return
        await _cancel(work)  # the drain ran out: the serving code settles what was spent
        if started:  # a stream already under way: end it with the error as an event, and [DONE]
            scope.setdefault("state", {})[FINAL_STATUS] = 503
            tail = encode(StreamError(shutting_down())) + encode(Done()) if sse else b""
            await send({"type": "http.response.body", "body": tail, "more_body": False})
        else:
            await _send_error(send, shutting_down())


async def _cancel(task: asyncio.Future[None]) -> None:
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
