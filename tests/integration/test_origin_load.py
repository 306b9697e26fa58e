"""The origin under pressure: pool exhaustion, a thousand concurrent requests, a DB restart."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from cache_edge.devtools.services import (
    Service,
)
from tests.conftest import make_settings_doc
from tests.integration.conftest import restart_postgres
from tests.integration.origin_helpers import OriginClient, Reply, origin_settings, running_origin
from tests.integration.stack import Stack


async def test_pool_exhaustion_is_pool_timeout_with_retry_after(
    pg_databases: tuple[str, str],
) -> None:
    settings = origin_settings(pg_databases, pool_max_size=2, pool_min_size=1, pool_timeout=0.3)
    async with running_origin(settings) as origin:
        # Distinct params so that coalescing cannot hide the queueing.
        replies = await asyncio.gather(
            *(origin.query("SELECT pg_sleep(1), $1::int", i) for i in range(6))
        )
        statuses = sorted(r.status for r in replies)
        assert set(statuses) == {200, 503}, [r.body for r in replies]
        assert statuses.count(200) >= 2
        for reply in replies:
            if reply.status == 503:
                assert reply.error["code"] == "pool_timeout"
                assert int(reply.headers["Retry-After"]) >= 1
        # The pool is whole again afterwards.
        assert await origin.rows("SELECT 1") == [[1]]


async def test_a_thousand_concurrent_requests_through_ten_connections(
    pg_databases: tuple[str, str],
) -> None:
    settings = origin_settings(pg_databases, pool_max_size=10, pool_timeout=30.0)
    async with running_origin(settings) as origin:
        replies = await asyncio.wait_for(
            asyncio.gather(*(origin.query("SELECT $1::int * 2", i) for i in range(1000))), 20
        )
        errors = [r.body for r in replies if r.status != 200]
        assert errors == []
        assert [r.body["rows"][0][0] for r in replies] == [i * 2 for i in range(1000)]
        _, metrics = await origin.get("/metrics")
        assert 'cache_edge_origin_pool_max_size{tenant="acme"} 10.0' in metrics
        assert 'cache_edge_origin_pool_in_use{tenant="acme"} 0.0' in metrics


async def _query_ok_within(origin: OriginClient, seconds: float) -> list[Reply]:
    seen: list[Reply] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        reply = await origin.query("SELECT $1::int", len(seen))
        seen.append(reply)
        if reply.status == 200:
            return seen
        await asyncio.sleep(0.1)
    raise AssertionError(f"no success within {seconds}s: {[r.body for r in seen[-3:]]}")


@pytest.mark.slow
async def test_origin_recovers_by_itself_after_a_database_restart(
    own_postgres: Service,
) -> None:
    dsn = own_postgres.url
    settings = origin_settings((dsn, dsn), pool_min_size=2, connect_timeout=2.0)
    async with running_origin(settings) as origin:
        assert await origin.rows("SELECT 1") == [[1]]
        in_flight = asyncio.create_task(origin.query("SELECT pg_sleep(20), $1::int", 1))
        await asyncio.sleep(0.3)
        await restart_postgres(own_postgres)
        interrupted = await asyncio.wait_for(in_flight, 10)
        assert interrupted.status == 503, interrupted.body
        assert interrupted.error["code"] == "database_unavailable"
        assert "Retry-After" in interrupted.headers
        # Idle pooled connections died with the server; no origin restart is needed.
        attempts = await _query_ok_within(origin, 10)
        for reply in attempts[:-1]:
            assert reply.status == 503 and reply.error["code"] == "database_unavailable"
        for i in range(5):
            assert await origin.rows("SELECT $1::int", i) == [[i]]


async def test_cli_origin_serves_and_stops_on_sigterm_without_leaking_passwords(
    pg_databases: tuple[str, str], tmp_path: Path
) -> None:
    # Trust auth ignores the password; it is there to prove it never reaches a log line.
    dsn_a = pg_databases[0].replace("postgres@", "postgres:pw-s3cret@")
    dsn_b = pg_databases[1].rsplit("/", 1)[0].replace("postgres@", "postgres:pw-s3cret@")
    doc = make_settings_doc(dsn_a, dsn_b + "/origin_no_such_db")
    doc["log_level"] = "debug"
    stack = Stack(tmp_path, doc)
    try:
        server = stack.start_origin()
        async with aiohttp.ClientSession() as session:
            origin = OriginClient(session, server.url)
            assert await origin.rows("SELECT 41 + 1") == [[42]]
            origin.tenant = "globex"
            reply = await origin.query("SELECT 1")
            assert reply.error["code"] == "database_unavailable"
            assert await origin.get("/healthz") == (200, '{"status":"ok"}')
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(15) == 0
    finally:
        stack.stop_all()
    logs = server.logs()
    assert '"msg": "request"' in logs or '"msg":"request"' in logs
    assert "pw-s3cret" not in logs
    assert "postgres:***@" in logs  # the redacted DSN is what gets logged
