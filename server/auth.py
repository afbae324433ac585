"""Bearer-key authentication: `Authorization: Bearer <key>` → the tenant that owns the key.

Keys are compared by sha256 digest, so the config (and this process's memory) holds no usable
secret; a plain key in the demo config is hashed on load like any other. Keys made through the
admin API (controller.budget.admin_state.StoredKey) carry their expiry and revocation times, so
the ring checks them against its clock at every lookup: no store call per request.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from controller.budget.admin_state import StoredKey, StoredTenant
from server.billing.identity import bind_key
from server.config import ApiKey, AppConfig, TenantConfig, hash_key
from server.errors import APIError


def bearer_key(authorization: str | None) -> str | None:
    """The key of an `Authorization: Bearer <key>` header; None when it is missing or is not a
    bearer header with a key."""
    scheme, _, key = (authorization or "").strip().partition(" ")
    key = _utf8(key.strip())
    return key if scheme.lower() == "bearer" and key else None


def _utf8(header_text: str) -> str:
    """A header value as the client's UTF-8: ASGI servers decode header bytes as Latin-1, so a
    non-ASCII key (hashed as UTF-8 in the config) would otherwise never match."""
    if header_text.isascii():
        return header_text
    try:
        return header_text.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return header_text


SHADOWED = "shadowed"
"""Why a stored key is refused while the config file defines its tenant's id too."""


class KeyRing:
    """Digest → tenant lookup; rebuilt from the config (and the stored keys) on every change.

    `uses` collects the last use of each stored key (server.admin_state flushes it to the store).
    """

    def __init__(
        self,
        config: AppConfig,
        stored: Iterable[StoredKey] = (),
        *,
        clock: Callable[[], float] = time.time,
        uses: dict[str, float] | None = None,
        shadowed: Iterable[StoredTenant] = (),
    ) -> None:
        """`shadowed`: stored tenants whose id the config file also defines (the file's tenant
        is in force): the keys made for them are refused, not taken as the file tenant's."""
        self._by_digest: dict[str, tuple[TenantConfig, ApiKey]] = {
            key.digest(): (tenant, key) for tenant in config.tenants for key in tenant.api_keys
        }
        tenants = {t.id: t for t in config.tenants}
        hidden = {t.id: t for t in shadowed}
        self._shadowed = {
            k.sha256 for k in stored if k.tenant in hidden and hidden[k.tenant].issued(k)
        }
        self._stored = {
            k.sha256: (k, tenants[k.tenant])
            for k in stored
            if k.tenant in tenants and k.sha256 not in self._shadowed
        }
        self._clock = clock
        self._uses = uses if uses is not None else {}

    def lookup(self, key: str) -> tuple[TenantConfig, StoredKey | None] | str | None:
        """(tenant, the stored key or None for a config key); or why a stored key does not work
        ("revoked", "expired", SHADOWED); or None for an unknown key."""
        digest = hash_key(key)
        file_key = self._by_digest.get(digest)
        if file_key is not None:
            return file_key[0], None
        if digest in self._shadowed:
            return SHADOWED
        entry = self._stored.get(digest)
        if entry is None:
            return None
        stored, tenant = entry
        now = self._clock()
        status = stored.status(now)
        if status != "active":
            return status
        self._uses[digest] = now
        return tenant, stored

    def tenant_for_key(self, key: str) -> TenantConfig | None:
        found = self.lookup(key)
        return found[0] if isinstance(found, tuple) else None

    def authenticate(self, authorization: str | None) -> TenantConfig:
        """The tenant for an Authorization header, or a 401 saying what is wrong with it."""
        if not authorization:
            raise APIError(
                401,
                "Missing API key: send 'Authorization: Bearer <key>'.",
                code="missing_api_key",
            )
        key = bearer_key(authorization)
        if key is None:
            raise APIError(
                401,
                "Malformed Authorization header: expected 'Bearer <key>'.",
                code="invalid_api_key",
            )
        found = self.lookup(key)
        if found == SHADOWED:
            raise APIError(
                401,
                "This API key was made for a tenant of the admin API whose id the config file "
                "now defines too: the file's tenant is in force under that id, so this key is "
                "refused until an operator resolves the clash.",
                code="invalid_api_key",
            )
        if isinstance(found, str):
            raise APIError(401, f"This API key has been {found}.", code="invalid_api_key")
        if found is None:
            raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")
        tenant, stored = found
        if stored is not None:
            bind_key(stored.prefix, stored.budgets, stored.rate_limits)
            return tenant
        digest = hash_key(key)
        file_key = self._by_digest[digest][1]
        rates = file_key.rate_limits
        if rates is None or not rates.any():
            bind_key(None)
        else:  # a file key's level is named by its digest: the config holds no other id
            bind_key(None, None, rates.model_dump(exclude_none=True), f"file:{digest[:12]}")
        return tenant
