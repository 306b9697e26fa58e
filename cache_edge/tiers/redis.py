"""The region's shared tier: entries and fill locks in Redis, behind a circuit breaker.

Redis is an accelerator, never a dependency of correctness or availability: any
Redis failure surfaces as TierUnavailable, and after one failure the tier stays
open-circuited for ``retry_after`` seconds so requests stop paying its timeout.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis

from cache_edge.tiers.layout import CLUSTER_SHARDS, Layout

__all__ = ["REDIS_ERRORS", "RedisTier", "TierUnavailable", "redis_client"]

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


# Every failure of the Redis client counts as Redis being unavailable: besides RedisError,
# OSError and timeouts, redis-py's cluster client has raised AttributeError while a
# connection was being (re)established concurrently. Falling back is always safe here.
REDIS_ERRORS: tuple[type[BaseException], ...] = (Exception,)


def _as_bytes(values: list[bytes | str | None]) -> list[bytes | None]:
    return [v.encode() if isinstance(v, str) else v for v in values]


def redis_client(url: str, *, timeout: float, max_connections: int, cluster: bool) -> Any:
    """A region's Redis client: standalone with a bounded, blocking pool, or Redis Cluster."""
    if cluster:
        from redis.asyncio.cluster import RedisCluster

        return RedisCluster.from_url(
            url,
            max_connections=max_connections,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
    )
    return aioredis.Redis(connection_pool=pool)


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
        cluster: bool = False,
        layout: Layout | None = None,
    ) -> None:
        self._redis = redis_client(
            url, timeout=timeout, max_connections=max_connections, cluster=cluster
        )
        self.keys = layout or Layout(CLUSTER_SHARDS if cluster else 1)
        self._unlock = self._redis.register_script(_UNLOCK)
        self._lead = self._redis.register_script(_LEAD)
        self._retry_after = retry_after
        self._open_until = 0.0
        self.failures = 0  # total Redis failures seen (for metrics)

    def entry_key(self, tenant: str, signature: str) -> str:
        return self.keys.entry(tenant, signature)

    def lock_key(self, tenant: str, signature: str) -> str:
        return self.keys.lock(tenant, signature)

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
        except REDIS_ERRORS as exc:
            raise self._failed(exc) from None
        return value if isinstance(value, bytes) else None

    async def lookup(
        self, tenant: str, signature: str, tags: tuple[str, ...]
    ) -> tuple[bytes | None, list[bytes | None]]:
        """One round trip: the entry and the invalidation state it must be checked against
        (the sync floor, then one version per tag), all in the entry's hash slot."""
        self._check()
        keys = [self.keys.entry(tenant, signature), *self.keys.state_keys(tenant, signature, tags)]
        try:
            values = await self._redis.mget(keys)
        except REDIS_ERRORS as exc:
            raise self._failed(exc) from None
        got = _as_bytes(values)
        return got[0], got[1:]

    async def state(self, tenant: str, signature: str, tags: tuple[str, ...]) -> list[bytes | None]:
        """The sync floor and tag versions alone (checking a fresh fetch)."""
        self._check()
        try:
            return _as_bytes(await self._redis.mget(self.keys.state_keys(tenant, signature, tags)))
        except REDIS_ERRORS as exc:
            raise self._failed(exc) from None

    async def progress(self, tenant: str) -> tuple[int | None, int]:
        """(last applied purge seq or None if unknown, durable floor)."""
        try:
            applied, floor = await self._redis.mget(
                [self.keys.applied(tenant), self.keys.floor(tenant)]
            )
        except REDIS_ERRORS as exc:
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
        """Record purges in every shard: tag versions first, then progress, then the sync
        leases. No MULTI (shards are different slots): the order makes a crash midway
        safe, since ``applied`` only moves after the tags and a lease only after both."""
        shards = range(self.keys.shards)
        lease_ms = int(sync_ttl * 1000)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for shard in shards:
                    for tag, seq in tag_versions.items():
                        pipe.set(self.keys.tag(tenant, shard, tag), seq)
                await pipe.execute()
            await self._redis.set(self.keys.floor(tenant), floor)
            await self._redis.set(self.keys.applied(tenant), applied)
            async with self._redis.pipeline(transaction=False) as pipe:
                for shard in shards:
                    pipe.set(self.keys.sync(tenant, shard), floor, px=lease_ms)
                await pipe.execute()
        except REDIS_ERRORS as exc:
            raise self._failed(exc) from None

    # ------------------------------------------------- the region's purge feed

    async def publish_purges(self, region: str, message: bytes) -> None:
        try:
            await self._redis.publish(self.keys.purge_channel(region), message)
        except REDIS_ERRORS as exc:
            raise self._failed(exc) from None

    async def purge_messages(self, region: str) -> AsyncIterator[bytes]:
        """Messages on the region's purge channel, in order, until the connection fails."""
        pubsub = self._redis.pubsub()
        try:
            await pubsub.subscribe(self.keys.purge_channel(region))
            async for message in pubsub.listen():
                if message.get("type") == "message":
                    yield message["data"]
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def ack_purges(self, region: str, member: str, seq: int, lease: float) -> None:
        """Record that ``member`` applied purges up to ``seq``; the ack expires with it."""
        expires_ms = int((time.time() + 3 * lease) * 1000)
        try:
            await self._redis.hset(self.keys.members(region), member, f"{seq}:{expires_ms}")
        except REDIS_ERRORS as exc:
            raise self._failed(exc) from None

    async def purge_acks(self, region: str, tenant: str) -> list[int]:
        """Applied seqs of the region's live processes for ``tenant``."""
        try:
            raw = await self._redis.hgetall(self.keys.members(region))
        except REDIS_ERRORS as exc:
            raise self._failed(exc) from None
        now_ms = time.time() * 1000
        out: list[int] = []
        dead: list[bytes] = []
        suffix = f":{tenant}".encode()
        for member, value in raw.items():
            seq, _, expires = value.decode().partition(":")
            if float(expires) <= now_ms:
                dead.append(member)  # a process that stopped acking (exited or cut off)
            elif member.endswith(suffix):
                out.append(int(seq))
        if dead:
            with contextlib.suppress(*REDIS_ERRORS):
                await self._redis.hdel(self.keys.members(region), *dead)
        return out

    async def lead(self, key: str, token: str, ttl_ms: int) -> bool:
        """Take or keep a leadership lease (SET NX, or extend if we already hold it)."""
        try:
            return bool(await self._lead(keys=[key], args=[token, ttl_ms]))
        except REDIS_ERRORS as exc:
            raise self._failed(exc) from None

    async def set(self, key: str, value: bytes, ttl_seconds: int) -> None:
        self._check()
        try:
            await self._redis.set(key, value, ex=max(1, ttl_seconds))
        except REDIS_ERRORS as exc:
            raise self._failed(exc) from None

    async def try_lock(self, key: str, token: str, ttl_ms: int) -> bool:
        self._check()
        try:
            return bool(await self._redis.set(key, token, nx=True, px=ttl_ms))
        except REDIS_ERRORS as exc:
            raise self._failed(exc) from None

    async def unlock(self, key: str, token: str) -> None:
        try:
            await self._unlock(keys=[key], args=[token])
        except REDIS_ERRORS as exc:
            # The lock expires by itself; failing to release it early only delays others.
            raise self._failed(exc) from None

    async def exists(self, key: str) -> bool:
        self._check()
        try:
            return bool(await self._redis.exists(key))
        except REDIS_ERRORS as exc:
            raise self._failed(exc) from None

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except REDIS_ERRORS:
            return False

    async def close(self) -> None:
        await self._redis.aclose()
