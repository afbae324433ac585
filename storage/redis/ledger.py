"""The multi-replica ledger backend: Redis, where each reserve and each settle is ONE Lua script.

Redis runs a script without interleaving any other command, so "purge expired holds, sum the
windows, fit the samples, hold them" is atomic across every replica talking to the same Redis.
All of a tenant's keys share the hash tag `{t2:<tenant>}`, so the scripts also run on a cluster.

Keys per tenant (prefix `{t2:<tenant>}`):
- `:res` hash "<request>|<wave>" → "money|flops|granted|scopes|tokens": live holds;
- `:exp` sorted set of the same members scored by expiry; `:tot` hash m/f/t: their running sum;
- `:w:<window>` hash "m<bucket>"/"f<bucket>"/"t<bucket>" → spend, FLOPs and tokens (expires
  after two window lengths);
- `:rq:<scope>` sorted set of admitted request ids scored by time: the `rpm` sliding log;
- `:s:<request>|<wave>` string "money|flops|tokens": the settle idempotency record (kept
  `settled_ttl_s`);
- `:log:<request>` hash: the request's spend-log record, summed by each settle script, with
  its per-model breakdown in the same hash (`by|<figure>|<model>`, e.g. `by|money|m`) and `mw`,
  the wave that last named its `model` (records from before the breakdown have neither);
  `:logs` sorted set of request ids by first settle time (both kept `log_retention_s`).

Durability of settled spend is Redis's own: run it with `appendonly yes` in production.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from controller.budget.ledger import (
    Hold,
    Limit,
    ModelSpend,
    RequestLimit,
    RequestUsage,
    ReserveOutcome,
    SettleOutcome,
    SpendRecord,
    WindowUsage,
)
from controller.budget.pricing import Cost
from controller.budget.windows import LENGTH_S
from storage.redis.connection import connect

# Shared Lua. A hold is "money|flops|granted|scope;scope...|tokens" in `res` (holds written
# before rate limits have no tokens part: 0); it counts in the tenant's `tot` and in the
# `tot:<scope>` of every level below the tenant it was held at (with a count `n`, so a level's
# total disappears with its last hold). Window hashes sum from a cutoff.
_COMMON = r"""
local function totkey(tot, scope)
  if scope == '' then return tot end
  return tot .. ':' .. scope
end
local function parse(v)
  local m, fl, g, sc, t = string.match(v, '^([^|]+)|([^|]+)|([^|]+)|?([^|]*)|?(.*)$')
  return tonumber(m), tonumber(fl), tonumber(g), sc, tonumber(t) or 0
end
local function unhold(res, exp, tot, f)
  local v = redis.call('HGET', res, f)
  if v then
    local m, fl, g, sc, t = parse(v)
    redis.call('HINCRBYFLOAT', tot, 'm', -m)
    redis.call('HINCRBYFLOAT', tot, 'f', -fl)
    if t ~= 0 then redis.call('HINCRBYFLOAT', tot, 't', -t) end
    for scope in string.gmatch(sc, '[^;]+') do
      local k = totkey(tot, scope)
      if redis.call('HINCRBY', k, 'n', -1) <= 0 then
        redis.call('DEL', k)
      else
        redis.call('HINCRBYFLOAT', k, 'm', -m)
        redis.call('HINCRBYFLOAT', k, 'f', -fl)
        if t ~= 0 then redis.call('HINCRBYFLOAT', k, 't', -t) end
      end
    end
    redis.call('HDEL', res, f)
  end
  redis.call('ZREM', exp, f)
end
local function purge(res, exp, tot, now)
  local gone = redis.call('ZRANGEBYSCORE', exp, '-inf', now)
  for _, f in ipairs(gone) do unhold(res, exp, tot, f) end
  if redis.call('ZCARD', exp) == 0 then redis.call('DEL', tot) end
  return #gone
end
local function reserved(tot)
  local v = redis.call('HMGET', tot, 'm', 'f', 't')
  return tonumber(v[1] or '0') or 0, tonumber(v[2] or '0') or 0, tonumber(v[3] or '0') or 0
