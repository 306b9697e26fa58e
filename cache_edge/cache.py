"""The read path: cache key -> shared tier -> freshness rules -> origin, coalesced per region.

Coalescing has two floors. Inside a process, a single-flight group lets one
task fetch per key. Across the processes of a region, the fetching task first
takes a short Redis lock on the key; whoever loses waits for the winner's entry
to appear instead of calling the origin, so a stampede over many processes
still costs one origin execution. Stale-while-revalidate refreshes take the
same lock, which makes them one per key per region.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from cache_edge.config import NodeConfig
from cache_edge.entry import Entry, split_origin_result
from cache_edge.errors import (
    CacheEdgeError,
    DatabaseUnavailable,
    InternalError,
    OriginUnavailable,
    PoolTimeout,
    QueryTimeout,
)
from cache_edge.keys import cache_key
from cache_edge.logs import get_logger
from cache_edge.origin_client import OriginClient
from cache_edge.protocol import QueryRequest, Statement
from cache_edge.singleflight import Group
from cache_edge.strategy import CacheStrategy
from cache_edge.tiers.redis import RedisTier, TierUnavailable

__all__ = ["Answer", "QueryCache"]

log = get_logger(__name__)

# Origin failures after which a stale entry may stand in (staleIfError).
_STALE_OK = (OriginUnavailable, DatabaseUnavailable, PoolTimeout, QueryTimeout, InternalError)


@dataclass(slots=True)
class Answer:
    """What the node tells the client: the result core plus how it was obtained."""

    core: bytes
    status: str  # none | miss | ttl | swr | stale
    produced_at_ms: int
    signature: str | None = None
    error: str | None = None  # the origin error a stale answer stands in for
    cache_error: str | None = None  # why the shared tier was bypassed


@dataclass(slots=True)
class Stats:
    origin_calls: int = 0  # queries this process sent to the origin
    coalesced_local: int = 0  # misses that joined another task's fetch in this process
    coalesced_region: int = 0  # misses answered by another process's fetch
    refreshes: int = 0  # background swr refreshes started here
    refresh_failures: int = 0


class QueryCache:
    def __init__(
        self,
        config: NodeConfig,
        tier: RedisTier,
        origin: OriginClient,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._tier = tier
        self._origin = origin
        self._clock = clock
        self._flights: Group[Entry] = Group()
        self._background: set[asyncio.Task[None]] = set()
        self._lock_ttl_ms = int((config.origin_timeout + 2) * 1000)
        self.stats = Stats()

    async def query(self, tenant: str, req: QueryRequest, request_id: str) -> Answer:
        strategy = req.strategy
        if not strategy.cached:
            result = await self._origin.query(
                tenant, req.statement, read_only=False, request_id=request_id
            )
            self.stats.origin_calls += 1
            core, meta = split_origin_result(result.body)
            return Answer(core, "none", int(meta.get("producedAt", 0)))

        stmt = req.statement
        sig = cache_key(tenant, stmt.sql, stmt.params, strategy.ttl, strategy.swr, strategy.tags)
        key = self._tier.entry_key(tenant, sig)
        cache_error: str | None = None
        entry: Entry | None = None
        try:
            raw = await self._tier.get(key)
            entry = Entry.decode(raw) if raw is not None else None
        except TierUnavailable as exc:
            cache_error = "redis_unavailable"
            log.warning("cache_tier_unavailable", error=str(exc), request_id=request_id)

        now = self._clock()
        if entry is not None:
            age = entry.age(now)
            if age < strategy.ttl:
                return Answer(entry.core, "ttl", entry.produced_at_ms, sig)
            if age < strategy.ttl + strategy.swr:
                self._refresh_in_background(tenant, sig, stmt, strategy, request_id)
                return Answer(entry.core, "swr", entry.produced_at_ms, sig)

        try:
            fresh = await self._fill(tenant, sig, stmt, strategy, entry, request_id)
        except _STALE_OK as exc:
            if entry is not None and entry.age(self._clock()) < strategy.retention:
                log.warning("serving_stale_on_error", code=exc.code, request_id=request_id)
                return Answer(entry.core, "stale", entry.produced_at_ms, sig, error=exc.code)
            raise
        return Answer(fresh.core, "miss", fresh.produced_at_ms, sig, cache_error=cache_error)

    # ------------------------------------------------------------------ fills

    async def _fill(
        self,
        tenant: str,
        sig: str,
        stmt: Statement,
        strategy: CacheStrategy,
        seen: Entry | None,
        request_id: str,
    ) -> Entry:
        async def run() -> Entry:
            return await self._fill_region(tenant, sig, stmt, strategy, seen, request_id)

        entry, shared = await self._flights.do((tenant, sig), run)
        if shared:
            self.stats.coalesced_local += 1
        return entry

    async def _fill_region(
        self,
        tenant: str,
        sig: str,
        stmt: Statement,
        strategy: CacheStrategy,
        seen: Entry | None,
        request_id: str,
    ) -> Entry:
        """Fetch once per region: take the key's lock, or wait for its holder's entry."""
        lock_key = self._tier.lock_key(tenant, sig)
        entry_key = self._tier.entry_key(tenant, sig)
        token = secrets.token_hex(8)
        deadline = time.monotonic() + self._config.coalesce_wait
        delay = 0.005
        while True:
            try:
                locked = await self._tier.try_lock(lock_key, token, self._lock_ttl_ms)
            except TierUnavailable:
                # No shared tier: coalescing stays per process; correctness is unaffected.
                return await self._fetch_and_store(tenant, sig, stmt, strategy, request_id)
            if locked:
                try:
                    return await self._fetch_and_store(tenant, sig, stmt, strategy, request_id)
                finally:
                    await self._release(lock_key, token)
            # Another process of the region is fetching this key: wait for its entry.
            while time.monotonic() < deadline:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.05)
                try:
                    raw = await self._tier.get(entry_key)
                    if raw is not None:
                        got = Entry.decode(raw)
                        if got is not None and (
                            seen is None or got.produced_at_ms > seen.produced_at_ms
                        ):
                            self.stats.coalesced_region += 1
                            return got
                    if not await self._tier.exists(lock_key):
                        break  # the holder finished without an entry (error): try ourselves
                except TierUnavailable:
                    return await self._fetch_and_store(tenant, sig, stmt, strategy, request_id)
            else:
                # Waited long enough; a hung holder must not hang us.
                return await self._fetch_and_store(tenant, sig, stmt, strategy, request_id)

    async def _fetch_and_store(
        self, tenant: str, sig: str, stmt: Statement, strategy: CacheStrategy, request_id: str
    ) -> Entry:
        result = await self._origin.query(tenant, stmt, read_only=True, request_id=request_id)
        self.stats.origin_calls += 1
        core, meta = split_origin_result(result.body)
        entry = Entry(int(meta.get("producedAt", 0)), core, int(meta.get("watermark", 0)))
        try:
            await self._tier.set(
                self._tier.entry_key(tenant, sig), entry.encode(), strategy.retention
            )
        except TierUnavailable as exc:
            log.warning("cache_store_failed", error=str(exc), request_id=request_id)
        return entry

    async def _release(self, lock_key: str, token: str) -> None:
        with contextlib.suppress(TierUnavailable):  # it expires on its own
            await self._tier.unlock(lock_key, token)

    # ------------------------------------------------------------ background

    def _refresh_in_background(
        self, tenant: str, sig: str, stmt: Statement, strategy: CacheStrategy, request_id: str
    ) -> None:
        if self._flights.running((tenant, sig)):
            return  # this process is already fetching the key
        task = asyncio.create_task(self._refresh(tenant, sig, stmt, strategy, request_id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _refresh(
        self, tenant: str, sig: str, stmt: Statement, strategy: CacheStrategy, request_id: str
    ) -> None:
        lock_key = self._tier.lock_key(tenant, sig)
        token = secrets.token_hex(8)
        try:
            if not await self._tier.try_lock(lock_key, token, self._lock_ttl_ms):
                return  # another request or process of the region is refreshing it
        except TierUnavailable:
            return  # without the lock we cannot promise one refresh per region; skip
        self.stats.refreshes += 1

        async def run() -> Entry:
            return await self._fetch_and_store(tenant, sig, stmt, strategy, request_id)

        try:
            await self._flights.do((tenant, sig), run)
        except CacheEdgeError as exc:
            self.stats.refresh_failures += 1
            log.warning("swr_refresh_failed", code=exc.code, request_id=request_id)
        except Exception:
            self.stats.refresh_failures += 1
            log.exception("swr_refresh_crashed", request_id=request_id)
        finally:
            await self._release(lock_key, token)

    async def drain(self, timeout: float = 5.0) -> None:
        """Let background refreshes finish (graceful shutdown)."""
        if self._background:
            await asyncio.wait(list(self._background), timeout=timeout)
