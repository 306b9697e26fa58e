"""The region's Redis restarting or absent at start, seen by a real node process.

Each test runs its own redis-server on a free loopback port, so it can stop and start it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import API_KEY_A
from tests.integration.conftest import PrivateRedis
from tests.integration.node_helpers import Reply, marker, new_stack, post


@pytest.fixture
def redis_server(private_redis: Callable[..., PrivateRedis]) -> PrivateRedis:
    """This test's redis-server, not started yet."""
    return private_redis(started=False)


def _bypassed(replies: list[Reply]) -> int:
    assert {r.status for r in replies} == {200}, [r.body for r in replies if r.status != 200]
    return sum(1 for r in replies if r.info.get("cacheError"))


async def test_a_redis_restart_costs_at_most_one_trip(
    tmp_path: Path, pg_databases: tuple[str, str], redis_server: PrivateRedis
) -> None:
    """After a restart every pooled connection is dead. Each used to fail the request that
    reused it and open the breaker for redis_retry_after, so bursts wider than the last one
    kept bypassing Redis for tens of seconds; now a dead connection is replaced on the spot."""
    redis_server.start()
    st = new_stack(
        tmp_path,
        pg_databases,
        redis_server.url,
        node={"memory_cache_mb": 0, "redis_retry_after": 0.3},  # hits come from Redis
    )
    st.start_origin()
    node = st.start_node()
    body = {"sql": "SELECT $1::text AS m", "params": [marker()], "cacheStrategy": {"ttl": 300}}
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

            async def burst(n: int) -> list[Reply]:
                return await asyncio.gather(
                    *(post(http, node.url, body, API_KEY_A) for _ in range(n))
                )

            assert (await post(http, node.url, body, API_KEY_A)).cache_status == "miss"
            for _ in range(3):  # the pool holds about 60 connections, all idle afterwards
                assert _bypassed(await burst(60)) == 0
            redis_server.stop()
            redis_server.start()
            tripped = []
            for n in [2, 10, 30, 60] * 4:  # ever wider bursts reach ever older connections
                bypassed = _bypassed(await burst(n))
                if bypassed:
                    tripped.append((n, bypassed))
                await asyncio.sleep(0.35)  # past the breaker: each trip shows up on its own
            assert len(tripped) <= 1, tripped
    finally:
        st.stop_all()


async def test_a_node_starts_and_serves_while_redis_is_down(
    tmp_path: Path, pg_databases: tuple[str, str], redis_server: PrivateRedis
) -> None:
    """Redis is an accelerator: setting its clients up is waited for, within a bound, and a
    node whose Redis is down starts anyway, answers from the origin, and uses Redis once up."""
    st = new_stack(tmp_path, pg_databases, redis_server.url, node={"redis_retry_after": 0.2})
    st.start_origin()
    started = time.monotonic()
    node = st.start_node()
    assert time.monotonic() - started < 8
    body = {"sql": "SELECT $1::text AS m", "params": [marker()], "cacheStrategy": {"ttl": 300}}
    async with aiohttp.ClientSession() as http:
        try:
            reply = await post(http, node.url, body, API_KEY_A)
            assert reply.status == 200 and reply.info["cacheError"] == "redis_unavailable"
            assert "redis_not_ready" in node.logs()
            redis_server.start()
            statuses: list[str] = []
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and statuses[-2:] != ["ttl", "ttl"]:
                await asyncio.sleep(0.2)
                statuses.append((await post(http, node.url, body, API_KEY_A)).cache_status)
            assert statuses[-2:] == ["ttl", "ttl"], statuses
        finally:
            st.stop_all()
