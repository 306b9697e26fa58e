"""The tenant pool's bookkeeping with a fake asyncpg pool: bounded waits, no leaks, lazy start."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest

from cache_edge.common.errors import DatabaseUnavailable, PoolTimeout
from cache_edge.server.config import OriginConfig, Settings, TenantConfig
from origin.core.pool import OriginConnection, TenantPool, TenantPools, _reset_session

TENANT = TenantConfig("acme", (), "postgresql://app:hunter2@db.invalid/app", pool_max_size=2)


class FakePool:
    """Stands in for asyncpg.Pool: counts lends and returns, can fail to start."""

    def __init__(self, fail_start: bool = False, connect_delay: float = 0.0) -> None:
        self.fail_start = fail_start
        self.connect_delay = connect_delay
        self.lent = 0
        self.released = 0
        self.terminated = False
        self.kwargs: dict[str, Any] = {}

    def __await__(self) -> Any:
        return self._start().__await__()

    async def _start(self) -> FakePool:
        if self.fail_start:
            raise ConnectionRefusedError(111, "refused")
        return self

    async def acquire(self, timeout: float | None = None) -> object:
        async with asyncio.timeout(timeout):  # as asyncpg does
            await asyncio.sleep(self.connect_delay)
        self.lent += 1
        return object()

    async def release(self, conn: object, timeout: float) -> None:
        await asyncio.sleep(0)
        self.released += 1

    def get_size(self) -> int:
        return self.lent - self.released

    def get_idle_size(self) -> int:
        return 0

    def terminate(self) -> None:
        self.terminated = True

    async def close(self) -> None:
        self.terminated = True


def make(origin: OriginConfig, *pools: FakePool) -> TenantPool:
    queue = list(pools)

    def create(dsn: str, **kwargs: Any) -> FakePool:
        pool = queue.pop(0)
        pool.kwargs = {"dsn": dsn, **kwargs}
        return pool

    return TenantPool(TENANT, origin, create)


async def test_exhausted_pool_raises_pool_timeout_and_counts_waiters() -> None:
    fake = FakePool()
    pool = make(OriginConfig(pool_timeout=0.1), fake)
    async with pool.acquire(), pool.acquire():
        waiter = asyncio.create_task(_acquire_once(pool))
        await asyncio.sleep(0.02)
        assert pool.stats().waiting == 1
        assert pool.stats().in_use == 2
        with pytest.raises(PoolTimeout) as info:
            await waiter
    assert info.value.retry_after is not None and info.value.status == 503
    assert pool.stats().waiting == 0 and pool.stats().in_use == 0
    assert fake.lent == fake.released == 2


async def _acquire_once(pool: TenantPool) -> None:
    async with pool.acquire():
        pass


async def test_cancelled_holder_still_returns_its_connection() -> None:
    fake = FakePool()
    pool = make(OriginConfig(pool_timeout=0.5), fake)
    entered = asyncio.Event()

    async def hold() -> None:
        async with pool.acquire():
            entered.set()
            await asyncio.sleep(10)

    task = asyncio.create_task(hold())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.01)
    assert fake.released == 1
    # Both permits are free again: two more holders fit without waiting.
    async with pool.acquire(), pool.acquire():
        pass


async def test_failed_start_is_not_cached_and_pool_recovers() -> None:
    broken, healthy = FakePool(fail_start=True), FakePool()
    pool = make(OriginConfig(), broken, healthy)
    with pytest.raises(ConnectionRefusedError):
        await _acquire_once(pool)
    assert broken.terminated
    await _acquire_once(pool)
    assert healthy.lent == 1
    # The permit of the failed attempt came back too.
    async with pool.acquire(), pool.acquire():
        pass


async def test_slow_connect_is_database_unavailable_not_pool_timeout() -> None:
    pool = make(OriginConfig(connect_timeout=0.01), FakePool(connect_delay=5))
    with pytest.raises(DatabaseUnavailable):
        await _acquire_once(pool)
    assert pool.stats().in_use == 0


async def test_pool_settings_come_from_tenant_then_origin() -> None:
    fake = FakePool()
    pool = make(OriginConfig(pool_min_size=3, pool_max_size=10, statement_timeout=0.5), fake)
    await _acquire_once(pool)
    assert fake.kwargs["max_size"] == 2  # tenant override
    assert fake.kwargs["min_size"] == 2  # never above max
    assert fake.kwargs["server_settings"]["statement_timeout"] == "500"
    assert pool.stats().max_size == 2


async def test_ping_reports_failure_without_raising() -> None:
    settings = Settings("x" * 16, (TENANT,))
    pools = TenantPools(settings, lambda dsn, **kw: FakePool(fail_start=True))
    assert "acme" in pools and "other" not in pools
    assert await pools.ping("acme", timeout=0.5) is False
    await pools.close()


def test_a_reload_takes_changed_tenants_and_skips_unchanged_ones() -> None:
    other = TenantConfig("globex", (), "postgresql://app@db.invalid/g")
    settings = Settings("x" * 16, (TENANT, other))
    pools = TenantPools(settings, lambda dsn, **kw: FakePool())
    acme, globex = pools._pools["acme"], pools._pools["globex"]
    # What a reload hands over: unchanged tenants are the same objects (live_settings).
    changed = replace(TENANT, max_concurrency=3, database_url="postgresql://elsewhere/app")
    reloaded = replace(settings, tenants=(changed, other), origin=OriginConfig(max_concurrency=9))
    pools.update(reloaded)
    assert acme.max_concurrency == 3 and acme.tenant.max_concurrency == 3
    assert acme.tenant.database_url == TENANT.database_url  # a new URL needs a restart
    assert globex.tenant is other  # unchanged: not copied
    assert globex.max_concurrency == 9  # but the origin-wide default still applies
    pools.update(replace(reloaded, origin=OriginConfig(max_concurrency=4)))
    assert globex.max_concurrency == 4 and acme.max_concurrency == 3


class SessionConn:
    """What the pool's session handling sees of a connection."""

    def __init__(self, kept: bool = False, read_only: bool = False) -> None:
        self.session_kept = kept
        self.session_read_only = read_only
        self.ran: list[str] = []

    def get_reset_query(self) -> str:
        return "RESET ALL;"

    async def execute(self, sql: str, timeout: float | None = None) -> str:
        self.ran.append(sql)
        return sql

    def set_session_read_only(self, value: bool) -> None:
        self.session_read_only = value


async def test_release_skips_the_reset_only_for_a_session_the_executor_kept() -> None:
    kept = SessionConn(kept=True)
    await _reset_session(kept)
    assert kept.ran == [] and not kept.session_kept  # vouched for one request only
    await _reset_session(kept)
    assert kept.ran == ["RESET ALL;"]
    fake = FakePool()
    await _acquire_once(make(OriginConfig(), fake))
    assert fake.kwargs["reset"] is _reset_session
    assert fake.kwargs["connection_class"] is OriginConnection


async def test_a_read_only_session_is_switched_back_for_everyone_but_the_executor() -> None:
    conns = [SessionConn(read_only=True), SessionConn(read_only=True)]

    class Lending(FakePool):
        async def acquire(self, timeout: float | None = None) -> object:
            self.lent += 1
            return conns[self.lent - 1]

    pool = make(OriginConfig(), Lending())
    async with pool.acquire(read_only_session=True) as conn:
        assert conn is conns[0] and conns[0].ran == []
    async with pool.acquire() as conn:
        assert conn is conns[1]
        assert conns[1].ran == ["RESET default_transaction_read_only"]
        assert conns[1].session_read_only is False
