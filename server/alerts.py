"""Budget alert webhooks: when a tenant's settled spend crosses a threshold (80%, 100%, … of a
window's limit), POST one signed JSON event to the tenant's `alerts.url`.

- Once per window and threshold, across replicas: the event id names the tenant, window,
  window period and threshold, and the first replica to claim it in the admin store sends it.
- Signed: `X-T2-Signature: sha256=<hex HMAC-SHA256 of the body with alerts.secret>`.
- Never in a request's way: `check` only looks at figures billing already has and schedules a
  task; delivery retries with exponential backoff (`retries`, `backoff_s`) and only logs when
  it gives up. Prometheus alert rules are separate and unchanged.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import math
import time
from collections.abc import Callable, Coroutine
from typing import Any

import httpx

from controller.budget.ledger import WindowUsage
from controller.budget.windows import LENGTH_S
from server.admin_state import AdminSync
from server.background import stop
from server.config import AlertSettings, TenantConfig

log = logging.getLogger("t2serve.alerts")

SIGNATURE_HEADER = "X-T2-Signature"


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def period_start(u: WindowUsage, now: float) -> float:
    """The window period an alert belongs to: a calendar window's start; for a rolling window,
    the start of the current window length (so it alerts at most once per length)."""
    if not u.limit.span.rolling:
        return u.limit.span.start
    length = LENGTH_S[u.limit.span.name]
    return math.floor(now / length) * length


class AlertDispatcher:
    """Watches the tenant windows billing reports and delivers the crossings."""

    def __init__(
        self,
        admin: AdminSync,
        *,
        clock: Callable[[], float] = time.time,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.admin = admin
        self.clock = clock
        self._client = client
        self._seen: set[str] = set()  # events this replica claimed or saw claimed
        self._tasks: set[asyncio.Task[None]] = set()
        self.delivered: list[str] = []  # event ids, for operators' logs and tests

    def check(self, tenant: TenantConfig, usage: list[WindowUsage]) -> None:
        """Schedule an event for each threshold a limited window's settled spend has reached."""
        settings = tenant.alerts
        if settings is None:
            return
        now = self.clock()
        for u in usage:
            if not u.limit.limited or u.limit.scope:
                continue
            fraction = u.spent_value / u.limit.limit
            for threshold in settings.thresholds:
                if fraction + 1e-12 < threshold:
                    break
                start = period_start(u, now)
                event_id = f"{tenant.id}:{u.limit.key}:{start:.0f}:{threshold:g}"
                if event_id in self._seen:
                    continue
                self._seen.add(event_id)
                event = {
                    "type": "budget.threshold",
                    "id": event_id,
                    "tenant": tenant.id,
                    "window": u.limit.span.name,
                    "rolling": u.limit.span.rolling,
                    "unit": u.limit.unit,
                    "hard": u.limit.hard,
                    "threshold": threshold,
                    "limit": u.limit.limit,
                    "spent": u.spent_value,
                    "fraction": fraction,
                    "window_start": start,
                    "time": now,
                }
                ttl = 2 * max(LENGTH_S[u.limit.span.name], u.limit.span.end - u.limit.span.start)
                self._spawn(self._send(settings, event, ttl))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        try:
            task = asyncio.get_running_loop().create_task(coro)
        except RuntimeError:  # no loop (a sync caller): nothing to deliver with
            coro.close()
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient()
        return self._client

    async def _send(self, settings: AlertSettings, event: dict[str, object], ttl: float) -> None:
        event_id = str(event["id"])
        try:
            if not await self.admin.store.claim_alert(event_id, self.clock(), ttl):
                return  # another replica sends it
        except Exception:
            log.exception("claiming alert %s failed; not sent", event_id)
            return
        body = json.dumps(event, sort_keys=True).encode()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(settings.secret, body),
            "X-T2-Event-Id": event_id,
        }
        delay = settings.backoff_s
        for attempt in range(settings.retries + 1):
            try:
                r = await self.client.post(
                    settings.url, content=body, headers=headers, timeout=settings.timeout_s
                )
                if r.is_success:
                    self.delivered.append(event_id)
                    return
                problem = f"HTTP {r.status_code}"
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if attempt < settings.retries:
                await asyncio.sleep(delay)
                delay *= 2
        log.error("alert %s not delivered after %d attempts: %s", event_id, attempt + 1, problem)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            await stop(task)  # cancelled until it ends: the store's claim may swallow one
        if self._client is not None:
            await self._client.aclose()
            self._client = None
