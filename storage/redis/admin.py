"""`AdminStore` in the ledger's Redis: a few hashes under one hash tag, one Lua script per change.

Keys (prefix `{t2admin}`, one slot, so the scripts also run on a cluster):
- `:version` the change counter replicas poll (a GET);
- `:overrides` hash "tenant|field" → {"value", "file_value", "updated_at"} (JSON);
- `:keys` hash sha256 → the key's immutable record (JSON); `:prefix` hash prefix → sha256;
- `:revoked` hash sha256 → revocation time; `:used` hash sha256 → last use;
- `:limits` hash sha256 → the key's rpm/tpm as changed after creation (JSON; null: none);
- `:tenants` hash id → an API-made tenant's record (JSON); `:deleted` hash id → when it was
  deleted (its tombstone: the record stays);
- `:alert:<event>` a sent alert's claim (SET NX, expires with its window).
"""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis

from controller.budget.admin_state import (
    AdminSnapshot,
    DuplicateLabel,
    KeyNotFound,
    KeyNotLive,
    Override,
    StoredKey,
    StoredTenant,
    TenantExists,
    TenantNotFound,
    TooManyTenants,
    canonical,
)
from storage.redis.connection import connect

_B = "{t2admin}"
VERSION, OVERRIDES, KEYS, PREFIX, REVOKED, USED, LIMITS, TENANTS, DELETED = (
    f"{_B}:version",
    f"{_B}:overrides",
    f"{_B}:keys",
    f"{_B}:prefix",
    f"{_B}:revoked",
    f"{_B}:used",
    f"{_B}:limits",
    f"{_B}:tenants",
    f"{_B}:deleted",
)

# The digest of `prefix` if it is a key of `tenant`; and revoking it from `at` (earlier
# revocations stand).
_REVOKE = r"""
local function find(tenant, prefix)
  local sha = redis.call('HGET', KEYS[3], prefix)
  if not sha then return nil end
  local rec = cjson.decode(redis.call('HGET', KEYS[2], sha))
  if rec.tenant ~= tenant then return nil end
  return sha
end
local function revoke(sha, at)
  local prior = tonumber(redis.call('HGET', KEYS[4], sha) or '')
  if prior == nil or prior > tonumber(at) then redis.call('HSET', KEYS[4], sha, at) end
end
"""

# KEYS: version, keys, prefix, revoked.  ARGV: tenant, prefix, at.  The digest, or 'nf'.
REVOKE = (
    _REVOKE
    + r"""
local sha = find(ARGV[1], ARGV[2])
if not sha then return 'nf' end
revoke(sha, ARGV[3])
redis.call('INCR', KEYS[1])
return sha
"""
)

# KEYS: version, keys, prefix, revoked.
# ARGV: sha, record, tenant, label, prefix, now, revoke_prefix ('' = none), revoke_at.
# Checks everything before writing anything: a script's writes are not rolled back. A rotation
# replaces only a live key: 'revoked' or 'expired' at `now` (whichever ended it first), as
# StoredKey.status says.
CREATE = (
    _REVOKE
    + r"""
local now = tonumber(ARGV[6])
local old = nil
if ARGV[7] ~= '' then
  old = find(ARGV[3], ARGV[7])
  if not old then return 'nf' end
  local revoked_at = tonumber(redis.call('HGET', KEYS[4], old) or '')
  local expires_at = cjson.decode(redis.call('HGET', KEYS[2], old)).expires_at
  if expires_at == cjson.null or now < expires_at then expires_at = nil end
  if revoked_at ~= nil and now < revoked_at then revoked_at = nil end
  if expires_at ~= nil and (revoked_at == nil or expires_at < revoked_at) then
    return 'expired'
  end
  if revoked_at ~= nil then return 'revoked' end
end
local all = redis.call('HGETALL', KEYS[2])
for i = 1, #all, 2 do
  local rec = cjson.decode(all[i + 1])
  if all[i] ~= old and rec.tenant == ARGV[3] and rec.label == ARGV[4]
     and not redis.call('HGET', KEYS[4], all[i])
     and (rec.expires_at == cjson.null or rec.expires_at > now) then
    return 'dup'
  end
end
if redis.call('HEXISTS', KEYS[3], ARGV[5]) == 1 then return 'prefix' end
if old then revoke(old, ARGV[8]) end
redis.call('HSET', KEYS[3], ARGV[5], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return tostring(redis.call('INCR', KEYS[1]))
"""
)

