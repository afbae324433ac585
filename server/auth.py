"""Bearer-key authentication: `Authorization: Bearer <key>` → the tenant that owns the key.

Keys are compared by sha256 digest, so the config (and this process's memory) holds no usable
secret; a plain key in the demo config is hashed on load like any other.
"""

from __future__ import annotations

from server.config import AppConfig, TenantConfig, hash_key
from server.errors import APIError


def bearer_key(authorization: str | None) -> str | None:
    """The key of an `Authorization: Bearer <key>` header; None when it is missing or is not a
    bearer header with a key."""
    scheme, _, key = (authorization or "").strip().partition(" ")
    key = key.strip()
    return key if scheme.lower() == "bearer" and key else None


class KeyRing:
    """Digest → tenant lookup; rebuilt from the config on start and on reload."""

    def __init__(self, config: AppConfig) -> None:
        self._by_digest: dict[str, TenantConfig] = {
            key.digest(): tenant for tenant in config.tenants for key in tenant.api_keys
        }

    def tenant_for_key(self, key: str) -> TenantConfig | None:
        return self._by_digest.get(hash_key(key))

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
        tenant = self.tenant_for_key(key)
        if tenant is None:
            raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")
        return tenant
