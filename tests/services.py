"""The PostgreSQL and Redis the tests use: the machine's when suitable, else private ones.

Suitable means reachable, and for PostgreSQL ``wal_level = logical`` (automatic
invalidation and change streams read the WAL). Otherwise, as on a new user's
machine with a default PostgreSQL, the tests start their own servers from the
binaries on the machine (the same code ``cache-edge dev`` uses), on free loopback
ports, and stop them when the run ends. The machine's servers are never changed.
``CACHE_EDGE_TEST_PG`` / ``CACHE_EDGE_TEST_REDIS`` name servers to use as they are.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import tempfile
from pathlib import Path

from cache_edge.devtools.harness import Children

__all__ = ["ensure_services"]

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"

_children = Children()  # stopped at exit, newest first


async def _pg_is_logical(dsn: str) -> bool:
    import asyncpg

    try:
        conn = await asyncpg.connect(dsn, timeout=2.0)
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
    try:
        return bool(await conn.fetchval("SHOW wal_level") == "logical")
    finally:
        await conn.close()


async def _ensure() -> tuple[str, str, list[str]]:
    from cache_edge.devtools.services import (
        _start_private_postgres,
        _start_private_redis,
        redis_reachable,
    )

    notes: list[str] = []
    work = Path(tempfile.mkdtemp(prefix="cache-edge-tests-"))
    pg = os.environ.get("CACHE_EDGE_TEST_PG")
    if not pg:
        if await _pg_is_logical(DEFAULT_PG):
            pg = DEFAULT_PG
        else:
            service = await _start_private_postgres(work, work / "logs")
            assert service.child is not None
            _children.add(service.child)
            pg = service.url
            notes.append(f"private PostgreSQL (wal_level=logical) at {pg}")
    redis = os.environ.get("CACHE_EDGE_TEST_REDIS")
    if not redis:
        if await redis_reachable(DEFAULT_REDIS):
            redis = DEFAULT_REDIS.rsplit("/", 1)[0] + "/15"
        else:
            service = await _start_private_redis(work, work / "logs")
            assert service.child is not None
            _children.add(service.child)
            redis = service.url.rsplit("/", 1)[0] + "/15"
            notes.append(f"private Redis at {redis}")
    return pg, redis, notes


def ensure_services() -> tuple[str, str]:
    """(PostgreSQL admin DSN, Redis URL of database 15) for this test run.

    Also exported as CACHE_EDGE_TEST_PG / CACHE_EDGE_TEST_REDIS, so processes the
    tests start (and a second import) agree on them."""
    pg, redis, notes = asyncio.run(_ensure())
    os.environ["CACHE_EDGE_TEST_PG"] = pg
    os.environ["CACHE_EDGE_TEST_REDIS"] = redis
    if any(_children):
        atexit.register(_children.stop_all)
    for note in notes:
        print(f"tests: {note}")
    return pg, redis
