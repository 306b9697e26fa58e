"""The region's shared tier: entries and fill locks in Redis, behind a circuit breaker.

Redis is an accelerator, never a dependency of correctness or availability: any
Redis failure surfaces as TierUnavailable, and after one failure the tier stays
open-circuited for ``retry_after`` seconds so requests stop paying its timeout.
"""

from __future__ import annotations

import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

__all__ = ["RedisTier", "TierUnavailable"]

# Delete the lock only if we still own it (the token), so a slow holder whose
# lock expired cannot release a lock that another process has taken since.
_UNLOCK = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


class TierUnavailable(Exception):
    """The shared tier cannot be used right now (down, slow, or circuit open)."""


class RedisTier:
    def __init__(
        self,
        url: str,
        *,
        timeout: float,
        max_connections: int,
        retry_after: float,
        prefix: str = "ce",
    ) -> None:
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )
        self._redis = aioredis.Redis(connection_pool=pool)
        self._unlock = self._redis.register_script(_UNLOCK)
        self._retry_after = retry_after
        self._open_until = 0.0
        self._prefix = prefix
        self.failures = 0  # total Redis failures seen (for metrics)

    def entry_key(self, tenant: str, signature: str) -> str:
        return f"{self._prefix}:{tenant}:e:{signature}"

    def lock_key(self, tenant: str, signature: str) -> str:
        return f"{self._prefix}:{tenant}:l:{signature}"

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._open_until

    def _check(self) -> None:
        if not self.available:
            raise TierUnavailable("redis unavailable (recent failure; retrying shortly)")

    def _failed(self, exc: BaseException) -> TierUnavailable:
        self.failures += 1
        self._open_until = time.monotonic() + self._retry_after
        return TierUnavailable(f"redis error: {type(exc).__name__}: {exc}")

    async def get(self, key: str) -> bytes | None:
        self._check()
        try:
            value = await self._redis.get(key)
        except (TimeoutError, RedisError, OSError) as exc:
            raise self._failed(exc) from None
        return value if isinstance(value, bytes) else None

    async def set(self, key: str, value: bytes, ttl_seconds: int) -> None:
        self._check()
        try:
            await self._redis.set(key, value, ex=max(1, ttl_seconds))
        except (TimeoutError, RedisError, OSError) as exc:
            raise self._failed(exc) from None

    async def try_lock(self, key: str, token: str, ttl_ms: int) -> bool:
        self._check()
        try:
            return bool(await self._redis.set(key, token, nx=True, px=ttl_ms))
        except (TimeoutError, RedisError, OSError) as exc:
            raise self._failed(exc) from None

    async def unlock(self, key: str, token: str) -> None:
        try:
            await self._unlock(keys=[key], args=[token])
        except (TimeoutError, RedisError, OSError) as exc:
            # The lock expires by itself; failing to release it early only delays others.
            raise self._failed(exc) from None

    async def exists(self, key: str) -> bool:
        self._check()
        try:
            return bool(await self._redis.exists(key))
        except (TimeoutError, RedisError, OSError) as exc:
            raise self._failed(exc) from None

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except (TimeoutError, RedisError, OSError):
            return False

    async def close(self) -> None:
        await self._redis.aclose()
