"""Deadlines: many waits of one length bounded by a single sweep."""

from __future__ import annotations

import asyncio

import pytest

from cache_edge.common.deadlines import Deadlines


async def _wait(deadlines: Deadlines, seconds: float) -> str:
    task = deadlines.enter()
    try:
        await asyncio.sleep(seconds)
        return "done"
    except asyncio.CancelledError:
        if deadlines.expired(task):
            return "timed out"
        raise
    finally:
        deadlines.leave(task)


async def test_a_wait_past_its_deadline_is_cancelled_within_a_tick() -> None:
    deadlines = Deadlines(0.2, tick=0.02)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await _wait(deadlines, 5.0) == "timed out"
    assert 0.2 <= loop.time() - started < 0.35
    deadlines.close()


async def test_waits_that_end_in_time_are_untouched_and_late_ones_are_not() -> None:
    deadlines = Deadlines(0.2, tick=0.02)
    results = await asyncio.gather(*(_wait(deadlines, s) for s in (0.01, 0.5, 0.05, 0.6, 0.1)))
    assert results == ["done", "timed out", "done", "timed out", "done"]
    deadlines.close()


async def test_someone_elses_cancellation_is_not_a_timeout() -> None:
    deadlines = Deadlines(5.0, tick=0.02)
    waiting = asyncio.create_task(_wait(deadlines, 10.0))
    await asyncio.sleep(0.05)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    deadlines.close()


async def test_the_sweep_stops_when_idle_and_starts_again() -> None:
    deadlines = Deadlines(0.1, tick=0.02)
    assert await _wait(deadlines, 0.01) == "done"
    await asyncio.sleep(0.1)
    assert deadlines._sweeper is not None and deadlines._sweeper.done()
    assert await _wait(deadlines, 1.0) == "timed out"
    deadlines.close()


def test_bad_lengths_are_refused() -> None:
    with pytest.raises(ValueError):
        Deadlines(0)