# KEYS: version, keys, prefix, revoked, limits.  ARGV: tenant, prefix, limits JSON.
SET_LIMITS = (
    _REVOKE
    + r"""
local sha = find(ARGV[1], ARGV[2])
if not sha then return 'nf' end
redis.call('HSET', KEYS[5], sha, ARGV[3])
redis.call('INCR', KEYS[1])
return sha
"""
)

# KEYS: version, overrides.  ARGV: member, value, member, value, ...
PUT_OVERRIDES = r"""
for i = 1, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
return redis.call('INCR', KEYS[1])
"""

# Dropping an id's overrides and revoking its keys from `at`, as a tenant is created or deleted.
_CLEAR = (
    _REVOKE
    + r"""
local function clear(tenant, at)
  local prefix = tenant .. '|'
  for _, member in ipairs(redis.call('HKEYS', KEYS[5])) do
    if string.sub(member, 1, #prefix) == prefix then redis.call('HDEL', KEYS[5], member) end
  end
  local all = redis.call('HGETALL', KEYS[2])
  for i = 1, #all, 2 do
    if cjson.decode(all[i + 1]).tenant == tenant then revoke(all[i], at) end
  end
end
"""
)

# KEYS: version, keys, prefix, revoked, overrides, tenants, deleted.
# ARGV: id, record, limit, created_at.  The new version, or 'exists' / 'limit'.
CREATE_TENANT = (
    _CLEAR
    + r"""
local live = 0
local all = redis.call('HKEYS', KEYS[6])
for _, id in ipairs(all) do
  if redis.call('HEXISTS', KEYS[7], id) == 0 then
    if id == ARGV[1] then return 'exists' end
    live = live + 1
  end
end
if live >= tonumber(ARGV[3]) then return 'limit' end
clear(ARGV[1], ARGV[4])
redis.call('HDEL', KEYS[7], ARGV[1])
redis.call('HSET', KEYS[6], ARGV[1], ARGV[2])
return tostring(redis.call('INCR', KEYS[1]))
"""
)

# KEYS: as CREATE_TENANT.  ARGV: id, at.  The new version, or 'nf'.
DELETE_TENANT = (
    _CLEAR
    + r"""
if redis.call('HEXISTS', KEYS[6], ARGV[1]) == 0 or redis.call('HEXISTS', KEYS[7], ARGV[1]) == 1
then return 'nf' end
clear(ARGV[1], ARGV[2])
redis.call('HSET', KEYS[7], ARGV[1], ARGV[2])
return tostring(redis.call('INCR', KEYS[1]))
"""
)

# KEYS: used.  ARGV: sha, t, sha, t, ...
TOUCH = r"""
for i = 1, #ARGV, 2 do
  local prior = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  if tonumber(ARGV[i + 1]) > prior then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
return 0
"""

# KEYS: version, overrides, keys, revoked, used, limits, tenants, deleted.  One consistent read
# of everything.
SNAPSHOT = r"""
return {redis.call('GET', KEYS[1]) or '0', redis.call('HGETALL', KEYS[2]),
        redis.call('HGETALL', KEYS[3]), redis.call('HGETALL', KEYS[4]),
        redis.call('HGETALL', KEYS[5]), redis.call('HGETALL', KEYS[6]),
        redis.call('HGETALL', KEYS[7]), redis.call('HGETALL', KEYS[8])}
"""
_TENANT_KEYS = [VERSION, KEYS, PREFIX, REVOKED, OVERRIDES, TENANTS, DELETED]


