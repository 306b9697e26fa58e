"""The read path under Redis faults, against a real Redis with a scripted origin.

The origin is scripted (not a real origin process) because these defects need a
fetch held in flight at an exact moment: a purge applied, a Redis connection lost
or a lock taken *while* a given request waits. Redis is real, and its faults are
real too (the server is killed, or its state flushed), except where one command
must fail at one precise point, which a subclass of the real tier injects (said
where it happens). The same stories run end to end in test_freshness_faults.py.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from cache_edge.common.errors import OriginUnavailable
from cache_edge.common.protocol import QueryRequest, Statement
from cache_edge.common.strategy import CacheStrategy
from cache_edge.node.applier import Applier
from cache_edge.node.read_path import QueryCache
from cache_edge.node.tiers.redis import RedisTier, TierUnavailable
from cache_edge.server.config import NodeConfig
from tests.integration.conftest import PrivateRedis
from tests.unit.node import fakes

TENANT = "acme"
SQL = "SELECT v FROM t WHERE k = $1"


@dataclass
class ScriptedOrigin(fakes.ScriptedOrigin):
    """The unit tests' scripted origin with a purge log the real applier long-polls.

    ``latest`` is the purge log's last seq; answers carry it as their watermark, as
    the real origin does (the last purge committed before the rows were produced).
    """

    clock: Callable[[], float] = time.time
    purges: list[dict[str, Any]] = field(default_factory=list)
    epoch: str = "e1"
    poll_gate: asyncio.Event | None = None
    polling: asyncio.Event = field(default_factory=asyncio.Event)

    def purge(self, tags: list[str] | None = None, all_: bool = False) -> int:
        seq = super().purge()
        self.purges.append({"seq": seq, "tags": tags or [], "all": all_})
        return seq

    async def poll_invalidations(
        self,
        tenant: str,
        region: str,
        after: int,
        wait: float,
        lease: float,
        *,
        epoch: str | None = None,
    ) -> dict[str, Any]:
        if self.error is not None:
            raise self.error
        if self.poll_gate is not None:  # a long poll, answered when the test says so
            self.polling.set()
            await self.poll_gate.wait()
        items = [p for p in self.purges if p["seq"] > after]
        oldest = self.purges[0]["seq"] if self.purges else self.latest + 1
        return {"latest": self.latest, "oldest": oldest, "items": items, "epoch": self.epoch}


@pytest.fixture
def redis_server(private_redis: Callable[..., PrivateRedis]) -> str:
    """A private redis-server this test may flush, kill and restart."""
    return private_redis().url


CONFIG = NodeConfig(region="r1", sync_grace=2.0, coalesce_wait=5.0, memory_cache_mb=0)


def _tier(url: str, cls: type[RedisTier] = RedisTier) -> RedisTier:
    return cls(url, timeout=0.5, max_connections=20, retry_after=1.0)


@dataclass
class World:
    tier: RedisTier
    origin: ScriptedOrigin
    cache: QueryCache
    applier: Applier

    async def step(self) -> None:
        """One applier round: what the region knows after the next poll."""
        await self.applier._step(TENANT, 0.0)

    async def read(self, key: str = "k1", **strategy: Any) -> Any:
        strat = {"ttl": 60, "tags": ["t1"], **strategy}
        req = QueryRequest(Statement(SQL, [key]), CacheStrategy.from_wire(strat))
        return await self.cache.query(TENANT, req, "req")


async def _world(url: str, cls: type[RedisTier] = RedisTier) -> World:
    tier = _tier(url, cls)
    origin = ScriptedOrigin()
    cache = QueryCache(CONFIG, tier, origin)  # type: ignore[arg-type]
    applier = Applier("r1", [TENANT], tier, origin, sync_grace=2.0)  # type: ignore[arg-type]
    world = World(tier, origin, cache, applier)
    await world.step()  # first sync: the region can vouch for what it stores
    return world


@pytest.fixture
async def world(redis_server: str) -> AsyncIterator[World]:
    w = await _world(redis_server)
    yield w
    await w.tier.close()


def rows(answer: Any) -> Any:
    from cache_edge.node.entry import core_to_dict

    return core_to_dict(answer.core)["rows"]


async def test_stale_if_error_never_serves_what_a_purge_voided(world: World) -> None:
    """Defect A: the sync lease lapsed (origin gone), a purge applied before: no stale."""
    first = await world.read(ttl=1, staleIfError=300)
    assert first.status == "miss" and rows(first) == [[1]]
    world.origin.value = 2
    world.origin.purge(["t1"])
    await world.step()  # applied in this region
    world.origin.go_down()
    await world.tier._redis.delete(world.tier.keys.sync(TENANT, 0))  # the lease lapsed
    await asyncio.sleep(1.1)  # past ttl
    with pytest.raises(OriginUnavailable):
        await world.read(ttl=1, staleIfError=300)


async def test_stale_if_error_never_serves_what_purge_all_voided(world: World) -> None:
    await world.read(ttl=1, staleIfError=300)
    world.origin.purge(all_=True)
    await world.step()
    world.origin.go_down()
    await world.tier._redis.delete(world.tier.keys.sync(TENANT, 0))
    await asyncio.sleep(1.1)
    with pytest.raises(OriginUnavailable):
        await world.read(ttl=1, staleIfError=300)


async def test_stale_if_error_still_stands_in_when_no_purge_voided_it(world: World) -> None:
    """The control: with the lease lapsed but no purge of its tags, stale is served."""
    await world.read(ttl=1, staleIfError=300)
    world.origin.purge(["another_tag"])
    await world.step()
    world.origin.go_down()
    await world.tier._redis.delete(world.tier.keys.sync(TENANT, 0))
    await asyncio.sleep(1.1)
    stale = await world.read(ttl=1, staleIfError=300)
    assert stale.status == "stale" and rows(stale) == [[1]]
    assert stale.error == "origin_unavailable"


async def test_flush_during_a_miss_is_detected_and_nothing_old_is_stored(
    world: World, redis_server: str
) -> None:
    """Defect B: a miss in flight; a purge applied; FLUSHALL while the applier is in its
    long poll; the miss completes. Nothing may then serve the pre-purge rows."""
    gate = asyncio.Event()
    world.origin.gates.append(gate)
    in_flight = asyncio.create_task(world.read())
    await asyncio.sleep(0.05)  # the miss has read value 1 at watermark 0
    world.origin.value = 2
    world.origin.purge(["t1"])
    await world.step()  # applied here
    world.origin.poll_gate = asyncio.Event()
    polling = asyncio.create_task(world.step())  # reads progress, then long-polls
    await world.origin.polling.wait()
    admin = aioredis.Redis.from_url(redis_server)
    await admin.flushall()
    world.origin.poll_gate.set()
    await polling  # must notice the loss, not recreate the state
    gate.set()
    await in_flight
    for _ in range(3):
        again = await world.read()
        assert rows(again) == [[2]], f"pre-purge rows served as {again.status}"
    await admin.aclose()
    assert world.applier.resyncs == 2  # the first sync, and this one


async def test_flush_between_progress_read_and_apply_is_detected(
    world: World, redis_server: str
) -> None:
    """The applier read progress, then long-polled; the flush came during the poll."""
    admin = aioredis.Redis.from_url(redis_server)
    seen = await world.tier.progress(TENANT)
    assert seen.intact
    await admin.flushall()
    from cache_edge.node.tiers.redis import StateLost

    with pytest.raises(StateLost) as lost:
        await world.tier.apply(TENANT, seen, {"t1": 1}, 1, 1, 2.0)
    assert lost.value.lost
    assert await admin.get(world.tier.keys.sync(TENANT, 0)) is None, "state was recreated"
    assert await admin.get(world.tier.keys.applied(TENANT)) is None
    await admin.aclose()


class _FailsUnderLock(RedisTier):
    """Injected fault: Redis fails on the first command after the fill lock is taken
    (the store, with its purge state check).

    Killing connections from outside hits this point only by chance (the chaos run
    found it 3 times in 15 s); the test needs it every time."""

    armed = False

    async def lookup(
        self, tenant: str, signature: str, tags: tuple[str, ...], lock: Any = None
    ) -> Any:
        got = await super().lookup(tenant, signature, tags, lock)
        self.armed = self.armed or got.locked
        return got

    async def store(self, *args: Any, **kwargs: Any) -> Any:
        if self.armed:
            self.armed = False
            raise TierUnavailable("redis error: injected under the fill lock")
        return await super().store(*args, **kwargs)


async def test_redis_failing_under_the_fill_lock_falls_back_to_the_origin(
    redis_server: str,
) -> None:
    """Defect C: this was a 500 internal."""
    world = await _world(redis_server, _FailsUnderLock)
    try:
        answer = await world.read()
        assert answer.status == "miss" and rows(answer) == [[1]]
        assert world.origin.calls == 1
    finally:
        await world.tier.close()


async def test_unchecked_rows_never_reach_a_request_that_arrived_later(
    world: World, redis_server: str
) -> None:
    """Defect D: A's fetch is in flight; a purge is applied; B arrives; Redis dies.

    A may get its own (pre-purge) rows: it was waiting before the purge. B must not:
    it gets rows from a fetch that began after it arrived."""
    gate = asyncio.Event()
    world.origin.gates.append(gate)
    a = asyncio.create_task(world.read())
    await asyncio.sleep(0.05)
    world.origin.value = 2
    world.origin.purge(["t1"])
    await world.step()
    b = asyncio.create_task(world.read())
    await asyncio.sleep(0.05)
    admin = aioredis.Redis.from_url(redis_server)
    await admin.shutdown(nosave=True)  # Redis dies for real: nothing can be checked
    await admin.aclose()
    gate.set()
    got_a, got_b = await a, await b
    assert rows(got_a) == [[1]]
    assert rows(got_b) == [[2]], "B was handed rows older than a purge applied before it"
    assert got_b.cache_error == "redis_unavailable"
    assert world.origin.calls == 2


async def test_coalescing_survives_redis_dying_mid_fetch(world: World, redis_server: str) -> None:
    """Coalescing survives Redis being down: requests waiting on one fetch share it."""
    admin = aioredis.Redis.from_url(redis_server)
    gate = asyncio.Event()
    world.origin.gates.append(gate)
    tasks = [asyncio.create_task(world.read()) for _ in range(20)]
    for _ in range(200):  # until all 20 wait on the one fetch
        if world.cache._flights.deduplicated == 19:
            break
        await asyncio.sleep(0.01)
    await admin.shutdown(nosave=True)
    await admin.aclose()
    gate.set()
    answers = await asyncio.gather(*tasks)
    assert all(rows(x) == [[1]] for x in answers)
    # Those waiting when the fetch began share it; those that joined after it began
    # (their Redis lookup took longer) share one second fetch, never one each.
    assert world.origin.calls <= 2


async def test_a_log_behind_the_region_means_resync(world: World) -> None:
    """A database restored in place (same epoch): the log's latest is below ``applied``."""
    await world.read()
    for _ in range(3):
        world.origin.purge(["t1"])
    await world.step()
    world.origin.purges.clear()
    world.origin.latest = 1  # restored from a point in time after the first purge only
    world.origin.value = 3
    await world.step()
    assert world.applier.resyncs == 2
    progress = await world.tier.progress(TENANT)
    assert progress.applied == 1 and progress.floor == 1
    assert rows(await world.read()) == [[3]]


