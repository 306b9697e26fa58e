"""The read path's rules against in-memory fakes: no network, milliseconds per test.

Each story here also runs against real Redis and processes in tests/integration
(test_read_path_faults.py, test_invalidation.py); these pin the rules themselves:
ttl and swr, staleIfError, purges racing a fetch, coalescing, the hot tier's lease,
and Redis failing in the middle of a request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from cache_edge.common.errors import OriginUnavailable, QueryError
from cache_edge.common.protocol import QueryRequest, Statement
from cache_edge.common.strategy import CacheStrategy
from cache_edge.node.entry import core_to_dict
from cache_edge.node.purge_mirror import PurgeMirror
from cache_edge.node.read_path import Answer, QueryCache
from cache_edge.node.tiers.memory import MemoryTier
from cache_edge.server.config import NodeConfig
from tests.unit.node.fakes import FakeClock, FakeTier, ScriptedOrigin

TENANT = "acme"
SQL = "SELECT v FROM t WHERE k = $1"
CONFIG = NodeConfig(region="r1", sync_grace=2.0, coalesce_wait=5.0, memory_cache_mb=0)


class Region:
    """One region: a shared tier, an origin, and as many node processes as a test wants."""

    def __init__(self, *, retry_after: float = 1.0) -> None:
        self.clock = FakeClock()
        self.tier = FakeTier(self.clock, retry_after=retry_after)
        self.origin = ScriptedOrigin(self.clock)
        self.tier.sync(TENANT)  # the applier's first sync: the region vouches for entries
        self.cache = self.process()

    def process(self, **hot: Any) -> QueryCache:
        """Another node process of the region (``memory=``, ``mirror=`` for a hot tier)."""
        return QueryCache(CONFIG, self.tier, self.origin, clock=self.clock, **hot)

    def purge(self, *tags: str) -> int:
        """A purge recorded at the origin and applied in the region's tier."""
        seq = self.origin.purge()
        self.tier.apply_purge(TENANT, seq, tags)
        return seq

    async def read(self, cache: QueryCache | None = None, **strategy: Any) -> Answer:
        strat = {"ttl": 60, "tags": ["t1"], **strategy}
        req = QueryRequest(Statement(SQL, ["k1"]), CacheStrategy.from_wire(strat))
        return await (cache or self.cache).query(TENANT, req, "req")


@pytest.fixture
def region() -> Iterator[Region]:
    yield Region()


def rows(answer: Answer) -> Any:
    return core_to_dict(answer.core)["rows"]


async def until(condition: Callable[[], bool], turns: int = 1000) -> None:
    """Let the event loop run until ``condition`` holds; bounded, so a broken rule fails
    the test instead of hanging it."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


# ------------------------------------------------------------------ ttl and swr


async def test_ttl_hits_then_swr_serves_stale_with_exactly_one_refresh(region: Region) -> None:
    first = await region.read(ttl=10, swr=20)
    assert (first.status, rows(first), region.origin.calls) == ("miss", [[1]], 1)
    region.clock.advance(5)
    hit = await region.read(ttl=10, swr=20)
    assert (hit.status, rows(hit), region.origin.calls) == ("ttl", [[1]], 1)

    region.clock.advance(10)  # age 15: past ttl, inside swr
    region.origin.value = 2
    other = region.process()  # a second process of the region
    answers = await asyncio.gather(
        *(region.read(ttl=10, swr=20) for _ in range(5)),
        *(region.read(other, ttl=10, swr=20) for _ in range(5)),
    )
    assert [a.status for a in answers] == ["swr"] * 10
    assert all(rows(a) == [[1]] for a in answers)  # the stale rows, at once
    await region.cache.drain()
    await other.drain()
    assert region.origin.calls == 2, "one refresh per key per region"
    assert region.cache.stats.refreshes + other.stats.refreshes == 1

    after = await region.read(ttl=10, swr=20)
    assert (after.status, rows(after)) == ("ttl", [[2]])


async def test_past_ttl_and_swr_is_a_miss(region: Region) -> None:
    await region.read(ttl=10, swr=20)
    region.clock.advance(31)
    region.origin.value = 2
    answer = await region.read(ttl=10, swr=20)
    assert (answer.status, rows(answer), region.origin.calls) == ("miss", [[2]], 2)


# ------------------------------------------------------------------ staleIfError


async def test_stale_if_error_stands_in_inside_its_window_only(region: Region) -> None:
    await region.read(ttl=1, staleIfError=30)  # kept for 31 s
    region.origin.go_down()
    region.clock.advance(10)
    stale = await region.read(ttl=1, staleIfError=30)
    assert (stale.status, rows(stale), stale.error) == ("stale", [[1]], "origin_unavailable")
    region.clock.advance(25)  # age 35: past ttl + staleIfError
    with pytest.raises(OriginUnavailable):
        await region.read(ttl=1, staleIfError=30)
    assert region.origin.calls == 3


async def test_each_request_gets_its_own_stale_if_error_window(region: Region) -> None:
    """staleIfError is not part of the key: an entry kept for one request's long window
    stands in for another request only within that request's own window."""
    await region.read(ttl=1, staleIfError=300)
    region.origin.go_down()
    region.clock.advance(10)
    with pytest.raises(OriginUnavailable):
        await region.read(ttl=1, staleIfError=5)
    assert (await region.read(ttl=1, staleIfError=300)).status == "stale"