end
local function window(key, cutoff)
  local all = redis.call('HGETALL', key)
  local m, f, t, oldest = 0, 0, 0, nil
  for i = 1, #all, 2 do
    local b = tonumber(string.sub(all[i], 2))
    if b < cutoff then
      redis.call('HDEL', key, all[i])
    else
      local v = tonumber(all[i + 1])
      local kind = string.sub(all[i], 1, 1)
      if kind == 'm' then m = m + v elseif kind == 'f' then f = f + v else t = t + v end
      if oldest == nil or b < oldest then oldest = b end
    end
  end
  return m, f, t, oldest
end
local function usage(key, cutoff, tot, scope)
  local m, f, t, oldest = window(key, cutoff)
  local rm, rf, rt = reserved(totkey(tot, scope))
  return {m, f, t, oldest, rm, rf, rt}
end
local function fmt(x) return string.format('%.17g', x) end
local function emit(out, w)
  for j = 1, 7 do
    if j == 4 then table.insert(out, w[4] and fmt(w[4]) or '')
    else table.insert(out, fmt(w[j])) end
  end
end
"""

# KEYS: res, exp, tot, window hashes..., rpm logs...
# ARGV: now, ttl, member, samples, fixed m/f/t, per-sample m/f/t, request id to count ('' =
# none), number of rpm logs, then per window: unit ('m'|'f'|'t'), limit (<= 0: none), hard
# (0|1), cutoff, scope; then per rpm log: limit, window seconds.
# Returns granted, binding (i > 0 window i, -j rpm log j, 0 none), held m/f/t, then 7 figures
# per window, then per rpm log: requests in the window, oldest entry's time ('' none).
RESERVE = (
    _COMMON
    + r"""
local now = tonumber(ARGV[1])
purge(KEYS[1], KEYS[2], KEYS[3], now)
local nreq = tonumber(ARGV[12])
local nwin = #KEYS - 3 - nreq
local counted = ARGV[11]
local w, scopes, seen = {}, {}, {}
for i = 1, nwin do
  local c = 12 + (i - 1) * 5
  w[i] = usage(KEYS[3 + i], tonumber(ARGV[c + 4]), KEYS[3], ARGV[c + 5])
  local scope = ARGV[c + 5]
  if scope ~= '' and not seen[scope] then
    seen[scope] = true
    table.insert(scopes, scope)
  end
end
local rq = {}
for j = 1, nreq do  -- the rpm sliding logs: drop what left the window, count the rest
  local key = KEYS[3 + nwin + j]
  local c = 12 + nwin * 5 + (j - 1) * 2
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - tonumber(ARGV[c + 2]))
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  local already = counted ~= '' and redis.call('ZSCORE', key, counted)
  rq[j] = {redis.call('ZCARD', key), first[2], already, tonumber(ARGV[c + 1])}
end
local prior = redis.call('HGET', KEYS[1], ARGV[3])
local granted, binding = tonumber(ARGV[4]), 0
local hm, hf, ht = 0, 0, 0
if prior then
  local pm, pf, pg, _, pt = parse(prior)
  granted, hm, hf, ht = pg, pm, pf, pt
