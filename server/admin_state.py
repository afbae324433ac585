"""Admin changes that last: applies the admin store's overrides and keys over the config file,
and keeps every replica in step with the store.

Each replica polls the store's version counter every `POLL_S` (one cheap read) and reloads the
whole admin state only when it moved, so a budget change, a new key or a revocation made on any
replica is in force everywhere within `POLL_S` plus one snapshot read (well under 2 s). Expiry
and scheduled revocations (a rotation's grace period) need no poll at all: each stored key
carries its times, checked at every authentication.

Precedence (documented in docs/budgets.md, "Operating t2serve"): the file seeds tenants and
budgets; tenants made through the API are added after the file's (the file wins an id both
hold, with an error logged, and the keys made for the API's tenant are refused meanwhile: they
are another principal's, `shadowed`); an override made through the API wins over the file's
value of that same field (an API tenant's own settings stand for the file's) for as long as the
file still holds the value it had when the override was made (controller.budget.admin_state).
The fields an override can set (`SECTIONS`): a tenant's `budgets.*` (stored under the bare
window name, as before there were other sections), `user_budgets.*`, `rate_limits.rpm|tpm` and
`alerts.thresholds` (the webhook's url and secret stay in the file).

An admin store that cannot be reached when the server starts does not stop it: the replica
starts not ready (/readyz says why), refuses completions with 503 rather than serve without the
stored keys, revocations and budget changes, and keeps retrying in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from controller.budget.admin_state import (
    AdminSnapshot,
    AdminStore,
    Override,
    StoredKey,
    StoredTenant,
)
from server.auth import KeyRing
from server.background import stop, stopping
from server.config import AppConfig, ConfigError, LedgerConfig, TenantConfig, parse_config
from server.errors import APIError
from storage import open_stores

log = logging.getLogger("t2serve.admin_state")

POLL_S = 0.5
RETRY_MAX_S = 5.0  # the longest wait between attempts while the store is unreachable
FLUSH_USES_S = 5.0
BUDGET_FIELDS = ("request", "minute", "hour", "day", "month")
SECTIONS: dict[str, tuple[str, ...]] = {
    "budgets": BUDGET_FIELDS,
    "user_budgets": BUDGET_FIELDS,
    "rate_limits": ("rpm", "tpm"),
    "alerts": ("thresholds",),
}


def override_field(section: str, name: str) -> str:
    """How an override names its field: the bare window for `budgets` (as stored before other
    sections existed), "section.name" for the rest."""
    return name if section == "budgets" else f"{section}.{name}"


def split_field(field: str) -> tuple[str, str]:
    section, _, name = field.rpartition(".")
    return section or "budgets", name


def file_values(tenant: TenantConfig | None, section: str = "budgets") -> dict[str, object]:
    """One section's fields as the file gives them (absent fields are None)."""
    value = getattr(tenant, section, None) if tenant is not None else None
    dumped = value.model_dump() if value is not None else {}
    return {name: dumped.get(name) for name in SECTIONS[section]}


MAX_API_TENANTS = 1000
"""The most tenants the admin API keeps at once: each is a `tenant` metric label value
(server.metrics declares the configured ids, and only those), so their number stays bounded."""


def tenant_data(tenant: StoredTenant) -> dict[str, Any]:
    """A stored tenant as a `tenants:` entry of the config: its settings, its id, no keys."""
    return {**tenant.config, "id": tenant.id, "api_keys": []}


def api_tenants(file_config: AppConfig, tenants: Sequence[StoredTenant]) -> list[StoredTenant]:
    """The live stored tenants in force over this file: those it does not define itself (the
    file wins an id both hold, server.serving.state refuses a reload that makes it so)."""
    in_file = {t.id for t in file_config.tenants}
    return [t for t in tenants if t.live and t.id not in in_file]


def shadowed(file_config: AppConfig, tenants: Sequence[StoredTenant]) -> list[StoredTenant]:
    """The live stored tenants this file also defines (a start on such a file, or a replica
    whose file differs, cannot refuse it): the file's tenant is in force under the id, and the
    keys made for the stored one (`StoredTenant.issued`) authenticate as nobody meanwhile, not
    as the file's tenant, another principal with another budget (server.auth.KeyRing)."""
    in_file = {t.id for t in file_config.tenants}
    return sorted((t for t in tenants if t.live and t.id in in_file), key=lambda t: t.id)


