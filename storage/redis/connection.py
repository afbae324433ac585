"""The one place the Redis stores make their clients: text replies (every script returns
strings), per store how it meets load and an unreachable server, and the one translation of
"Redis cannot be reached" into the stores' StoreUnavailable."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from controller.stores import StoreUnavailable

UNREACHABLE = (aioredis.ConnectionError, aioredis.TimeoutError)
"""Gone, refusing, or silent past redis-py's socket timeout (5 s by default)."""


class _Pipeline(Pipeline):
    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        try:
            return await super().execute(raise_on_error)
        except UNREACHABLE as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc


class Client(aioredis.Redis):
    """A client whose commands, scripts and pipelines raise StoreUnavailable when Redis
    cannot be reached, so callers above storage/ need not know Redis's errors."""

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        try:
            return await super().execute_command(*args, **options)
        except UNREACHABLE as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> _Pipeline:
        return _Pipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)


def connect(
    url: str, *, max_connections: int | None = None, connect_timeout_s: float | None = None
) -> Client:
    """A client for `url`. `max_connections`: a blocking pool of that size, which waits for a
    free connection under load instead of raising (the ledger's hot path; the caller closes
    the pool too). `connect_timeout_s`: a bounded connect, so an unreachable store cannot hold
    up a replica's start for the OS's TCP timeout (minutes)."""
    if max_connections is not None:
        pool = aioredis.BlockingConnectionPool.from_url(
            url, decode_responses=True, max_connections=max_connections, timeout=30
        )
        return Client(connection_pool=pool)
    client = Client.from_url(url, decode_responses=True, socket_connect_timeout=connect_timeout_s)
    assert isinstance(client, Client)  # from_url builds `cls`; its annotation says Redis
    return client