else
  for j = 1, nreq do
    if binding == 0 and not rq[j][3] and rq[j][1] >= rq[j][4] then
      granted, binding = 0, -j
    end
  end
  local fixed = {tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])}
  local per = {tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])}
  for i = 1, nwin do
    if binding < 0 then break end
    local c = 12 + (i - 1) * 5
    local unit = ARGV[c + 1]
    local u = (unit == 'm') and 1 or ((unit == 'f') and 2 or 3)
    local limit = tonumber(ARGV[c + 2])
    if ARGV[c + 3] == '1' and limit > 0 then
      local avail = limit - w[i][u] - w[i][4 + u] - fixed[u]
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
  if granted >= 1 then  -- held at every level: it counts against each level's windows
    hm = fixed[1] + granted * per[1]
    hf = fixed[2] + granted * per[2]
    ht = fixed[3] + granted * per[3]
    local v = fmt(hm) .. '|' .. fmt(hf) .. '|' .. granted .. '|' .. table.concat(scopes, ';')
      .. '|' .. fmt(ht)
    redis.call('HSET', KEYS[1], ARGV[3], v)
    redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[3])
    redis.call('HINCRBYFLOAT', KEYS[3], 'm', hm)
    redis.call('HINCRBYFLOAT', KEYS[3], 'f', hf)
    redis.call('HINCRBYFLOAT', KEYS[3], 't', ht)
    for _, scope in ipairs(scopes) do
      local k = totkey(KEYS[3], scope)
      redis.call('HINCRBYFLOAT', k, 'm', hm)
      redis.call('HINCRBYFLOAT', k, 'f', hf)
      redis.call('HINCRBYFLOAT', k, 't', ht)
      redis.call('HINCRBY', k, 'n', 1)
    end
    for i = 1, nwin do
      w[i][5], w[i][6], w[i][7] = w[i][5] + hm, w[i][6] + hf, w[i][7] + ht
    end
    for j = 1, nreq do  -- admitted: the request enters each level's rpm log
      if not rq[j][3] then
        local key = KEYS[3 + nwin + j]
        local len = tonumber(ARGV[12 + nwin * 5 + (j - 1) * 2 + 2])
        redis.call('ZADD', key, now, counted)
        redis.call('EXPIRE', key, math.ceil(len) + 60)
        rq[j][1] = rq[j][1] + 1
        if not rq[j][2] then rq[j][2] = ARGV[1] end
      end
    end
  end
end
local out = {tostring(granted), tostring(binding), fmt(hm), fmt(hf), fmt(ht)}
for i = 1, nwin do emit(out, w[i]) end
for j = 1, nreq do
  table.insert(out, tostring(rq[j][1]))
  table.insert(out, rq[j][2] or '')
end
return table.concat(out, ',')  -- one bulk string: cheaper to parse than an array
"""
)

# KEYS: rpm logs...  ARGV: now, then per log: window seconds.  Per log: count, oldest.
REQUESTS = r"""
local out = {}
for j = 1, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[j], '-inf', tonumber(ARGV[1]) - tonumber(ARGV[j + 1]))
  local first = redis.call('ZRANGE', KEYS[j], 0, 0, 'WITHSCORES')
  table.insert(out, tostring(redis.call('ZCARD', KEYS[j])))
  table.insert(out, first[2] or '')
end
return table.concat(out, ',')
"""

# KEYS: res, exp, tot, settled, log record, log index, window hashes...
# ARGV: now, member, cost_m, cost_f, settled_ttl, has_log, request_id, model, key_prefix, user,
# samples, prompt_tokens, completion_tokens, log_ttl, cost_t, then per window: bucket, cutoff,
# expire_s, scope; then the waves the log entry adds (absent: 1, as before it was passed) and
# the wave's number (absent: 0). The entry is added to the record's totals and to its model's
# `by|...|<model>` fields; a generation entry (waves ≥ 1) of a wave ≥ `mw` names the `model`.
SETTLE = (
    _COMMON
    + r"""
local now = tonumber(ARGV[1])
unhold(KEYS[1], KEYS[2], KEYS[3], ARGV[2])
purge(KEYS[1], KEYS[2], KEYS[3], now)
local dup = redis.call('GET', KEYS[4])
local cm, cf, ct = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[15])
local nwin = #KEYS - 6
if dup then
  local m, fl, t = string.match(dup, '^([^|]+)|([^|]+)|?(.*)$')
  cm, cf, ct = tonumber(m), tonumber(fl), tonumber(t) or 0