CONFLICT = (
    "also made through the admin API: the config file's tenant is in force, the keys and "
    "settings made for the API's are not, and no key or setting of this id is made or changed "
    "until one goes (DELETE /admin/tenants/{id} removes the API's; or remove it from the file "
    "and reload)"
)
"""What the admin API says of an id both the file and the store define (`shadowed`)."""


def overlay(
    file_config: AppConfig, overrides: list[Override], tenants: Sequence[StoredTenant] = ()
) -> AppConfig:
    """The file config with the admin API's tenants added (after the file's) and the overrides
    that still apply; ConfigError if the result is not a valid config (the caller refuses the
    change)."""
    added = api_tenants(file_config, tenants)
    ids = [t.id for t in added]
    # the settings made for a stored tenant the file shadows are that tenant's, not the file's
    made_for_api = {t.id: t.created_at for t in shadowed(file_config, tenants)}
    overrides = [o for o in overrides if o.updated_at < made_for_api.get(o.tenant, math.inf)]
    if added:  # parsed first, so an override compares with their values as the file's are
        data = file_config.model_dump(mode="python")
        data["tenants"] += [tenant_data(t) for t in added]
        file_config = parse_config(data, "admin store", api_tenants=ids)
    if not overrides:
        return file_config
    data = file_config.model_dump(mode="python")
    tenants_by_id = {t["id"]: t for t in data["tenants"]}
    for o in overrides:
        tenant = tenants_by_id.get(o.tenant)
        section, name = split_field(o.field)
        if tenant is None or name not in SECTIONS.get(section, ()):
            continue  # a tenant the file no longer has
        current = tenant.get(section)
        if section == "alerts":  # only the thresholds; the url and secret are the file's
            if current is not None:
                tenant[section] = {**current, name: o.effective(current.get(name))}
            continue
        values = dict(current or {})
        values[name] = o.effective(values.get(name))
        tenant[section] = values if any(v is not None for v in values.values()) else None
    return parse_config(data, "admin store", api_tenants=ids)


