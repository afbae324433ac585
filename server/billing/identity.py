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


CALLER: ContextVar[Caller] = ContextVar("t2_caller", default=Caller())  # noqa: B039 (frozen)


def bind_key(key_prefix: str | None, key_budgets: dict[str, Any] | None = None) -> None:
    CALLER.set(Caller(key_prefix, key_budgets))


def bind_user(user: str | None) -> None:
    CALLER.set(replace(CALLER.get(), user=user))


def current_caller() -> Caller:
    return CALLER.get()
