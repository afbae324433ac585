"""Pure ASGI middleware (not BaseHTTPMiddleware, so streaming and disconnects pass through).

- `BodyLimit`: a request body over the limit gets 413 in OpenAI's error shape before anything
  parses it, whether it declares its length or streams it chunked. The limit is read per
  request, so it can follow what the served models can hold (ServingState.body_limit).
- `RequestMetrics`: every completion request counted by its final status, 4xx and 5xx included;
  a client that leaves before the response is complete counts as 499, as nginx logs it.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server import metrics
from server.errors import APIError

COMPLETION_PATHS = ("/v1/chat/completions", "/v1/completions")


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
    """Count completion requests by final status (see the module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in COMPLETION_PATHS:
            await self.app(scope, receive, send)
            return
        status = 499
        complete = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, complete
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                complete = True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            state = scope.get("state") or {}
            tenant = state.get("tenant")
            final = status if complete else 499  # the client left before the end
            metrics.observe_request(getattr(tenant, "id", None), state.get("model"), final)