else
  redis.call('SET', KEYS[4], fmt(cm) .. '|' .. fmt(cf) .. '|' .. fmt(ct), 'EX',
             tonumber(ARGV[5]))
  local seen = {}
  for i = 1, nwin do
    local key = KEYS[6 + i]
    if not seen[key] then
      seen[key] = true
      local c = 15 + (i - 1) * 4
      redis.call('HINCRBYFLOAT', key, 'm' .. ARGV[c + 1], cm)
      redis.call('HINCRBYFLOAT', key, 'f' .. ARGV[c + 1], cf)
      if ct ~= 0 then redis.call('HINCRBYFLOAT', key, 't' .. ARGV[c + 1], ct) end
      redis.call('EXPIRE', key, tonumber(ARGV[c + 3]))
    end
  end
  if ARGV[6] == '1' then  -- the request's spend-log record, in this same script
    local log, ttl, model = KEYS[5], tonumber(ARGV[14]), ARGV[8]
    local waves = tonumber(ARGV[16 + nwin * 4] or '1')
    local wave = tonumber(ARGV[17 + nwin * 4] or '0')
    if redis.call('HSETNX', log, 'time', ARGV[1]) == 1 then
      redis.call('HSET', log, 'request_id', ARGV[7], 'model', model, 'key_prefix', ARGV[9],
                 'user', ARGV[10], 'mw', '-1')
      redis.call('ZADD', KEYS[6], now, ARGV[7])
      redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', now - ttl)
      redis.call('EXPIRE', KEYS[6], ttl)
    end
    if waves >= 1 and wave >= (tonumber(redis.call('HGET', log, 'mw') or '-1') or -1) then
      redis.call('HSET', log, 'model', model, 'mw', tostring(wave))
    end
    local s, p, c = tonumber(ARGV[11]), tonumber(ARGV[12]), tonumber(ARGV[13])
    for _, pre in ipairs({'', 'by|'}) do  -- the totals, then the model's share
      local suf = (pre == '') and '' or ('|' .. model)
      redis.call('HINCRBY', log, pre .. 'samples' .. suf, s)
      redis.call('HINCRBY', log, pre .. 'waves' .. suf, waves)
      redis.call('HINCRBY', log, pre .. 'prompt_tokens' .. suf, p)
      redis.call('HINCRBY', log, pre .. 'completion_tokens' .. suf, c)
      redis.call('HINCRBYFLOAT', log, pre .. 'money' .. suf, cm)
      redis.call('HINCRBYFLOAT', log, pre .. 'flops' .. suf, cf)
    end
    redis.call('EXPIRE', log, ttl)
  end
end
local out = {dup and '1' or '0', fmt(cm), fmt(cf), fmt(ct)}
for i = 1, nwin do
  local c = 15 + (i - 1) * 4
  emit(out, usage(KEYS[6 + i], tonumber(ARGV[c + 2]), KEYS[3], ARGV[c + 4]))
end
return table.concat(out, ',')  -- one bulk string: cheaper to parse than an array
"""
)

# KEYS: log record.  ARGV: stop_reason, status, samples. Then the record's model's samples in
# its breakdown (if it has one): the drawn samples its other models' waves did not draw.
FINISH_LOG = r"""
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'stop_reason', ARGV[1], 'status', ARGV[2], 'samples', ARGV[3])
  local mine = 'by|samples|' .. (redis.call('HGET', KEYS[1], 'model') or '')
  if redis.call('HEXISTS', KEYS[1], mine) == 1 then
    local all, others = redis.call('HGETALL', KEYS[1]), 0
    for i = 1, #all, 2 do
      if all[i] ~= mine and string.sub(all[i], 1, 11) == 'by|samples|' then
        others = others + tonumber(all[i + 1])
      end
    end
    local left = math.max(0, tonumber(ARGV[3]) - others)
    redis.call('HSET', KEYS[1], mine, string.format('%d', left))
  end
end
return 0
"""

# KEYS: res, exp, tot, window hashes...  ARGV: now, then per window: cutoff, scope.
USAGE = (
    _COMMON
    + r"""
purge(KEYS[1], KEYS[2], KEYS[3], tonumber(ARGV[1]))
local out = {}
for i = 1, #KEYS - 3 do
  emit(out, usage(KEYS[3 + i], tonumber(ARGV[2 * i]), KEYS[3], ARGV[2 * i + 1]))
end
return table.concat(out, ',')  -- one bulk string: cheaper to parse than an array
"""
)

# KEYS: res, exp, tot.  ARGV: member.
RELEASE = (
    _COMMON
    + r"""