async def test_without_stale_if_error_an_outage_is_an_error(region: Region) -> None:
    await region.read(ttl=1)
    region.origin.go_down()
    region.clock.advance(2)
    with pytest.raises(OriginUnavailable):
        await region.read(ttl=1)


async def test_a_query_error_is_not_an_outage_and_no_stale_stands_in(region: Region) -> None:
    await region.read(ttl=1, staleIfError=30)
    region.origin.error = QueryError("relation does not exist")
    region.clock.advance(2)
    with pytest.raises(QueryError):
        await region.read(ttl=1, staleIfError=30)


@pytest.mark.parametrize("purged,served", [("another_tag", True), ("t1", False)])
async def test_cut_off_region_serves_stale_only_what_no_purge_voided(
    region: Region, purged: str, served: bool
) -> None:
    """The sync lease lapsed (origin unreachable); a purge applied before still counts."""
    await region.read(ttl=1, staleIfError=300)
    region.purge(purged)
    region.tier.lapse(TENANT)
    region.origin.go_down()
    region.clock.advance(5)
    if served:
        stale = await region.read(ttl=1, staleIfError=300)
        assert (stale.status, rows(stale)) == ("stale", [[1]])
    else:
        with pytest.raises(OriginUnavailable):
            await region.read(ttl=1, staleIfError=300)


async def test_purge_all_voids_stale_too(region: Region) -> None:
    await region.read(ttl=1, staleIfError=300)
    seq = region.origin.purge()
    region.tier.apply_purge(TENANT, seq, purge_all=True)
    region.origin.go_down()
    region.clock.advance(5)
    with pytest.raises(OriginUnavailable):
        await region.read(ttl=1, staleIfError=300)


# ------------------------------------------------------------------ purges racing a fetch


async def test_a_purge_applied_during_the_fetch_discards_its_rows_and_refetches(
    region: Region,
) -> None:
    def purge_meanwhile() -> None:
        if region.origin.calls == 1:  # only while the first fetch is in flight
            region.origin.value = 2
            region.purge("t1")

    region.origin.during_query = purge_meanwhile
    answer = await region.read()
    assert (answer.status, rows(answer)) == ("miss", [[2]]), "pre-purge rows were served"
    assert region.origin.min_watermarks == [0, 1], "the refetch must ask for the purge's seq"
    assert region.cache.stats.raced_purges == 1
    again = await region.read()
    assert (again.status, rows(again), region.origin.calls) == ("ttl", [[2]], 2)


async def test_an_entry_older_than_an_applied_purge_is_never_served(region: Region) -> None:
    await region.read()
    region.origin.value = 2
    region.purge("t1")
    answer = await region.read()
    assert (answer.status, rows(answer)) == ("miss", [[2]])
    assert region.origin.min_watermarks == [0, 1]


async def test_no_sync_lease_means_no_hit_and_nothing_stored(region: Region) -> None:
    await region.read()
    region.tier.lapse(TENANT)
    region.origin.value = 2
    answer = await region.read()
    assert (answer.status, rows(answer), region.origin.calls) == ("miss", [[2]], 2)
    assert region.cache.stats.unvouched_fills == 1
    region.tier.sync(TENANT, floor=0)
    again = await region.read()
    # The first entry again (no purge voided it): the rows fetched without a lease
    # could not be checked, so they were not stored over it.
    assert (again.status, rows(again)) == ("ttl", [[1]])


