"""What a streamed completion yields, before SSE encoding (server/api/sse.py)."""

from __future__ import annotations

from dataclasses import dataclass

from server.api.protocol import StreamChunk
from server.errors import APIError


@dataclass(frozen=True)
class KeepAlive:
    """Nothing to send yet: waves are running (`note` says how far); `chunk` is what goes out
    (an empty delta, see `Reply.keepalive`)."""

    note: str
    chunk: StreamChunk


@dataclass(frozen=True)
class StreamError:
    """The request failed after the 200 was sent: the error goes out as an event."""

    error: APIError


@dataclass(frozen=True)
class Done:
    """The stream's end (`data: [DONE]`)."""


StreamEvent = StreamChunk | KeepAlive | StreamError | Done
