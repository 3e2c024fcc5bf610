"""Token buckets in Redis, so every replica draws on the same limit.

One Lua script checks and draws on all of a call's buckets atomically: two replicas can never both
admit a call on the last token. The clock is Redis's own (TIME), so replicas with skewed clocks agree.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as redis

from rag_grpc.limits.buckets import ALLOWED, Charge, Verdict

# KEYS: bucket keys. ARGV: rate, burst, cost for each key, in order.
# Returns {1} when admitted, else {0, wait in microseconds, 1-based index of the limiting bucket}.
_CHARGE_SCRIPT = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local levels = {}
local wait, limiting = 0, 0
for i, key in ipairs(KEYS) do
  local rate, burst, cost = tonumber(ARGV[3*i-2]), tonumber(ARGV[3*i-1]), tonumber(ARGV[3*i])
  local state = redis.call('HMGET', key, 'level', 'at')
  local level, at = tonumber(state[1]), tonumber(state[2])
  if level == nil or at == nil then level, at = burst, now end
  level = math.min(burst, level + math.max(0, now - at) / 1000000 * rate)
  levels[i] = level
  if cost > level then
    local need = (cost - level) / rate * 1000000
    if need > wait then wait, limiting = need, i end
  end
end
if limiting > 0 then return {0, math.ceil(wait), limiting} end
for i, key in ipairs(KEYS) do
  local rate, burst, cost = tonumber(ARGV[3*i-2]), tonumber(ARGV[3*i-1]), tonumber(ARGV[3*i])
  redis.call('HSET', key, 'level', string.format('%.6f', levels[i] - cost), 'at', now)
  -- A bucket left alone refills completely; after that it need not be kept.
  redis.call('PEXPIRE', key, math.ceil(burst / rate * 1000) + 1000)
end
return {1}
"""


class RedisBuckets:
    def __init__(self, url: str, timeout_s: float) -> None:
        self._redis = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._script = self._redis.register_script(_CHARGE_SCRIPT)

    async def charge(self, charges: Sequence[Charge]) -> Verdict:
        args: list[float] = []
        for c in charges:
            args += (c.rate, c.burst, c.cost)
        reply = await self._script(keys=[c.key for c in charges], args=args)
        if int(reply[0]) == 1:
            return ALLOWED
        return Verdict(False, int(reply[1]) / 1e6, int(reply[2]) - 1)

    async def aclose(self) -> None:
        await self._redis.aclose()