class AdminSync:
    """The replica's copy of the admin store, and the loop that keeps it current.

    `on_change` re-applies the config (ServingState.apply) whenever the snapshot changed.
    """

    def __init__(
        self,
        ledger: LedgerConfig,
        on_change: Callable[[], None],
        *,
        clock: Callable[[], float] = time.time,
        poll_s: float = POLL_S,
        store: AdminStore | None = None,
    ) -> None:
        self.ledger = ledger
        self.on_change = on_change
        self.clock = clock
        self.poll_s = poll_s
        self._store = store
        self.snapshot = AdminSnapshot(-1)  # -1: never loaded
        self.uses: dict[str, float] = {}  # digest → last use on this replica, not yet stored
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.started = False  # the lifespan started it: the replica depends on its state
        self.failure: str | None = None  # why the store could not be read, while it cannot

    @property
    def store(self) -> AdminStore:
        if self._store is None:
            self._store = open_stores(self.ledger).admin()
        return self._store

    @property
    def loaded(self) -> bool:
        return self.snapshot.version >= 0

    @property
    def blocking(self) -> bool:
        """Started but never loaded: serving now would ignore stored revocations and budgets."""
        return self.started and not self.loaded

    def _describe(self, exc: BaseException) -> str:
        where = self.ledger.path
        if self.ledger.backend == "redis":  # never show a password from the URL in /readyz
            url = urlsplit(self.ledger.redis_url or "redis://127.0.0.1:6379/0")
            where = f"{url.scheme}://{url.hostname}:{url.port or 6379}{url.path}"
        reason = str(exc) or type(exc).__name__
        return f"admin store unreachable ({self.ledger.backend} {where}): {reason}"

    def effective(self, file_config: AppConfig) -> AppConfig:
        """The file with the stored tenants and the overrides that still win; the file alone
        if that fails. A stored tenant the file also defines is left out, with an error logged:
        the file wins (a reload that would make it so is refused; at start, or on a replica
        whose file differs, it cannot be)."""
        both = [t.id for t in shadowed(file_config, self.snapshot.tenants)]
        if both:
            log.error(
                "tenant(s) %s made through the admin API are also defined in the config file; "
                "the file's are in force and the keys and settings made for the API's are "
                "not: DELETE /admin/tenants/{id} removes the API's, or remove them from the "
                "file and reload",
                ", ".join(both),
            )
        try:
            return overlay(file_config, self.snapshot.overrides, self.snapshot.tenants)
        except ConfigError as exc:  # e.g. the file dropped a tenant's prices: keep serving
            log.error("admin overrides not applied: %s", exc)
            return file_config

    def keyring(self, config: AppConfig, file_config: AppConfig) -> KeyRing:
        """The keys of `config` (the file's with the store's over it, `effective`): the file's
        and the stored ones, but not those made for a stored tenant the file shadows."""
        return KeyRing(
            config,
            self.snapshot.keys,
            clock=self.clock,
            uses=self.uses,
            shadowed=shadowed(file_config, self.snapshot.tenants),
        )

    async def ensure(self) -> AdminSync:
        """Load the store's state once (admin routes call this; the lifespan too); 503 while
        the store cannot be reached."""
        if not self.loaded:
            try:
                await self.refresh()
            except Exception as exc:
                self.failure = self._describe(exc)
                raise APIError(
                    503,
                    f"Admin state not loaded: {self.failure}; retry shortly.",
                    code="admin_store_unavailable",
                    headers={"Retry-After": "5"},
                ) from exc
            self.failure = None
        return self

    async def refresh(self, force: bool = False) -> bool:
        """Reload if the version moved; whether anything changed."""
        async with self._lock:
            version = await self.store.version()
            if not force and version == self.snapshot.version:
                return False
            self.snapshot = await self.store.snapshot()
        self.on_change()
        return True

    async def put_overrides(self, overrides: list[Override]) -> None:
        await self.store.put_overrides(overrides)
        await self.refresh()

    async def create_key(self, key: StoredKey, revoke: tuple[str, float] | None = None) -> None:
        await self.store.create_key(key, self.clock(), revoke)
        await self.refresh()

    async def create_tenant(self, tenant: StoredTenant) -> None:
        await self.store.create_tenant(tenant, MAX_API_TENANTS)
        await self.refresh()

    async def delete_tenant(self, tenant_id: str) -> None:
        await self.store.delete_tenant(tenant_id, self.clock())
        await self.refresh()

    async def revoke_key(self, tenant: str, prefix: str, at: float) -> StoredKey:
        key = await self.store.revoke_key(tenant, prefix, at)
        await self.refresh()
        return key

    async def set_key_rate_limits(
        self, tenant: str, prefix: str, rate_limits: dict[str, object] | None
    ) -> StoredKey:
        key = await self.store.set_key_rate_limits(tenant, prefix, rate_limits)
        await self.refresh()
        return key

    async def keys(self, tenant: str) -> list[StoredKey]:
        """The tenant's keys read fresh from the store, with this replica's unflushed uses."""
        await self.flush_uses()
        snap = await self.store.snapshot()
        return sorted((k for k in snap.keys if k.tenant == tenant), key=lambda k: k.created_at)

    async def flush_uses(self) -> None:
        if self.uses:
            uses = self.uses.copy()
            self.uses.clear()  # the same dict: the key ring keeps writing into it
            try:
                await self.store.touch_keys(uses)
            except BaseException:
                for digest, at in uses.items():
                    self.uses[digest] = max(at, self.uses.get(digest, at))
                raise

    async def start(self) -> None:
        """Load now (a restarted replica serves stored keys from its first request), then poll.
        An unreachable store does not fail the start: the replica stays not ready, refusing
        completions, and the poll keeps trying (backing off to RETRY_MAX_S) until it loads."""
        self.started = True
        try:
            await self.ensure()
        except APIError:
            log.error("%s; starting not ready, retrying in the background", self.failure)
        self._task = asyncio.create_task(self._poll(), name="t2-admin-sync")

    async def _poll(self) -> None:
        flushed = time.monotonic()
        wait = self.poll_s
        while not stopping():  # a store client may swallow the cancellation (server.background)
            await asyncio.sleep(wait)
            if not self.loaded:
                try:
                    await self.ensure()
                    log.warning("admin store reachable: admin state loaded, replica ready")
                except APIError:
                    wait = min(RETRY_MAX_S, wait * 2)
                    continue
                wait = self.poll_s
            try:
                await self.refresh()
                if time.monotonic() - flushed >= FLUSH_USES_S:
                    flushed = time.monotonic()
                    await self.flush_uses()
            except Exception:  # a store outage: keep the last state, try again
                log.exception("admin state poll failed")

    async def aclose(self) -> None:
        if self._task is not None:
            await stop(self._task)  # cancelled until it ends: a store client may swallow one
            self._task = None
        if self._store is not None:
            with contextlib.suppress(Exception):
                await self.flush_uses()
            await self._store.close()
            self._store = None
