"""Server-sent events, encoded: pure functions from the serving layer's stream events to bytes.

A `StreamChunk` becomes `data: {json}`; a `KeepAlive` becomes its empty-delta chunk, a `data:`
event like any other (proxies count it as traffic while waves run). Not an SSE comment: clients
that strip a network read's trailing blank line (vllm.benchmarks.serve does) glue a comment that
arrives alone onto the next event and drop both. An error becomes OpenAI's error body as a
`data:` event; the end is `data: [DONE]`.
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


def encode(event: StreamEvent) -> bytes:
    if isinstance(event, StreamChunk):
        return data(event.model_dump(mode="json"))
    if isinstance(event, KeepAlive):
        return data(event.chunk.model_dump(mode="json"))
    if isinstance(event, StreamError):
        return data(event.error.body())
    if isinstance(event, Done):
        return data("[DONE]")
    raise TypeError(f"not a stream event: {event!r}")


async def encode_stream(events: AsyncIterator[StreamEvent]) -> AsyncIterator[bytes]:
    async for event in events:
        yield encode(event)
