"""The one place the Redis stores make their clients: text replies (every script returns
strings), per store how it meets load and an unreachable server, the one translation of
"Redis cannot be used now" into the stores' StoreUnavailable, and a cancellation redis-py
swallowed raised again."""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import InvalidResponse, ResponseError

from controller.stores import StoreUnavailable

UNREACHABLE = (aioredis.ConnectionError, aioredis.TimeoutError)
"""Gone, refusing connections, or silent past redis-py's socket timeout (5 s by default).
Includes a wrong password (AuthenticationError) and a Redis still loading its data."""

REFUSING = frozenset(
    ("OOM", "READONLY", "MISCONF", "BUSY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "NOREPLICAS")
)
"""Error codes of a Redis that is up but will not serve now: maxmemory reached under
`noeviction`, a replica (a demoted primary after failover), failed RDB saves, a script running
too long, no reachable primary or cluster slot, too few replicas for `min-replicas-to-write`.
Each also arrives from inside a Lua script that met it (Redis keeps the code)."""

NO_SUCH_DB = "DB index is out of range"
"""The reply to the SELECT of a URL's database index the server does not have."""


def unusable(exc: BaseException) -> bool:
    """Whether `exc` says Redis cannot be used now (unreachable, refusing, not Redis at all,
    not the database the URL names), not that a command or script is wrong."""
    if isinstance(exc, (*UNREACHABLE, InvalidResponse)):  # InvalidResponse: a port not Redis
        return True
    if isinstance(exc, ResponseError):
        return exc.status_code in REFUSING or str(exc).startswith(NO_SUCH_DB)
    return False


def _unavailable(exc: BaseException) -> StoreUnavailable:
    if isinstance(exc, ResponseError):  # up, but saying no: keep the reply's code
        return StoreUnavailable(f"Redis refused: {exc.status_code or ''} {exc}")
    return StoreUnavailable(f"Redis did not answer: {exc}")


def _cancels() -> int:
    task = asyncio.current_task()
    return task.cancelling() if task is not None else 0


def _not_swallowed(before: int) -> None:
    """Re-raise a cancellation that arrived during a command and that redis-py swallowed: 8.2
    was seen returning the reply to a task cancelled meanwhile (15% of app stops against Redis
    under load), so a loop cancelled at shutdown ran on and the shutdown waited for ever."""
    if _cancels() > before:
        raise asyncio.CancelledError


class _Pipeline(Pipeline):
    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        before = _cancels()
        try:
            replies = await super().execute(raise_on_error)
        except Exception as exc:
            if not unusable(exc):
                raise
            raise _unavailable(exc) from exc
        _not_swallowed(before)
        return replies


class Client(aioredis.Redis):
    """A client whose commands, scripts and pipelines raise StoreUnavailable when Redis
    cannot be used now (`unusable`), so callers above storage/ need not know Redis's errors."""

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        before = _cancels()
        try:
            reply = await super().execute_command(*args, **options)
        except Exception as exc:
            if not unusable(exc):
                raise
            raise _unavailable(exc) from exc
        _not_swallowed(before)
        return reply

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
