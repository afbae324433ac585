"""Lasting admin state: tenants, budget overrides and API keys made through the admin API.

It lives next to the spend it governs (the ledger's SQLite file, or its Redis), so every replica
sharing a ledger shares it too. Each method of an `AdminStore` is one atomic step (one SQLite
transaction, one Redis Lua script) and every change bumps one version counter: replicas poll
that counter (one cheap read) and reload the whole state only when it moved.

Precedence: an override stores the API's value *and the file's value of that field when the
override was made*. While the file still says the same, the override wins; once the operator
edits that field in the file, the file wins again (`effective_value`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol


class DuplicateLabel(ValueError):
    """The tenant already has a live key with this label."""


class KeyNotFound(LookupError):
    """No key with this prefix for this tenant."""


class TenantExists(ValueError):
    """The store already holds a live tenant with this id."""


class TenantNotFound(LookupError):
    """The store holds no live tenant with this id."""


class TooManyTenants(ValueError):
    """The store holds `limit` live tenants already (metric labels stay bounded)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the admin store holds {limit} tenants, its limit")
        self.limit = limit


class KeyNotLive(ValueError):
    """The key exists but is revoked or expired (`status`), so it cannot be rotated: a rotation
    would hand out a live key in place of a dead one."""

    def __init__(self, prefix: str, status: str) -> None:
        super().__init__(f"key {prefix} is {status}")
        self.prefix = prefix
        self.status = status


def canonical(value: Any) -> str:
    """One JSON text per value, so a file value read back compares equal to the stored one."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True)
class Override:
    """`value` replaces the tenant's `field` while the file's value is still `file_value`
    (both JSON-able; None: the field is absent)."""

    tenant: str
    field: str
    value: Any
    file_value: Any
    updated_at: float

    def effective(self, file_value_now: Any) -> Any:
        """The override while the file is unchanged in this field; the file once it changed."""
        if canonical(file_value_now) == canonical(self.file_value):
            return self.value
        return file_value_now


@dataclass(frozen=True)
class StoredKey:
    """An API key as stored: its digest and metadata, never the key itself."""

    sha256: str
    tenant: str
    prefix: str
    label: str
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None  # in force from then on (a future time: rotation's grace)
    budgets: dict[str, Any] | None = None
    last_used_at: float | None = None
    rate_limits: dict[str, Any] | None = None  # {"rpm": …, "tpm": …}, on top of the tenant's

    def status(self, now: float) -> str:
        """The key's state at `now`: active, or what ended it first, "expired" or "revoked" (a
        key that had expired when a revocation reached it, as deleting its tenant or reusing
        its id revokes every key of the id, ended by expiry)."""
        ended = [
            (at, status)
            for at, status in ((self.revoked_at, "revoked"), (self.expires_at, "expired"))
            if at is not None and now >= at
        ]
        # the earlier end; at the same instant, the revocation (the operator's act) names it
        return min(ended, key=lambda e: e[0])[1] if ended else "active"

    def live(self, now: float) -> bool:
        return self.status(now) == "active"

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> StoredKey:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class StoredTenant:
    """A tenant made through the admin API: `config` is its settings as the request gave them
    (a TenantConfig's fields, JSON-able, without keys: those are StoredKeys). A deleted tenant
    stays as a tombstone (`deleted_at`), so its spend logs can still be read by its id."""

    id: str
    config: dict[str, Any]
    created_at: float
    deleted_at: float | None = None

    @property
    def live(self) -> bool:
        return self.deleted_at is None

    def issued(self, key: StoredKey) -> bool:
        """Whether `key` was made for this tenant: under its id, since it was made (a key of the
        id from before is an earlier holder's: a deleted tenant's, or the config file's)."""
        return key.tenant == self.id and key.created_at >= self.created_at

    def to_json(self) -> str:
        return canonical(self.__dict__)

    @classmethod
    def from_json(cls, text: str) -> StoredTenant:
        return cls(**json.loads(text))


@dataclass
class AdminSnapshot:
    version: int
    overrides: list[Override] = field(default_factory=list)
    keys: list[StoredKey] = field(default_factory=list)
    tenants: list[StoredTenant] = field(default_factory=list)  # tombstones included

    def live_tenants(self) -> list[StoredTenant]:
        return sorted((t for t in self.tenants if t.live), key=lambda t: (t.created_at, t.id))


class AdminStore(Protocol):
    async def version(self) -> int:
        """The change counter (0 before any change)."""
        ...

    async def snapshot(self) -> AdminSnapshot: ...

    async def put_overrides(self, overrides: list[Override]) -> int:
        """Store these overrides (replacing the same tenant and field); the new version."""
        ...

    async def create_key(
        self, key: StoredKey, now: float, revoke: tuple[str, float] | None = None
    ) -> int:
        """Add `key`; with `revoke` = (prefix, at), also schedule that key of the same tenant's
        revocation at `at` (rotation), in the same step. Raises DuplicateLabel when the tenant
        has a key with this label that is neither expired nor scheduled for revocation,
        KeyNotFound when `revoke` names no key, and KeyNotLive when the key it names is no
        longer live at `now` (revoked or expired): checked in the same step that would issue
        the new key, so a revocation racing the rotation cannot slip between the two."""
        ...

    async def revoke_key(self, tenant: str, prefix: str, at: float) -> StoredKey:
        """Revoke the key from `at` on (earlier revocations stand); KeyNotFound if absent."""
        ...

    async def set_key_rate_limits(
        self, tenant: str, prefix: str, rate_limits: dict[str, Any] | None
    ) -> StoredKey:
        """Replace a key's own rpm/tpm (None: none); KeyNotFound if absent."""
        ...

    async def create_tenant(self, tenant: StoredTenant, limit: int) -> int:
        """Add a tenant, in one step that also drops any overrides stored under its id and
        revokes, from `tenant.created_at`, any key still live under it (a tenant of that id
        deleted earlier, or once in the file): a new tenant starts with neither. Raises
        TenantExists when a live tenant has the id, TooManyTenants when `limit` are live
        (a tombstone of the id is replaced). The new version."""
        ...

    async def delete_tenant(self, tenant_id: str, at: float) -> int:
        """Mark the tenant deleted at `at`, drop its overrides and revoke its keys from `at`
        (earlier revocations stand), in one step; spend and key records stay. TenantNotFound
        if no live tenant has the id. The new version."""
        ...

    async def touch_keys(self, last_used: dict[str, float]) -> None:
        """Record last use per digest (no version bump: nothing to re-apply)."""
        ...

    async def claim_alert(self, event_id: str, now: float, ttl_s: float) -> bool:
        """True for the first caller (any replica) to claim this alert event: it sends it."""
        ...

    async def close(self) -> None: ...


def label_taken(keys: list[StoredKey], tenant: str, label: str, now: float) -> bool:
    """Whether a key of `tenant` still claims `label`: not expired, not (being) revoked."""
    return any(
        k.tenant == tenant
        and k.label == label
        and k.revoked_at is None
        and (k.expires_at is None or k.expires_at > now)
        for k in keys
    )
