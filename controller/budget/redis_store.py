"""The multi-replica ledger backend: Redis, where each reserve and each settle is ONE Lua script.

Redis runs a script without interleaving any other command, so "purge expired holds, sum the
windows, fit the samples, hold them" is atomic across every replica talking to the same Redis.
All of a tenant's keys share the hash tag `{t2:<tenant>}`, so the scripts also run on a cluster.

Keys per tenant (prefix `{t2:<tenant>}`):
- `:res` hash "<request>|<wave>" → "money|flops|granted": live holds;
- `:exp` sorted set of the same members scored by expiry; `:tot` hash m/f: their running sum;
- `:w:<window>` hash "m<bucket>"/"f<bucket>" → spend (expires after two window lengths);
- `:s:<request>|<wave>` string "money|flops": the settle idempotency record (kept `settled_ttl_s`).

Durability of settled spend is Redis's own: run it with `appendonly yes` in production.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from controller.budget.ledger import Hold, Limit, ReserveOutcome, SettleOutcome, WindowUsage
from controller.budget.pricing import Cost
from controller.budget.windows import LENGTH_S

# Shared Lua: purge expired holds; sum a window hash from a cutoff (dropping older buckets).
_COMMON = r"""
local function purge(res, exp, tot, now)
  local gone = redis.call('ZRANGEBYSCORE', exp, '-inf', now)
  for _, f in ipairs(gone) do
    local v = redis.call('HGET', res, f)
    if v then
      local m, fl = string.match(v, '^([^|]+)|([^|]+)')
      redis.call('HINCRBYFLOAT', tot, 'm', -tonumber(m))
      redis.call('HINCRBYFLOAT', tot, 'f', -tonumber(fl))
      redis.call('HDEL', res, f)
    end
    redis.call('ZREM', exp, f)
  end
  if redis.call('ZCARD', exp) == 0 then redis.call('DEL', tot) end
  return #gone
end
local function reserved(tot)
  local v = redis.call('HMGET', tot, 'm', 'f')
  return tonumber(v[1] or '0') or 0, tonumber(v[2] or '0') or 0
end
local function window(key, cutoff)
  local all = redis.call('HGETALL', key)
  local m, f, oldest = 0, 0, nil
  for i = 1, #all, 2 do
    local b = tonumber(string.sub(all[i], 2))
    if b < cutoff then
      redis.call('HDEL', key, all[i])
    else
      local v = tonumber(all[i + 1])
      if string.sub(all[i], 1, 1) == 'm' then m = m + v else f = f + v end
      if oldest == nil or b < oldest then oldest = b end
    end
  end
  return m, f, oldest
end
local function fmt(x) return string.format('%.17g', x) end
"""

# KEYS: res, exp, tot, window hashes...  ARGV: now, ttl, member, samples, fixed_m, fixed_f,
# per_m, per_f, then per window: unit ('m'|'f'), limit (<= 0: none), hard (0|1), cutoff.
RESERVE = (
    _COMMON
    + r"""
local now = tonumber(ARGV[1])
purge(KEYS[1], KEYS[2], KEYS[3], now)
local nwin = #KEYS - 3
local spent = {}
for i = 1, nwin do
  local c = 8 + (i - 1) * 4
  local m, f, oldest = window(KEYS[3 + i], tonumber(ARGV[c + 4]))
  spent[i] = {m, f, oldest}
end
local rm, rf = reserved(KEYS[3])
local prior = redis.call('HGET', KEYS[1], ARGV[3])
local granted, binding = tonumber(ARGV[4]), 0
local hm, hf = 0, 0
if prior then
  local pm, pf, pg = string.match(prior, '^([^|]+)|([^|]+)|([^|]+)')
  granted, hm, hf = tonumber(pg), tonumber(pm), tonumber(pf)
else
  local fixed = {tonumber(ARGV[5]), tonumber(ARGV[6])}
  local per = {tonumber(ARGV[7]), tonumber(ARGV[8])}
  local res = {rm, rf}
  for i = 1, nwin do
    local c = 8 + (i - 1) * 4
    local u = (ARGV[c + 1] == 'm') and 1 or 2
    local limit = tonumber(ARGV[c + 2])
    if ARGV[c + 3] == '1' and limit > 0 then
      local avail = limit - spent[i][u] - res[u] - fixed[u]
      local fits
      if avail < -1e-9 * math.max(1, limit) then fits = 0
      elseif per[u] <= 0 then fits = granted
      else fits = math.floor(avail / per[u] + 1e-9) end
      if fits < granted then
        granted = math.max(0, fits)
        binding = i
      end
    end
  end
  if granted >= 1 then
    hm = fixed[1] + granted * per[1]
    hf = fixed[2] + granted * per[2]
    redis.call('HSET', KEYS[1], ARGV[3], fmt(hm) .. '|' .. fmt(hf) .. '|' .. granted)
    redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[3])
    redis.call('HINCRBYFLOAT', KEYS[3], 'm', hm)
    redis.call('HINCRBYFLOAT', KEYS[3], 'f', hf)
    rm, rf = rm + hm, rf + hf
  end
