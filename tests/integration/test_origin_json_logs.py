"""A real origin process whose database refuses connections: asyncpg logs its failed
reconnects with a traceback, and the log stays one JSON object per line (issue 13)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp
import asyncpg

from tests.conftest import PG_ADMIN_DSN, dsn_for, make_settings_doc
from tests.integration.origin_helpers import OriginClient
from tests.integration.stack import Server, Stack

DB = "cache_edge_test_logs"  # its own: connections to it are refused for a while
FLOOR_FAILED = "Failed to restore the pool connection floor; retrying"


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _wait_for_line(server: Server, text: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in server.logs():
        assert time.monotonic() < deadline, server.logs()[-3000:]
        await asyncio.sleep(0.1)


async def test_library_tracebacks_are_inside_json_lines(
    pg_databases: tuple[str, str], tmp_path: Path
) -> None:
    await _admin(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    await _admin(f"CREATE DATABASE {DB}")
    doc = make_settings_doc(dsn_for(DB), pg_databases[1], origin={"pool_min_size": 2})
    doc["log_level"] = "info"
    stack = Stack(tmp_path, doc)
    try:
        server = stack.start_origin()
        async with aiohttp.ClientSession() as session:
            assert await OriginClient(session, server.url).rows("SELECT 1") == [[1]]
        # Every pooled session ends and none may be opened again: asyncpg's pool keeps
        # trying to restore its floor of two and logs each failure with its traceback.
        await _admin(f"ALTER DATABASE {DB} ALLOW_CONNECTIONS false")
        await _admin(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{DB}' AND pid <> pg_backend_pid()"
        )
        await _wait_for_line(server, FLOOR_FAILED)
    finally:
        stack.stop_all()
        await _admin(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    lines = server.logs().splitlines()
    assert lines
    for line in lines:
        assert line.startswith("{") and line.endswith("}"), f"not one JSON object: {line!r}"
    events = [json.loads(line) for line in lines]
    failed = [e for e in events if e["msg"] == FLOOR_FAILED]
    assert failed[0]["logger"] == "asyncpg.pool"
    assert failed[0]["service"] == "cache-edge-origin"
    assert "Traceback" in failed[0]["exception"]
    assert "is not currently accepting connections" in failed[0]["exception"]
