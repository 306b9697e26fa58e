"""The single-flight group: one call per key, shared by whoever waits on it."""

from __future__ import annotations

import asyncio

from cache_edge.common.singleflight import Group


async def test_callers_during_a_flight_share_it() -> None:
    g: Group[int] = Group()
    calls = 0
    gate = asyncio.Event()

    async def fetch() -> int:
        nonlocal calls
        calls += 1
        await gate.wait()
        return 7

    tasks = [asyncio.create_task(g.do("k", fetch)) for _ in range(5)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*tasks)
    assert calls == 1
    assert [r for r, _ in results] == [7] * 5
    assert sorted(shared for _, shared in results) == [False, True, True, True, True]


async def test_a_finished_flight_is_never_joined() -> None:
    """Issue 13 M: a caller that runs after the flight finished but before the group
    forgot it got the finished flight back; a caller that must not take its result and
    asks again spun forever without yielding (both nodes of the chaos run wedged)."""
    g: Group[str] = Group()
    spins = 0
    joiner: asyncio.Future[int] | None = None

    async def late_joiner() -> int:
        nonlocal spins
        while spins < 1000:
            _result, shared = await g.do("k", fetch)
            if not shared:
                return spins
            spins += 1
        return spins

    async def fetch() -> str:
        nonlocal joiner
        if joiner is None:
            joiner = asyncio.ensure_future(late_joiner())  # first step before _forget
        return "rows"

    await g.do("k", fetch)
    assert joiner is not None
    assert await asyncio.wait_for(joiner, 5) == 0