end
local out = {tostring(granted), tostring(binding), fmt(hm), fmt(hf), fmt(rm), fmt(rf)}
for i = 1, nwin do
  table.insert(out, fmt(spent[i][1]))
  table.insert(out, fmt(spent[i][2]))
  table.insert(out, spent[i][3] and fmt(spent[i][3]) or '')
end
return table.concat(out, ',')  -- one bulk string: cheaper to parse than an array
"""
)

# KEYS: res, exp, tot, settled, window hashes...  ARGV: now, member, cost_m, cost_f, settled_ttl,
# then per window: bucket, cutoff, expire_s.
SETTLE = (
    _COMMON
    + r"""
local now = tonumber(ARGV[1])
local v = redis.call('HGET', KEYS[1], ARGV[2])
if v then
  local m, fl = string.match(v, '^([^|]+)|([^|]+)')
  redis.call('HINCRBYFLOAT', KEYS[3], 'm', -tonumber(m))
  redis.call('HINCRBYFLOAT', KEYS[3], 'f', -tonumber(fl))
  redis.call('HDEL', KEYS[1], ARGV[2])
  redis.call('ZREM', KEYS[2], ARGV[2])
end
purge(KEYS[1], KEYS[2], KEYS[3], now)
local dup = redis.call('GET', KEYS[4])
local cm, cf = tonumber(ARGV[3]), tonumber(ARGV[4])
local nwin = #KEYS - 4
if dup then
  local m, fl = string.match(dup, '^([^|]+)|([^|]+)')
  cm, cf = tonumber(m), tonumber(fl)
else
  redis.call('SET', KEYS[4], fmt(cm) .. '|' .. fmt(cf), 'EX', tonumber(ARGV[5]))
  local seen = {}
  for i = 1, nwin do
    local key = KEYS[4 + i]
    if not seen[key] then
      seen[key] = true
      local c = 5 + (i - 1) * 3
      redis.call('HINCRBYFLOAT', key, 'm' .. ARGV[c + 1], cm)
      redis.call('HINCRBYFLOAT', key, 'f' .. ARGV[c + 1], cf)
      redis.call('EXPIRE', key, tonumber(ARGV[c + 3]))
    end
  end
end
local rm, rf = reserved(KEYS[3])
local out = {dup and '1' or '0', fmt(cm), fmt(cf), fmt(rm), fmt(rf)}
for i = 1, nwin do
  local c = 5 + (i - 1) * 3
  local m, f, oldest = window(KEYS[4 + i], tonumber(ARGV[c + 2]))
  table.insert(out, fmt(m))
  table.insert(out, fmt(f))
  table.insert(out, oldest and fmt(oldest) or '')
end
return table.concat(out, ',')  -- one bulk string: cheaper to parse than an array
"""
)

# KEYS: res, exp, tot, window hashes...  ARGV: now, then per window: cutoff.
USAGE = (
    _COMMON
    + r"""
purge(KEYS[1], KEYS[2], KEYS[3], tonumber(ARGV[1]))
local rm, rf = reserved(KEYS[3])
local out = {fmt(rm), fmt(rf)}
for i = 1, #KEYS - 3 do
  local m, f, oldest = window(KEYS[3 + i], tonumber(ARGV[1 + i]))
  table.insert(out, fmt(m))
  table.insert(out, fmt(f))
  table.insert(out, oldest and fmt(oldest) or '')
end
return table.concat(out, ',')  -- one bulk string: cheaper to parse than an array
"""
)

# KEYS: res, exp, tot.  ARGV: member.
RELEASE = r"""
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v then
  local m, fl = string.match(v, '^([^|]+)|([^|]+)')
  redis.call('HINCRBYFLOAT', KEYS[3], 'm', -tonumber(m))
  redis.call('HINCRBYFLOAT', KEYS[3], 'f', -tonumber(fl))
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
  if redis.call('ZCARD', KEYS[2]) == 0 then redis.call('DEL', KEYS[3]) end