async def test_unchecked_rows_never_reach_a_request_that_arrived_after_the_fetch_began(
    region: Region,
) -> None:
    """A's fetch is in flight; a purge is applied; B arrives and joins; Redis dies.
    A may have its own rows (it was waiting before the purge); B gets rows of a fetch
    that began after it arrived."""
    gate = asyncio.Event()
    region.origin.gates.append(gate)
    a = asyncio.create_task(region.read())
    await until(lambda: region.origin.calls == 1)
    region.origin.value = 2
    region.purge("t1")
    b = asyncio.create_task(region.read())
    await until(lambda: region.cache._flights.deduplicated == 1)
    region.tier.fail()
    gate.set()
    got_a, got_b = await a, await b
    assert rows(got_a) == [[1]]
    assert rows(got_b) == [[2]], "B was handed rows older than a purge applied before it"
    assert got_b.cache_error == "redis_unavailable"
    assert region.origin.calls == 2
    assert region.cache.stats.unchecked_refetches == 1


# ------------------------------------------------------------------ coalescing


async def misses_at_once(region: Region, count: int) -> list[Answer]:
    """``count`` concurrent misses, the origin held until all of them wait on one fetch."""
    gate = asyncio.Event()
    region.origin.gates.append(gate)
    tasks = [asyncio.create_task(region.read()) for _ in range(count)]
    await until(lambda: region.cache._flights.deduplicated == count - 1)
    gate.set()
    return await asyncio.gather(*tasks)


async def test_concurrent_misses_in_a_process_make_one_origin_call(region: Region) -> None:
    answers = await misses_at_once(region, 50)
    assert region.origin.calls == 1
    assert all(a.status == "miss" and rows(a) == [[1]] for a in answers)
    assert region.cache.stats.coalesced_local == 49


async def test_concurrent_misses_across_processes_make_one_origin_call(region: Region) -> None:
    """The second process finds the fill lock taken and waits for the holder's entry."""
    gate = asyncio.Event()
    region.origin.gates.append(gate)
    other = region.process()
    first = asyncio.create_task(region.read())
    await until(lambda: region.origin.calls == 1)
    second = asyncio.create_task(region.read(other))
    await asyncio.sleep(0.02)  # the second is polling for the entry by now
    gate.set()
    a, b = await first, await second
    assert rows(a) == rows(b) == [[1]]
    assert region.origin.calls == 1
    assert other.stats.coalesced_region == 1


async def test_a_lock_taken_by_a_lookup_is_let_go_when_the_request_joins_a_fetch(
    region: Region,
) -> None:
    """A's lookup finds the lock held by another process and A starts waiting; the holder
    lets go; B's lookup (in flight meanwhile) takes the lock, then finds A's fetch running
    in its process and joins it. B must release the lock, or A would wait for a lease
    nobody renews (here: coalesce_wait, as the fake clock stands still)."""

    class LetGoAfterFirstBusy(FakeTier):
        let_go = True

        async def lookup(self, *args: Any, **kwargs: Any) -> Any:
            got = await super().lookup(*args, **kwargs)
            if got.busy and self.let_go:
                self.let_go = False
                self._locks.clear()  # the other process's lock runs out
            return got

    tier = LetGoAfterFirstBusy(region.clock)
    tier.sync(TENANT)
    cache = QueryCache(CONFIG, tier, region.origin, clock=region.clock)
    gate = asyncio.Event()
    region.origin.gates.append(gate)
    holder = asyncio.create_task(
        region.read(QueryCache(CONFIG, tier, region.origin, clock=region.clock))
    )
    await until(lambda: region.origin.calls == 1)
    a = asyncio.create_task(region.read(cache))
    b = asyncio.create_task(region.read(cache))
    started = asyncio.get_running_loop().time()
    answers = await asyncio.wait_for(asyncio.gather(a, b), 2.0)
    assert asyncio.get_running_loop().time() - started < 1.0
    assert [rows(x) for x in answers] == [[[1]], [[1]]]
    assert tier.calls["unlock"] >= 1
    gate.set()
    await holder


