"""The one place the Redis stores make their clients: text replies (every script returns
strings), and per store how it meets load and an unreachable server."""

from __future__ import annotations

import redis.asyncio as aioredis


def connect(
    url: str, *, max_connections: int | None = None, connect_timeout_s: float | None = None
) -> aioredis.Redis:
    """A client for `url`. `max_connections`: a blocking pool of that size, which waits for a
    free connection under load instead of raising (the ledger's hot path; the caller closes
    the pool too). `connect_timeout_s`: a bounded connect, so an unreachable store cannot hold
    up a replica's start for the OS's TCP timeout (minutes)."""
    if max_connections is not None:
        pool = aioredis.BlockingConnectionPool.from_url(
            url, decode_responses=True, max_connections=max_connections, timeout=30
        )
        return aioredis.Redis(connection_pool=pool)
    return aioredis.Redis.from_url(
        url, decode_responses=True, socket_connect_timeout=connect_timeout_s
    )