unhold(KEYS[1], KEYS[2], KEYS[3], ARGV[1])
if redis.call('ZCARD', KEYS[2]) == 0 then redis.call('DEL', KEYS[3]) end
return 0
"""
)

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
        log_retention_s: float = 90 * 86400,
    ) -> None:
        self.url = url
        self._owns_pool = client is None
        self.client: aioredis.Redis = client or connect(url, max_connections=max_connections)
        self.settled_ttl_s = int(settled_ttl_s)
        self.log_retention_s = int(log_retention_s)
        self._finish = self.client.register_script(FINISH_LOG)
        self._reserve = self.client.register_script(RESERVE)
        self._requests = self.client.register_script(REQUESTS)
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

    def _rpm_key(self, tenant: str, lim: RequestLimit) -> str:
        return f"{self._base(tenant)}:rq:{lim.scope}"

    @staticmethod
    def _member(request_id: str, wave: int) -> str:
        return f"{request_id}|{wave}"

    async def reserve(self, hold: Hold) -> ReserveOutcome:
        tenant, rpm = hold.tenant, hold.request_limits
        keys = self._keys(tenant) + [self._window_key(tenant, lim) for lim in hold.limits]
        keys += [self._rpm_key(tenant, lim) for lim in rpm]
        f, p = hold.fixed, hold.per_sample
        args: list[Any] = [
            repr(hold.now),
            repr(hold.ttl_s),
            self._member(hold.request_id, hold.wave),
            hold.samples,
            *(repr(x) for x in (f.money, f.flops, f.tokens, p.money, p.flops, p.tokens)),
            hold.count_request or "",
            len(rpm),
        ]
        for lim in hold.limits:
            unit = _UNIT[lim.unit]
            args += [unit, repr(lim.limit), "1" if lim.hard else "0", lim.cutoff, lim.scope]
        for r in rpm:
            args += [r.limit, repr(r.window_s)]
        out = str(await self._reserve(keys=keys, args=args)).split(",")
        granted, binding = int(out[0]), int(out[1])
        n = len(hold.limits)
        usage = _usage(hold.limits, out[5 : 5 + 7 * n])
        requests = _requests(rpm, out[5 + 7 * n :])
        name = None
        if binding > 0:
            name = hold.limits[binding - 1].label
        elif binding < 0:
            name = rpm[-binding - 1].label
        held = Cost(float(out[2]), float(out[3]), float(out[4]))
        return ReserveOutcome(granted, held, name, usage, requests)

    async def requests(
        self, tenant: str, limits: Sequence[RequestLimit], now: float
    ) -> list[RequestUsage]:
        if not limits:
            return []
        keys = [self._rpm_key(tenant, lim) for lim in limits]
        args = [repr(now), *(repr(lim.window_s) for lim in limits)]
        return _requests(limits, str(await self._requests(keys=keys, args=args)).split(","))

    async def settle(self, hold: Hold, cost: Cost) -> SettleOutcome:
        tenant, limits = hold.tenant, hold.limits
        member = self._member(hold.request_id, hold.wave)
        keys = [*self._keys(tenant), f"{self._base(tenant)}:s:{member}"]
        keys += [self._log_key(tenant, hold.request_id), f"{self._base(tenant)}:logs"]
        keys += [self._window_key(tenant, lim) for lim in limits]
        e = hold.entry
        args: list[Any] = [
            repr(hold.now),
            member,
            repr(cost.money),
            repr(cost.flops),
            self.settled_ttl_s,
            "1" if e is not None else "0",
            hold.request_id,
            e.model if e else "",
            (e.key_prefix or "") if e else "",
            (e.user or "") if e else "",
            e.samples if e else 0,
            e.prompt_tokens if e else 0,
            e.completion_tokens if e else 0,
            self.log_retention_s,
            repr(cost.tokens),
        ]
        for lim in limits:
            expire = int(2 * max(LENGTH_S[lim.span.name], lim.span.end - lim.span.start)) + 60
            args += [lim.bucket, lim.cutoff, expire, lim.scope]
        args += [e.waves if e else 0, hold.wave]
        out = str(await self._settle(keys=keys, args=args)).split(",")
        charged = Cost(float(out[1]), float(out[2]), float(out[3]))
        return SettleOutcome(charged, out[0] == "1", _usage(limits, out[4:]))

    def _log_key(self, tenant: str, request_id: str) -> str:
        return f"{self._base(tenant)}:log:{request_id}"

    async def finish_log(
        self, tenant: str, request_id: str, stop_reason: str | None, status: int, samples: int
    ) -> None:
        await self._finish(
            keys=[self._log_key(tenant, request_id)], args=[stop_reason or "", status, samples]
        )

    async def spend_logs(self, tenant: str, since: float, until: float) -> list[SpendRecord]:
        ids = await self.client.zrangebyscore(
            f"{self._base(tenant)}:logs", repr(since), f"({until!r}"
        )
        pipe = self.client.pipeline(transaction=False)
        for rid in ids:
            pipe.hgetall(self._log_key(tenant, str(rid)))
        out = []
        for raw in await pipe.execute() if ids else []:
            if raw:  # expired by retention in between
                out.append(_record(tenant, raw))
        out.sort(key=lambda r: (r.time, r.request_id))
        return out

    async def purge_logs(self, before: float) -> int:
        total = 0
        async for index in self.client.scan_iter(match="{t2:*}:logs", count=500):
            base = str(index)[: -len(":logs")]
            old = await self.client.zrangebyscore(index, "-inf", f"({before!r}")
            if old:
                await self.client.delete(*[f"{base}:log:{rid!s}" for rid in old])
                total += int(await self.client.zrem(index, *old))
        return total

    async def release(self, tenant: str, request_id: str, wave: int) -> None:
        await self._release(keys=self._keys(tenant), args=[self._member(request_id, wave)])

    async def usage(self, tenant: str, limits: Sequence[Limit], now: float) -> list[WindowUsage]:
        keys = self._keys(tenant) + [self._window_key(tenant, lim) for lim in limits]
        per_window = [x for lim in limits for x in (lim.cutoff, lim.scope)]
        out = str(await self._usage(keys=keys, args=[repr(now), *per_window])).split(",")
        return _usage(limits, out)

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


_COUNTS = ("samples", "waves", "prompt_tokens", "completion_tokens")


def _by_model(raw: dict[str, str]) -> dict[str, ModelSpend]:
    """The record's `by|<figure>|<model>` fields (none on records from before the breakdown:
    then `SpendRecord` reads it as all its `model`'s)."""
    out: dict[str, ModelSpend] = {}
    for name, value in raw.items():
        if name.startswith("by|"):
            _, figure, model = name.split("|", 2)
            part = out.setdefault(model, ModelSpend())
            if figure in _COUNTS:
                setattr(part, figure, int(value))
            elif figure in ("money", "flops"):
                setattr(part, figure, float(value))
    return dict(sorted(out.items()))