# ------------------------------------------------------------------ the hot tier


def _message(prev: int, to: int, tags: dict[str, int] | None = None) -> dict[str, Any]:
    return {"t": TENANT, "prev": prev, "to": to, "floor": 0, "tags": tags or {}, "lease": 1.0}


async def test_the_hot_tier_serves_only_under_the_mirrors_lease_and_purges_void_it(
    region: Region,
) -> None:
    memory = MemoryTier(1 << 20)
    mirror = PurgeMirror("r1", "p1", region.tier, memory, clock=region.clock)
    cache = region.process(memory=memory, mirror=mirror)
    mirror.apply(_message(-1, 0))  # the mirror is in sync, lease 1 s

    assert (await region.read(cache)).status == "miss"
    assert len(memory) == 1
    lookups = region.tier.calls["lookup"]
    hot = await region.read(cache)
    assert (hot.status, rows(hot), cache.stats.memory_hits) == ("ttl", [[1]], 1)
    assert region.tier.calls["lookup"] == lookups, "a hot hit needs no Redis round trip"

    region.clock.advance(1.5)  # no message for longer than the lease
    shared = await region.read(cache)
    assert (shared.status, cache.stats.memory_hits) == ("ttl", 1)
    assert region.tier.calls["lookup"] == lookups + 1, "served from Redis, not memory"

    mirror.apply(_message(0, 0))  # a heartbeat renews the lease
    assert (await region.read(cache)).status == "ttl"
    assert cache.stats.memory_hits == 2

    region.origin.value = 2
    seq = region.purge("t1")
    mirror.apply(_message(0, seq, {"t1": seq}))  # the purge reaches this process
    after = await region.read(cache)
    assert (after.status, rows(after)) == ("miss", [[2]]), "the hot tier served purged rows"
    assert cache.stats.memory_hits == 2


async def test_a_hot_entry_in_swr_refreshes_once(region: Region) -> None:
    memory = MemoryTier(1 << 20)
    mirror = PurgeMirror("r1", "p1", region.tier, memory, clock=region.clock)
    cache = region.process(memory=memory, mirror=mirror)
    mirror.apply(_message(-1, 0))
    await region.read(cache, ttl=1, swr=10)
    region.clock.advance(0.5)
    mirror.apply(_message(0, 0))
    region.clock.advance(0.7)  # age 1.2: swr; the lease still runs
    region.origin.value = 2
    answers = [await region.read(cache, ttl=1, swr=10) for _ in range(3)]
    assert [a.status for a in answers] == ["swr"] * 3
    assert cache.stats.memory_hits == 3
    await cache.drain()
    assert region.origin.calls == 2


# ------------------------------------------------------------------ Redis failing


async def test_lookup_failing_answers_from_the_origin_and_says_so(region: Region) -> None:
    region.tier.fail("lookup")
    answer = await region.read()
    assert (answer.status, rows(answer)) == ("miss", [[1]])
    assert answer.cache_error == "redis_unavailable"
    assert region.origin.calls == 1
    # The breaker was open for the check too: nothing unchecked was stored.
    region.tier.recover()
    assert (await region.read()).status == "miss"
    assert (await region.read()).status == "ttl"
    assert region.origin.calls == 2


async def test_a_lone_lookup_failure_is_reported_and_the_checked_rows_stored() -> None:
    """With the breaker closed again at once, only the lookup failed: the fill is checked."""
    region = Region(retry_after=0)
    region.tier.fail("lookup")
    answer = await region.read()
    assert (answer.status, rows(answer), answer.cache_error) == ("miss", [[1]], "redis_unavailable")
    assert region.tier.stored(TENANT, answer.signature or "")


async def test_an_entry_whose_implicit_tags_cannot_be_checked_is_not_served() -> None:
    """A process that does not know a statement's implicit tags yet reads their purge
    state in a second round trip; if that one fails, the entry is not served."""
    region = Region(retry_after=0)
    region.origin.tags = ("table:public.t",)  # automatic invalidation
    assert (await region.read()).status == "miss"
    region.origin.value = 2
    region.purge("table:public.t")  # a write to the table
    fresh_process = region.process()
    region.tier.fail("state")
    answer = await region.read(fresh_process)
    assert rows(answer) == [[2]], f"rows older than a purge served as {answer.status}"
    assert answer.cache_error == "redis_unavailable"


