"""Server-sent events, encoded: pure functions from the serving layer's stream events to bytes.

A `StreamChunk` becomes `data: {json}`; a `KeepAlive` becomes an SSE comment (`: …`), which
parsers ignore and proxies count as traffic while waves run; an error becomes OpenAI's error
body as a `data:` event; the end is `data: [DONE]`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from server.api.protocol import StreamChunk
from server.serving.events import Done, KeepAlive, StreamError, StreamEvent


def data(payload: dict[str, Any] | str) -> bytes:
    body = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {body}\n\n".encode()


def comment(text: str) -> bytes:
    return f": {text}\n\n".encode()


def encode(event: StreamEvent) -> bytes:
    if isinstance(event, StreamChunk):
        return data(event.model_dump(mode="json"))
    if isinstance(event, KeepAlive):
        return comment(f"keep-alive {event.note}")
    if isinstance(event, StreamError):
        return data(event.error.body())
    if isinstance(event, Done):
        return data("[DONE]")
    raise TypeError(f"not a stream event: {event!r}")


async def encode_stream(events: AsyncIterator[StreamEvent]) -> AsyncIterator[bytes]:
    async for event in events:
        yield encode(event)