def _record(tenant: str, raw: dict[str, str]) -> SpendRecord:
    return SpendRecord(
        request_id=raw["request_id"],
        tenant=tenant,
        time=float(raw["time"]),
        model=raw["model"],
        key_prefix=raw.get("key_prefix") or None,
        user=raw.get("user") or None,
        samples=int(raw.get("samples", 0)),
        waves=int(raw.get("waves", 0)),
        prompt_tokens=int(raw.get("prompt_tokens", 0)),
        completion_tokens=int(raw.get("completion_tokens", 0)),
        money=float(raw.get("money", 0)),
        flops=float(raw.get("flops", 0)),
        stop_reason=raw.get("stop_reason") or None,
        status=int(raw["status"]) if raw.get("status") else None,
        by_model=_by_model(raw),
    )


_UNIT = {"currency": "m", "flops": "f", "tokens": "t"}


def _usage(limits: Sequence[Limit], flat: Sequence[str]) -> list[WindowUsage]:
    """Per window: spend (money, FLOPs, tokens), oldest bucket, and the holds of its level."""
    out: list[WindowUsage] = []
    for i, lim in enumerate(limits):
        m, f, t, oldest, rm, rf, rt = flat[7 * i : 7 * i + 7]
        spent = Cost(float(m), float(f), float(t))
        held = Cost(float(rm), float(rf), float(rt))
        out.append(WindowUsage(lim, spent, held, float(oldest) if oldest else None))
    return out


def _requests(limits: Sequence[RequestLimit], flat: Sequence[str]) -> list[RequestUsage]:
    """Per rpm log: requests in the window and the oldest one's time."""
    out: list[RequestUsage] = []
    for j, lim in enumerate(limits):
        count, oldest = flat[2 * j : 2 * j + 2]
        out.append(RequestUsage(lim, int(count), float(oldest) if oldest else None))
    return out