class RedisAdminStore:
    def __init__(self, url: str = "redis://127.0.0.1:6379/0") -> None:
        # a bounded connect: the server retries an unreachable store in the background
        self.client: aioredis.Redis = connect(url, connect_timeout_s=5)
        self._revoke = self.client.register_script(REVOKE)
        self._create = self.client.register_script(CREATE)
        self._put = self.client.register_script(PUT_OVERRIDES)
        self._touch = self.client.register_script(TOUCH)
        self._snapshot = self.client.register_script(SNAPSHOT)
        self._set_limits = self.client.register_script(SET_LIMITS)
        self._create_tenant = self.client.register_script(CREATE_TENANT)
        self._delete_tenant = self.client.register_script(DELETE_TENANT)

    async def version(self) -> int:
        return int(await self.client.get(VERSION) or 0)

    async def snapshot(self) -> AdminSnapshot:
        out: list[Any] = await self._snapshot(
            keys=[VERSION, OVERRIDES, KEYS, REVOKED, USED, LIMITS, TENANTS, DELETED]
        )
        version, overrides, keys, revoked, used, limits, tenants, deleted = out
        snap = AdminSnapshot(int(version))
        for member, text in _pairs(overrides):
            tenant, _, name = member.partition("|")
            o = json.loads(text)
            snap.overrides.append(
                Override(tenant, name, o["value"], o["file_value"], o["updated_at"])
            )
        revoked_at = {sha: float(t) for sha, t in _pairs(revoked)}
        used_at = {sha: float(t) for sha, t in _pairs(used)}
        rate_limits = {sha: json.loads(t) for sha, t in _pairs(limits)}
        for sha, text in _pairs(keys):
            rec = json.loads(text)
            rec.update(revoked_at=revoked_at.get(sha), last_used_at=used_at.get(sha))
            if sha in rate_limits:
                rec["rate_limits"] = rate_limits[sha]
            snap.keys.append(StoredKey(**rec))
        deleted_at = {tenant_id: float(t) for tenant_id, t in _pairs(deleted)}
        for tenant_id, text in _pairs(tenants):
            rec = json.loads(text)
            snap.tenants.append(StoredTenant(**rec, deleted_at=deleted_at.get(tenant_id)))
        return snap

    async def put_overrides(self, overrides: list[Override]) -> int:
        args: list[str] = []
        for o in overrides:
            record = {"value": o.value, "file_value": o.file_value, "updated_at": o.updated_at}
            args += [f"{o.tenant}|{o.field}", canonical(record)]
        return int(await self._put(keys=[VERSION, OVERRIDES], args=args))

    async def create_key(
        self, key: StoredKey, now: float, revoke: tuple[str, float] | None = None
    ) -> int:
        record = {k: v for k, v in key.__dict__.items() if k not in ("revoked_at", "last_used_at")}
        args = [key.sha256, canonical(record), key.tenant, key.label, key.prefix, repr(now)]
        args += [revoke[0], repr(revoke[1])] if revoke else ["", "0"]
        out = str(await self._create(keys=[VERSION, KEYS, PREFIX, REVOKED], args=args))
        if out == "dup":
            raise DuplicateLabel(key.label)
        if out == "nf":
            raise KeyNotFound(revoke[0] if revoke else key.prefix)
        if out in ("revoked", "expired") and revoke is not None:
            raise KeyNotLive(revoke[0], out)
        if out == "prefix":
            raise ValueError(f"key prefix {key.prefix} exists")
        return int(out)

    async def revoke_key(self, tenant: str, prefix: str, at: float) -> StoredKey:
        out = str(
            await self._revoke(
                keys=[VERSION, KEYS, PREFIX, REVOKED], args=[tenant, prefix, repr(at)]
            )
        )
        if out == "nf":
            raise KeyNotFound(prefix)
        snap = await self.snapshot()
        return next(k for k in snap.keys if k.sha256 == out)

    async def set_key_rate_limits(
        self, tenant: str, prefix: str, rate_limits: dict[str, Any] | None
    ) -> StoredKey:
        out = str(
            await self._set_limits(
                keys=[VERSION, KEYS, PREFIX, REVOKED, LIMITS],
                args=[tenant, prefix, canonical(rate_limits)],
            )
        )
        if out == "nf":
            raise KeyNotFound(prefix)
        snap = await self.snapshot()
        return next(k for k in snap.keys if k.sha256 == out)

    async def create_tenant(self, tenant: StoredTenant, limit: int) -> int:
        record = {"id": tenant.id, "config": tenant.config, "created_at": tenant.created_at}
        args = [tenant.id, canonical(record), str(limit), repr(tenant.created_at)]
        out = str(await self._create_tenant(keys=_TENANT_KEYS, args=args))
        if out == "exists":
            raise TenantExists(tenant.id)
        if out == "limit":
            raise TooManyTenants(limit)
        return int(out)

    async def delete_tenant(self, tenant_id: str, at: float) -> int:
        out = str(await self._delete_tenant(keys=_TENANT_KEYS, args=[tenant_id, repr(at)]))
        if out == "nf":
            raise TenantNotFound(tenant_id)
        return int(out)

    async def touch_keys(self, last_used: dict[str, float]) -> None:
        if last_used:
            args = [x for sha, t in last_used.items() for x in (sha, repr(t))]
            await self._touch(keys=[USED], args=args)

    async def claim_alert(self, event_id: str, now: float, ttl_s: float) -> bool:
        key = f"{_B}:alert:{event_id}"
        return bool(await self.client.set(key, repr(now), nx=True, ex=max(1, int(ttl_s))))

    async def close(self) -> None:
        await self.client.aclose()


def _pairs(flat: list[str]) -> list[tuple[str, str]]:
    return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]
