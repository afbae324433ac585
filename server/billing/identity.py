"""Who is paying for the current request, beyond the tenant: the API key and the end user.

Authentication (server.auth) binds the key and the route binds the request's `user` field;
billing reads both when it opens a request's handle, so spend logs (and per-key budgets) know
them without threading them through every layer in between. A `ContextVar` because each HTTP
request runs in its own task, and the tasks a request starts inherit it.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Caller:
    key_prefix: str | None = None  # keys made through the admin API; None for file keys
    key_budgets: dict[str, Any] | None = None  # the key's own budgets, as stored
    user: str | None = None
    key_rate_limits: dict[str, Any] | None = None  # the key's own rpm/tpm (file or store)
    key_id: str | None = None  # names the key's level: its prefix, or "file:<digest[:12]>"
    request_id: str | None = None  # the HTTP request: rpm counts it once, whatever its jobs

    @property
    def key_scope(self) -> str | None:
        """The key's level in the ledger ("key:<id>"), shared by its budgets and rate limits."""
        key = self.key_prefix or self.key_id
        return f"key:{key}" if key else None


CALLER: ContextVar[Caller] = ContextVar("t2_caller", default=Caller())  # noqa: B039 (frozen)


def bind_key(
    key_prefix: str | None,
    key_budgets: dict[str, Any] | None = None,
    key_rate_limits: dict[str, Any] | None = None,
    key_id: str | None = None,
) -> None:
    CALLER.set(Caller(key_prefix, key_budgets, None, key_rate_limits, key_id))


def bind_request(request_id: str) -> None:
    CALLER.set(replace(CALLER.get(), request_id=request_id))


def bind_user(user: str | None) -> None:
    CALLER.set(replace(CALLER.get(), user=user))


def current_caller() -> Caller:
    return CALLER.get()
