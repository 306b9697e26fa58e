"""Fairness parts without a network: the fair share of origin slots, local buckets, pool caps."""

from __future__ import annotations

import asyncio

import pytest

from cache_edge.common.errors import PoolTimeout
from cache_edge.common.fairshare import FairShare
from cache_edge.node.ratelimit import LocalBuckets
from cache_edge.server.config import OriginConfig, RateLimit, TenantConfig
from origin.core.pool import TenantPool
from tests.unit.origin.test_pool import FakePool

pytestmark = pytest.mark.security


async def test_a_newcomer_is_served_at_once_while_another_key_floods() -> None:
    share = FairShare(10)  # one slot in ten stays free of the busiest key
    release = asyncio.Event()

    async def hold(key: str) -> None:
        async with share.slot(key):
            await release.wait()

    flood = [asyncio.create_task(hold("A")) for _ in range(50)]
    await asyncio.sleep(0)
    assert share.held("A") == 9 and share.waiting() == 41
    async with asyncio.timeout(0.1), share.slot("B"):
        assert share.held("B") == 1
    release.set()
    await asyncio.gather(*flood)
    assert share.held("A") == 0 and share.waiting() == 0


async def test_freed_slots_go_to_the_key_holding_fewest() -> None:
    share = FairShare(2, reserve=0)
    order: list[str] = []
    gate = asyncio.Event()

    async def use(key: str) -> None:
        async with share.slot(key):
            order.append(key)
            await gate.wait()

    tasks = [asyncio.create_task(use(k)) for k in ("A", "A", "A", "A", "B")]
    await asyncio.sleep(0)
    assert order == ["A", "A"]
    gate.set()
    await asyncio.gather(*tasks)
    assert order.index("B") == 2  # B went before A's queued third and fourth


async def test_cancelled_waiters_leave_no_trace_and_pass_slots_on() -> None:
    share = FairShare(1, reserve=0)
    gate = asyncio.Event()

    async def use(key: str) -> None:
        async with share.slot(key):
            await gate.wait()

    first = asyncio.create_task(use("A"))
    waiting = [asyncio.create_task(use(k)) for k in ("B", "C")]
    await asyncio.sleep(0)
    waiting[0].cancel()
    await asyncio.sleep(0)
    assert share.waiting() == 1
    gate.set()
    await first
    await waiting[1]
    with pytest.raises(asyncio.CancelledError):
        await waiting[0]
    assert share.held("A") == share.held("B") == share.held("C") == 0
    async with asyncio.timeout(0.1), share.slot("D"):
        pass


def test_local_bucket_refills_at_the_rate() -> None:
    now = [0.0]
    buckets = LocalBuckets(clock=lambda: now[0])
    limit = RateLimit(2.0, 3)
    assert [buckets.take("k", limit) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("k", limit) == pytest.approx(0.5)
    assert buckets.take("other", limit) == 0.0
    now[0] = 0.5
    assert buckets.take("k", limit) == 0.0
    now[0] = 100.0
    assert [buckets.take("k", limit) for _ in range(4)][-1] > 0  # never beyond burst


async def test_pool_refuses_beyond_max_concurrency_at_once() -> None:
    tenant = TenantConfig("acme", (), "postgresql://h/a", pool_max_size=1, max_concurrency=2)
    pool = TenantPool(tenant, OriginConfig(pool_timeout=5.0), lambda dsn, **kw: FakePool())
    gate = asyncio.Event()

    async def use() -> None:
        async with pool.acquire():
            await gate.wait()

    holder, waiter = asyncio.create_task(use()), asyncio.create_task(use())
    await asyncio.sleep(0.01)
    async with asyncio.timeout(0.5):  # at once, not after pool_timeout
        with pytest.raises(PoolTimeout, match="max_concurrency"):
            await use()
    pool.configure(tenant, 3)  # a reload raises the cap
    third = asyncio.create_task(use())
    await asyncio.sleep(0.01)
    assert pool.stats().waiting == 2
    gate.set()
    await asyncio.gather(holder, waiter, third)
    assert pool.stats().in_use == 0
