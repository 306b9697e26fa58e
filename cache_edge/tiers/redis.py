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
_LEAD = """
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('get', KEYS[1]) == ARGV[1] then
  redis.call('pexpire', KEYS[1], ARGV[2]) return 1
end
return 0
"""
_UNLOCK = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


_ERRORS = (RedisError, OSError, TimeoutError)


def _as_bytes(values: list[bytes | str | None]) -> list[bytes | None]:
    return [v.encode() if isinstance(v, str) else v for v in values]


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
        self._lead = self._redis.register_script(_LEAD)
        self._retry_after = retry_after
        self._open_until = 0.0
        self._prefix = prefix
        self.failures = 0  # total Redis failures seen (for metrics)

    # Invalidation state of a tenant in this region (see cache_edge.invalidation).
    def sync_key(self, tenant: str) -> str:
        return f"{self._prefix}:{tenant}:sync"

    def tag_key(self, tenant: str, tag: str) -> str:
        return f"{self._prefix}:{tenant}:tag:{tag}"

    def _progress_keys(self, tenant: str) -> tuple[str, str]:
        return f"{self._prefix}:{tenant}:applied", f"{self._prefix}:{tenant}:floor"

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

    async def lookup(
        self, tenant: str, signature: str, tags: tuple[str, ...]
    ) -> tuple[bytes | None, list[bytes | None]]:
        """One round trip: the entry and the invalidation state it must be checked against
        (the sync floor, then one version per tag)."""
        self._check()
        keys = [self.entry_key(tenant, signature), self.sync_key(tenant)]
        keys += [self.tag_key(tenant, t) for t in tags]
        try:
            values = await self._redis.mget(keys)
        except _ERRORS as exc:
            raise self._failed(exc) from None
        got = _as_bytes(values)
        return got[0], got[1:]

    async def state(self, tenant: str, tags: tuple[str, ...]) -> list[bytes | None]:
        """The sync floor and tag versions alone (checking a fresh fetch)."""
        self._check()
        keys = [self.sync_key(tenant)] + [self.tag_key(tenant, t) for t in tags]
        try:
            return _as_bytes(await self._redis.mget(keys))
        except _ERRORS as exc:
            raise self._failed(exc) from None

    async def progress(self, tenant: str) -> tuple[int | None, int]:
        """(last applied purge seq or None if unknown, durable floor)."""
        applied_key, floor_key = self._progress_keys(tenant)
        try:
            applied, floor = await self._redis.mget([applied_key, floor_key])
        except _ERRORS as exc:
            raise self._failed(exc) from None
        return (int(applied) if applied is not None else None, int(floor or 0))

    async def apply(
        self,
        tenant: str,
        tag_versions: dict[str, int],
        applied: int,
        floor: int,
        sync_ttl: float,
    ) -> None:
        """Record purges atomically: tag versions, progress, floor, and the sync lease."""
        applied_key, floor_key = self._progress_keys(tenant)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                for tag, seq in tag_versions.items():
                    pipe.set(self.tag_key(tenant, tag), seq)
                pipe.set(applied_key, applied)
                pipe.set(floor_key, floor)
                pipe.set(self.sync_key(tenant), floor, px=int(sync_ttl * 1000))
                await pipe.execute()
        except _ERRORS as exc:
            raise self._failed(exc) from None

    async def lead(self, key: str, token: str, ttl_ms: int) -> bool:
        """Take or keep a leadership lease (SET NX, or extend if we already hold it)."""
        try:
            return bool(await self._lead(keys=[key], args=[token, ttl_ms]))
        except _ERRORS as exc:
            raise self._failed(exc) from None

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