async def test_a_hot_tag_that_overtakes_every_fetch_still_gets_an_answer(world: World) -> None:
    """Issue 13 K: each fetch is overtaken by a purge of its tag; after three tries the
    requester gets the last rows (produced after it arrived), unstored, not a 502."""

    async def purge_meanwhile() -> None:
        world.origin.purge(["t1"])
        await world.step()

    world.origin.during_query = purge_meanwhile
    answer = await world.read()
    assert answer.status == "miss" and rows(answer) == [[1]]
    assert world.origin.calls == 3
    world.origin.during_query = None
    assert (await world.read()).status == "miss", "rows that failed the check were stored"


_HOLDER = """
import asyncio, sys
from tests.integration.test_read_path_faults import _world
async def main():
    world = await _world(sys.argv[1])
    world.origin.gates.append(asyncio.Event())  # the fetch never finishes
    task = asyncio.create_task(world.read())
    await asyncio.sleep(0.5)
    print("fetching", flush=True)
    await task
asyncio.run(main())
"""


async def test_a_dead_holders_fill_lock_delays_the_region_by_seconds_not_a_timeout(
    world: World, redis_server: str
) -> None:
    """Issue 13 L: a process killed (-9) while fetching leaves its fill lock. Waiters
    take over once its lease runs out (nobody renews it), not after coalesce_wait (30 s
    here); before, the lock lived origin_timeout + 2 s and the region waited it out."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, redis_server],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[2],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    try:
        assert holder.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(holder.stdout.readline), 20)
        assert line.strip() == "fetching"
    finally:
        holder.kill()
        holder.wait()
    cache = QueryCache(
        NodeConfig(region="r1", sync_grace=2.0, coalesce_wait=30.0, memory_cache_mb=0),
        world.tier,
        world.origin,  # type: ignore[arg-type]
    )
    req = QueryRequest(Statement(SQL, ["k1"]), CacheStrategy.from_wire({"ttl": 60, "tags": ["t1"]}))
    assert await world.tier._redis.exists(world.tier.lock_key(TENANT, _signature(req)))
    began = time.monotonic()
    reading = asyncio.create_task(cache.query(TENANT, req, "req"))
    while not reading.done():  # the region stays in sync meanwhile
        await asyncio.sleep(0.5)
        await world.step()
    assert rows(await reading) == [[1]]
    assert time.monotonic() - began < 6.0


async def test_a_live_holder_keeps_its_fill_lock_past_the_lease(
    world: World, redis_server: str
) -> None:
    """The other side of L: a fetch slower than the lease keeps renewing its lock, so
    another process of the region waits for its entry instead of fetching too."""
    other = await _world(redis_server)  # a second process of the same region
    gate = asyncio.Event()
    world.origin.gates.append(gate)
    first = asyncio.create_task(world.read())
    await asyncio.sleep(0.1)
    second = asyncio.create_task(other.read())
    for _ in range(9):  # past the 3 s lease; the region stays in sync meanwhile
        await asyncio.sleep(0.5)
        await world.step()
    gate.set()
    a, b = await first, await second
    assert rows(a) == rows(b) == [[1]]
    assert world.origin.calls == 1 and other.origin.calls == 0
    await other.tier.close()


def _signature(req: QueryRequest) -> str:
    from cache_edge.common.keys import cache_key

    st, stmt = req.strategy, req.statement
    return cache_key(TENANT, stmt.sql, stmt.params, st.ttl, st.swr, st.tags)
