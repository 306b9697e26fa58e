"""Sessions the database ends under load (issue 13, G): 503 database_unavailable, never a
500, and the pool recovers without reusing a broken connection."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable

import asyncpg
import pytest

from cache_edge.devtools.services import (
    Service,
)
from tests.integration.conftest import restart_postgres
from tests.integration.origin_helpers import OriginClient, Reply, origin_settings, running_origin

TABLE = "origin_broken_connections_t"
WORKERS = 9
# Ends every session of the origin's pool in this database (the admin connection survives).
TERMINATE = """
SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
WHERE application_name = 'cache-edge-origin' AND datname = current_database()
  AND pid <> pg_backend_pid()
"""


async def _create_table(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            f"DROP TABLE IF EXISTS {TABLE}; CREATE TABLE {TABLE} (id serial PRIMARY KEY, v int)"
        )
    finally:
        await conn.close()


def _operation(origin: OriginClient, worker: int, n: int) -> Awaitable[Reply]:
    """What applications send all the time: purges, cached reads, writes with RETURNING."""
    kind = worker % 3
    if kind == 0:
        return origin.post("/v1/invalidations", {"tags": [f"t{worker}"], "wait": 0})
    if kind == 1:
        return origin.query(f"SELECT count(*), $1::int FROM {TABLE}", n)
    return origin.query(f"INSERT INTO {TABLE} (v) VALUES ($1) RETURNING id", n, read_only=False)


async def _under_load(origin: OriginClient, faults: Callable[[], Awaitable[None]]) -> list[Reply]:
    """Run the workers until ``faults`` returns; every reply that was not a success."""
    stop = asyncio.Event()
    failed: list[Reply] = []
    counts: collections.Counter[int] = collections.Counter()

    async def worker(i: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            reply = await _operation(origin, i, n)
            counts[reply.status] += 1
            if reply.status != 200:
                failed.append(reply)

    tasks = [asyncio.create_task(worker(i)) for i in range(WORKERS)]
    try:
        await faults()
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    assert counts[200] > 0, counts
    return failed


def _assert_only_database_unavailable(failed: list[Reply]) -> None:
    wrong = [r.body for r in failed if r.status != 503 or r.error["code"] != "database_unavailable"]
    assert wrong == [], wrong[:5]
    for reply in failed:
        assert "Retry-After" in reply.headers


async def _assert_recovered(origin: OriginClient) -> None:
    """Every kind of request succeeds again, at once, and nothing is left lent out."""
    await asyncio.sleep(0.5)  # the last ended sessions' sockets are closed by now
    for n in range(3):
        replies = await asyncio.gather(*(_operation(origin, i, n) for i in range(WORKERS)))
        assert [r.body for r in replies if r.status != 200] == []
    _, metrics = await origin.get("/metrics")
    assert 'cache_edge_origin_pool_in_use{tenant="acme"} 0.0' in metrics


async def test_sessions_ended_under_load_give_503_never_500_and_the_pool_recovers(
    pg_databases: tuple[str, str],
) -> None:
    await _create_table(pg_databases[0])
    settings = origin_settings(pg_databases, pool_max_size=4, pool_min_size=4, connect_timeout=2)
    admin = await asyncpg.connect(pg_databases[0])
    try:
        async with running_origin(settings) as origin:

            async def terminate_sessions() -> None:
                for _ in range(20):
                    await asyncio.sleep(0.15)
                    await admin.fetchval(TERMINATE)

            failed = await _under_load(origin, terminate_sessions)
            _assert_only_database_unavailable(failed)
            await _assert_recovered(origin)
    finally:
        await admin.close()


@pytest.mark.slow
async def test_database_restarts_under_load_give_503_never_500_and_the_pool_recovers(
    own_postgres: Service,
) -> None:
    dsn = own_postgres.url
    await _create_table(dsn)
    settings = origin_settings((dsn, dsn), pool_max_size=4, pool_min_size=4, connect_timeout=2)
    async with running_origin(settings) as origin:

        async def restart_twice() -> None:
            for _ in range(2):
                await asyncio.sleep(0.5)
                await restart_postgres(own_postgres)
            await asyncio.sleep(0.5)

        failed = await _under_load(origin, restart_twice)
        _assert_only_database_unavailable(failed)
        await _assert_recovered(origin)
