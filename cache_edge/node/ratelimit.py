"""Per-API-key rate limits: a token bucket shared by every process of a region through Redis.

Each key has a bucket of ``burst`` tokens refilled at ``rate`` per second; a
request takes one token or is refused with ``rate_limited`` (429) and a
``Retry-After`` saying when the next token arrives. The bucket lives in the
region's Redis and is updated by one Lua script (atomic, Redis's own clock), so
all node processes of a region share it.

If Redis is down or slow the limiter neither fails open (no limit at all) nor
closed (refusing everyone): it falls back to a bucket in this process with the
same rate and burst, and goes back to Redis after ``retry_after`` seconds. While
it falls back, a region of P processes lets through up to P times the limit. On a
Redis Cluster only the keys whose buckets live on a failed node fall back.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from cache_edge.common.errors import RateLimited
from cache_edge.node.auth import Principal
from cache_edge.node.tiers.redis import RedisGuard, TierUnavailable, redis_client
from cache_edge.server.config import RateLimit
from cache_edge.server.logs import get_logger

__all__ = ["LocalBuckets", "RateLimiter"]

log = get_logger(__name__)

# KEYS[1] bucket; ARGV rate (tokens/s), burst, cost. Returns {allowed, ms until enough tokens}.
# TIME is Redis's clock, the same for every node process; allowed in scripts since Redis 5
# (effects replication), the default and only mode since Redis 7.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1])
local ts = tonumber(b[2])
if tokens == nil or ts == nil then tokens = burst; ts = now end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate / 1000)
local allowed = 0
local wait = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  wait = math.ceil((cost - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return {allowed, wait}
"""

_MAX_CONNECTIONS = 50  # one small bucket update per request; Redis answers fast
_MAX_LOCAL_BUCKETS = 100_000


class LocalBuckets:
    """Token buckets in this process: the fallback while Redis is unavailable."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def take(self, key: str, limit: RateLimit) -> float:
        """Take one token; return 0 if allowed, else seconds until one is available."""
        now = self._clock()
        tokens, at = self._buckets.get(key, (float(limit.burst), now))
        tokens = min(float(limit.burst), tokens + (now - at) * limit.rate)
        if len(self._buckets) >= _MAX_LOCAL_BUCKETS and key not in self._buckets:
            self._buckets.clear()  # crude but bounded: a full bucket is the default state
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / limit.rate


class RateLimiter:
    def __init__(
        self,
        url: str,
        *,
        timeout: float,
        retry_after: float,
        cluster: bool = False,
        prefix: str = "ce",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis: Any = redis_client(
            url,
            timeout=timeout,
            max_connections=_MAX_CONNECTIONS,
            cluster=cluster,
            retry_after=retry_after,
        )
        self._take = self._redis.register_script(_TAKE)
        # The tier's breaker logic, with its own state: a failing bucket update does not
        # keep the cache from Redis, nor the other way round.
        self._guard = RedisGuard(retry_after, scoped=cluster, clock=clock)
        self._clock = clock
        self._prefix = prefix
        self.local = LocalBuckets(clock)
        self.fallbacks = 0  # decisions made by the local buckets (Redis unavailable)

    def _key(self, who: Principal) -> str:
        return f"{self._prefix}:{who.tenant}:rl:{who.key_id}"

    async def check(self, who: Principal, limit: RateLimit) -> None:
        """Take one token for ``who`` or raise RateLimited (with Retry-After)."""
        if limit.unlimited:
            return
        wait = await self._take_shared(who, limit)
        if wait is None:
            self.fallbacks += 1
            wait = self.local.take(self._key(who), limit)
        if wait > 0:
            raise RateLimited(
                f"rate limit of {limit.rate:g} requests/s (burst {limit.burst}) exceeded "
                "for this API key; retry later",
                retry_after=wait,
            )

    async def _take_shared(self, who: Principal, limit: RateLimit) -> float | None:
        """Seconds to wait (0: allowed) from the region's bucket; None if Redis is unusable."""
        try:
            with self._guard.request:
                allowed, wait_ms = await self._take(
                    keys=[self._key(who)], args=[repr(limit.rate), limit.burst, 1]
                )
        except TierUnavailable as exc:
            # On a cluster only a failed node's buckets fall back (its own breaker).
            if not exc.refused:
                log.warning("rate_limit_redis_unavailable", error=str(exc))
            return None
        return 0.0 if int(allowed) else max(int(wait_ms), 1) / 1000

    async def connect(self) -> bool:
        """Set the client up and load the script before the node serves; False if Redis
        cannot be reached now (then requests use the local buckets until it can).

        A cluster client set up lazily by the first burst of concurrent requests failed
        some of them, and each process then counted locally: a region let several times
        its burst through right after starting (issue 13, H)."""
        try:
            with self._guard.probe:
                await self._redis.initialize()
                await self._redis.script_load(_TAKE)
        except TierUnavailable as exc:
            log.warning("rate_limit_redis_unavailable", error=str(exc))
            return False
        return True

    async def close(self) -> None:
        await self._redis.aclose()
