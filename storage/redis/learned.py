"""`LearnedStore` in the ledger's Redis: one hash per (tenant, model), one Lua script per step.

Keys (prefix `{t2learn}`, one slot, so the scripts also run on a cluster):
- `:c:<tenant>|<model>` hash "n,c" → count: the table; replicas merge by HINCRBY;
- `:p:<tenant>|<model>` hash a/b: the prior last fitted;
- `:rows` sorted set of "<tenant>|<model>" by last use; beyond `max_rows` the least recently
  used goes with its hashes, in the same script (tenant ids cannot hold "|").
"""

from __future__ import annotations

from collections import Counter

import redis.asyncio as aioredis

from controller.policy.learned import DEFAULT_MAX_ROWS, Learned, Pair
from controller.policy.prior import LeaderPrior
from storage.redis.connection import connect

_B = "{t2learn}"
ROWS = f"{_B}:rows"

# KEYS: rows.  ARGV: member, now, max_rows.  Marks the row used and evicts beyond the bound.
_TOUCH = r"""
local function touch(member, now, max_rows)
  local old = tonumber(redis.call('ZSCORE', KEYS[1], member) or '-1')
  if tonumber(now) > old then redis.call('ZADD', KEYS[1], now, member) end
  local extra = redis.call('ZCARD', KEYS[1]) - tonumber(max_rows)
  if extra > 0 then
    local gone = redis.call('ZRANGE', KEYS[1], 0, extra - 1)
    for _, m in ipairs(gone) do
      redis.call('DEL', '{t2learn}:c:' .. m, '{t2learn}:p:' .. m)
      redis.call('ZREM', KEYS[1], m)
    end
  end
end
"""
ADD = (
    _TOUCH
    + r"""
touch(ARGV[1], ARGV[2], ARGV[3])
redis.call('HINCRBY', '{t2learn}:c:' .. ARGV[1], ARGV[4], 1)
return 1
"""
)
LOAD = (
    _TOUCH
    + r"""
touch(ARGV[1], ARGV[2], ARGV[3])
return {redis.call('HGETALL', '{t2learn}:c:' .. ARGV[1]),
        redis.call('HMGET', '{t2learn}:p:' .. ARGV[1], 'a', 'b')}
"""
)
SET_PRIOR = (
    _TOUCH
    + r"""
touch(ARGV[1], ARGV[2], ARGV[3])
redis.call('HSET', '{t2learn}:p:' .. ARGV[1], 'a', ARGV[4], 'b', ARGV[5])
return 1
"""
)


def _member(tenant: str, model: str) -> str:
    if "|" in tenant:
        raise ValueError("tenant ids cannot contain '|'")
    return f"{tenant}|{model}"


class RedisLearnedStore:
    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        max_rows: int = DEFAULT_MAX_ROWS,
        client: aioredis.Redis | None = None,
    ) -> None:
        self._owns = client is None
        self.client: aioredis.Redis = client or connect(url)
        self.max_rows = max_rows
        self._add = self.client.register_script(ADD)
        self._load = self.client.register_script(LOAD)
        self._set_prior = self.client.register_script(SET_PRIOR)

    def _args(self, tenant: str, model: str, now: float) -> list[str]:
        return [_member(tenant, model), repr(float(now)), str(self.max_rows)]

    async def load(self, tenant: str, model: str, now: float) -> Learned:
        flat, prior = await self._load(keys=[ROWS], args=self._args(tenant, model, now))
        counts: Counter[Pair] = Counter()
        for i in range(0, len(flat), 2):
            n, c = flat[i].split(",")
            counts[(int(n), int(c))] = int(flat[i + 1])
        a, b = prior
        return Learned(counts, LeaderPrior(float(a), float(b)) if a and b else None)

    async def add(self, tenant: str, model: str, pair: Pair, now: float) -> None:
        cell = f"{int(pair[0])},{int(pair[1])}"
        await self._add(keys=[ROWS], args=[*self._args(tenant, model, now), cell])

    async def set_prior(self, tenant: str, model: str, prior: LeaderPrior, now: float) -> None:
        args = [*self._args(tenant, model, now), repr(prior.a), repr(prior.b)]
        await self._set_prior(keys=[ROWS], args=args)

    async def rows(self) -> int:
        return int(await self.client.zcard(ROWS))

    async def close(self) -> None:
        """Idempotent; closes the client only if this store made it."""
        if self._owns:
            self._owns = False
            await self.client.aclose()
