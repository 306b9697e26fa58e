"""origin_guard: the bound on calls waiting for the origin and the circuit breaker, on a fake clock."""

from __future__ import annotations

import asyncio

import pytest

from cache_edge.common.errors import (
    CacheEdgeError,
    DatabaseUnavailable,
    OriginDown,
    OriginOverloaded,
    OriginUnavailable,
    QueryError,
)
from cache_edge.node.origin_guard import OriginGuard


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def guard(clock: Clock, **kw: int | float) -> OriginGuard:
    args: dict[str, float] = {"max_waiting": 3, "failures": 2, "probe_interval": 1.0}
    args.update(kw)
    return OriginGuard(
        max_waiting=int(args["max_waiting"]),
        failures=int(args["failures"]),
        probe_interval=args["probe_interval"],
        clock=clock,
    )


def call(g: OriginGuard, outcome: BaseException | None = None) -> None:
    """One origin call that ends with ``outcome`` (None: an answer)."""
    with g.admit():
        if outcome is not None:
            raise outcome


def fails(g: OriginGuard) -> None:
    with pytest.raises(OriginUnavailable):
        call(g, OriginUnavailable("cannot reach the origin"))


async def test_calls_past_the_bound_are_shed_at_once_and_the_bound_frees_up() -> None:
    g = guard(Clock())
    release = asyncio.Event()

    async def waiting() -> None:
        with g.admit():
            await release.wait()

    tasks = [asyncio.create_task(waiting()) for _ in range(3)]
    await asyncio.sleep(0)
    assert g.waiting == 3
    with pytest.raises(OriginOverloaded) as caught:
        call(g)
    assert caught.value.status == 503 and caught.value.code == "origin_overloaded"
    assert caught.value.retry_after == 1.0
    assert isinstance(caught.value, OriginUnavailable)  # staleIfError stands in for it
    release.set()
    await asyncio.gather(*tasks)
    assert g.waiting == 0 and g.shed == 1
    call(g)  # room again


def test_consecutive_failures_open_the_circuit_then_calls_fail_fast() -> None:
    clock = Clock()
    g = guard(clock)
    fails(g)
    assert not g.is_open  # one failure is not a pattern
    fails(g)
    assert g.is_open
    clock.now += 0.4
    with pytest.raises(OriginDown) as caught:
        call(g)
    assert caught.value.status == 503 and caught.value.code == "origin_down"
    assert caught.value.retry_after == pytest.approx(0.6)
    assert isinstance(caught.value, OriginUnavailable)


def test_any_answer_resets_the_count_even_an_error_body() -> None:
    g = guard(Clock())
    for answer in (None, QueryError("syntax"), DatabaseUnavailable("pg down")):
        fails(g)
        if answer is None:
            call(g)
        else:
            with pytest.raises(CacheEdgeError):
                call(g, answer)
    assert not g.is_open


def test_one_probe_at_a_time_then_the_circuit_closes_when_it_gets_through() -> None:
    clock = Clock()
    g = guard(clock)
    fails(g)
    fails(g)
    clock.now += 1.0
    with g.admit():  # the probe
        with pytest.raises(OriginDown) as caught:
            call(g)  # others still fail fast while it runs
        assert caught.value.retry_after == 1.0
    assert not g.is_open
    call(g)


def test_a_failed_probe_keeps_the_circuit_open_for_another_interval() -> None:
    clock = Clock()
    g = guard(clock)
    fails(g)
    fails(g)
    clock.now += 1.5
    fails(g)  # the probe
    assert g.is_open
    clock.now += 0.5
    with pytest.raises(OriginDown):
        call(g)
    clock.now += 0.5
    call(g)  # next probe answers
    assert not g.is_open


def test_a_cancelled_probe_lets_the_next_call_probe() -> None:
    clock = Clock()
    g = guard(clock)
    fails(g)
    fails(g)
    clock.now += 1.0
    with pytest.raises(asyncio.CancelledError):
        call(g, asyncio.CancelledError())
    call(g)  # not refused as "a probe is running"
    assert not g.is_open and g.waiting == 0


def test_a_late_success_closes_an_open_circuit() -> None:
    clock = Clock()
    g = guard(clock, failures=1)
    with g.admit():  # in flight before the circuit opened
        fails(g)
        assert g.is_open
    assert not g.is_open  # it was answered: the origin is there


def test_invalid_settings() -> None:
    with pytest.raises(ValueError):
        OriginGuard(max_waiting=0, failures=1, probe_interval=1.0)
    with pytest.raises(ValueError):
        OriginGuard(max_waiting=1, failures=1, probe_interval=0.0)