end
return 0
"""

# KEYS: res, exp, tot.  ARGV: now.
PURGE = _COMMON + "return purge(KEYS[1], KEYS[2], KEYS[3], tonumber(ARGV[1]))"


class RedisStore:
    """`LedgerStore` on a Redis server (`redis://host:port/db`)."""

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        client: aioredis.Redis | None = None,
        settled_ttl_s: float = 3 * 86400,
        max_connections: int = 64,
    ) -> None:
        self.url = url
        self._owns_pool = client is None
        if client is None:
            # a blocking pool waits for a free connection under load instead of raising
            pool = aioredis.BlockingConnectionPool.from_url(
                url, decode_responses=True, max_connections=max_connections, timeout=30
            )
            client = aioredis.Redis(connection_pool=pool)
        self.client: aioredis.Redis = client
        self.settled_ttl_s = int(settled_ttl_s)
        self._reserve = self.client.register_script(RESERVE)
        self._settle = self.client.register_script(SETTLE)
        self._usage = self.client.register_script(USAGE)
        self._release = self.client.register_script(RELEASE)
        self._purge = self.client.register_script(PURGE)

    @staticmethod
    def _base(tenant: str) -> str:
        return "{t2:" + tenant + "}"

    def _keys(self, tenant: str) -> list[str]:
        b = self._base(tenant)
        return [f"{b}:res", f"{b}:exp", f"{b}:tot"]

    def _window_key(self, tenant: str, lim: Limit) -> str:
        return f"{self._base(tenant)}:w:{lim.key}"

    @staticmethod
    def _member(request_id: str, wave: int) -> str:
        return f"{request_id}|{wave}"

    async def reserve(self, hold: Hold) -> ReserveOutcome:
        keys = self._keys(hold.tenant) + [self._window_key(hold.tenant, lim) for lim in hold.limits]
        args: list[Any] = [
            repr(hold.now),
            repr(hold.ttl_s),
            self._member(hold.request_id, hold.wave),
            hold.samples,
            repr(hold.fixed.money),
            repr(hold.fixed.flops),
            repr(hold.per_sample.money),
            repr(hold.per_sample.flops),
        ]
        for lim in hold.limits:
            unit = "m" if lim.unit == "currency" else "f"
            args += [unit, repr(lim.limit), "1" if lim.hard else "0", lim.cutoff]
        out = str(await self._reserve(keys=keys, args=args)).split(",")
        granted, binding = int(out[0]), int(out[1])
        reserved = Cost(float(out[4]), float(out[5]))
        usage = _usage(hold.limits, reserved, out[6:])
        name = hold.limits[binding - 1].span.name if binding > 0 else None
        return ReserveOutcome(granted, Cost(float(out[2]), float(out[3])), name, usage)

    async def settle(self, hold: Hold, cost: Cost) -> SettleOutcome:
        tenant, limits = hold.tenant, hold.limits
        member = self._member(hold.request_id, hold.wave)
        keys = [*self._keys(tenant), f"{self._base(tenant)}:s:{member}"]
        keys += [self._window_key(tenant, lim) for lim in limits]
        args: list[Any] = [
            repr(hold.now),
            member,
            repr(cost.money),
            repr(cost.flops),
            self.settled_ttl_s,
        ]
        for lim in limits:
            expire = int(2 * max(LENGTH_S[lim.span.name], lim.span.end - lim.span.start)) + 60
            args += [lim.bucket, lim.cutoff, expire]
        out = str(await self._settle(keys=keys, args=args)).split(",")
        charged = Cost(float(out[1]), float(out[2]))
        reserved = Cost(float(out[3]), float(out[4]))
        return SettleOutcome(charged, out[0] == "1", _usage(limits, reserved, out[5:]))

    async def release(self, tenant: str, request_id: str, wave: int) -> None:
        await self._release(keys=self._keys(tenant), args=[self._member(request_id, wave)])

    async def usage(self, tenant: str, limits: Sequence[Limit], now: float) -> list[WindowUsage]:
        keys = self._keys(tenant) + [self._window_key(tenant, lim) for lim in limits]
        cutoffs = [lim.cutoff for lim in limits]
        out = str(await self._usage(keys=keys, args=[repr(now), *cutoffs])).split(",")
        return _usage(limits, Cost(float(out[0]), float(out[1])), out[2:])

    async def purge_expired(self, now: float) -> int:
        total = 0
        async for key in self.client.scan_iter(match="{t2:*}:exp", count=500):
            base = key[: -len(":exp")]
            total += int(
                await self._purge(keys=[f"{base}:res", f"{base}:exp", f"{base}:tot"], args=[now])
            )
        return total

    async def reserved_holds(self, tenant: str | None = None) -> int:
        if tenant is not None:
            return int(await self.client.zcard(f"{self._base(tenant)}:exp"))
        total = 0
        async for key in self.client.scan_iter(match="{t2:*}:exp", count=500):
            total += int(await self.client.zcard(key))
        return total

    async def close(self) -> None:
        await self.client.aclose()
        if self._owns_pool:
            await self.client.connection_pool.disconnect()


def _usage(limits: Sequence[Limit], reserved: Cost, flat: Sequence[str]) -> list[WindowUsage]:
    out: list[WindowUsage] = []
    for i, lim in enumerate(limits):
        m, f, oldest = flat[3 * i], flat[3 * i + 1], flat[3 * i + 2]
        out.append(
            WindowUsage(lim, Cost(float(m), float(f)), reserved, float(oldest) if oldest else None)
        )
    return out