async def test_redis_dying_during_the_fetch_answers_unchecked_rows_unstored(
    region: Region,
) -> None:
    """The lookup took the lock; the store (with its state check) after the fetch fails."""
    region.origin.during_query = lambda: region.tier.fail()
    answer = await region.read()
    assert (answer.status, rows(answer)) == ("miss", [[1]])
    assert answer.cache_error == "redis_unavailable"
    region.origin.during_query = None
    region.tier.recover()
    region.clock.advance(3.1)  # the fill lock Redis could not release runs out (3 s lease)
    assert not region.tier.stored(TENANT, answer.signature or "")
    assert (await region.read()).status == "miss"
    assert region.origin.calls == 2


async def test_only_the_store_failing_stores_nothing() -> None:
    """The purge state check rides with the store: if that round trip fails, the rows
    are unchecked (answered to those waiting, never stored)."""
    region = Region(retry_after=0)  # the breaker does not keep the store from trying
    region.tier.fail("store")
    answer = await region.read()
    assert (answer.status, rows(answer), answer.cache_error) == ("miss", [[1]], "redis_unavailable")
    assert not region.tier.stored(TENANT, answer.signature or "")
    region.tier.recover()
    region.clock.advance(3.1)  # the fill lock the failed store could not release runs out
    assert (await region.read()).status == "miss"
    assert (await region.read()).status == "ttl"


async def test_a_waiters_claim_failing_still_answers(region: Region) -> None:
    """Another process holds the fill lock; this one's claim of it fails: it fetches."""
    gate = asyncio.Event()
    region.origin.gates.append(gate)
    first = asyncio.create_task(region.read())
    await until(lambda: region.origin.calls == 1)
    lookups = region.tier.calls["lookup"]
    second = asyncio.create_task(region.read(region.process()))
    await until(lambda: region.tier.calls["lookup"] == lookups + 1)  # found the lock held
    region.tier.fail("lookup")  # its next poll for the entry or the lock fails
    answer = await second
    assert (answer.status, rows(answer), answer.cache_error) == ("miss", [[1]], "redis_unavailable")
    assert region.origin.calls == 2
    gate.set()
    assert rows(await first) == [[1]]


async def test_a_waiter_takes_over_a_lock_released_without_an_entry(region: Region) -> None:
    """The holder could not vouch for its rows (no sync lease): it released the lock
    without storing; the waiter of another process takes the lock and fetches."""
    gate = asyncio.Event()
    region.origin.gates.append(gate)
    first = asyncio.create_task(region.read())
    await until(lambda: region.origin.calls == 1)
    other = region.process()
    second = asyncio.create_task(region.read(other))
    await asyncio.sleep(0.02)  # polling for the holder's entry
    region.tier.lapse(TENANT)
    gate.set()
    a, b = await first, await second
    assert rows(a) == rows(b) == [[1]]
    assert region.origin.calls == 2
    assert region.cache.stats.unvouched_fills == other.stats.unvouched_fills == 1


async def test_redis_down_keeps_coalescing_within_the_process(region: Region) -> None:
    region.tier.fail()
    answers = await misses_at_once(region, 20)
    assert all(rows(a) == [[1]] and a.cache_error == "redis_unavailable" for a in answers)
    assert region.origin.calls == 1


async def test_redis_down_during_swr_skips_the_refresh_and_keeps_serving(
    region: Region,
) -> None:
    """Without the lock one refresh per region cannot be promised: none is started."""
    await region.read(ttl=1, swr=10)
    region.clock.advance(2)
    region.tier.fail("claim")  # the refresh's claim of the lock
    assert (await region.read(ttl=1, swr=10)).status == "swr"
    await region.cache.drain()
    assert region.origin.calls == 1
    assert region.cache.stats.refreshes == 0


# ------------------------------------------------------------------ not cached


async def test_an_uncached_query_goes_to_the_origin_every_time(region: Region) -> None:
    for _ in range(2):
        answer = await region.read(ttl=0, swr=0)
        assert (answer.status, rows(answer)) == ("none", [[1]])
    assert region.origin.calls == 2
    assert region.tier.calls["lookup"] == 0
