"""Queries and transactions through a real origin and PostgreSQL: errors, limits, coalescing."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from cache_edge.common.wire import packb
from tests.conftest import executions
from tests.integration.origin_helpers import OriginClient, origin_settings, running_origin

TABLE = "origin_queries_t"


@pytest.fixture
async def origin(pg_databases: tuple[str, str]) -> AsyncIterator[OriginClient]:
    conn = await asyncpg.connect(pg_databases[0])
    try:
        await conn.execute(
            f"DROP TABLE IF EXISTS {TABLE};"
            f"CREATE TABLE {TABLE} (id int PRIMARY KEY, v text NOT NULL);"
            f"INSERT INTO {TABLE} VALUES (1, 'one'), (2, 'two'), (3, 'three')"
        )
    finally:
        await conn.close()
    settings = origin_settings(pg_databases, statement_timeout=0.5, max_response_bytes=20_000)
    async with running_origin(settings) as client:
        yield client


async def db_rows(dsn: str, sql: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql))
    finally:
        await conn.close()


async def test_select_answer_and_raw_key_order(origin: OriginClient) -> None:
    before = int(time.time() * 1000)
    reply = await origin.query(f"SELECT id, v FROM {TABLE} WHERE id <= $1 ORDER BY id", 2)
    assert reply.status == 200
    assert reply.body["columns"] == [{"name": "id", "type": "int4"}, {"name": "v", "type": "text"}]
    assert reply.body["rows"] == [[1, "one"], [2, "two"]]
    assert reply.body["rowCount"] == 2
    assert before <= reply.body["producedAt"] <= int(time.time() * 1000)
    assert list(reply.body) == [
        "columns", "rows", "rowCount", "producedAt", "watermark", "tables"
    ]  # fmt: skip
    assert reply.body["tables"] == [f"public.{TABLE}"]
    assert reply.raw.startswith(b"\x86" + packb("columns"))
    assert reply.headers["Content-Type"] == "application/msgpack"


async def test_write_row_count_comes_from_the_status_tag(
    origin: OriginClient, pg_databases: tuple[str, str]
) -> None:
    reply = await origin.query(f"UPDATE {TABLE} SET v = v || '!'", read_only=False)
    assert reply.status == 200, reply.body
    assert reply.body["columns"] == [] and reply.body["rows"] == []
    assert reply.body["rowCount"] == 3
    rows = await db_rows(pg_databases[0], f"SELECT v FROM {TABLE} ORDER BY id")
    assert [r["v"] for r in rows] == ["one!", "two!", "three!"]
    returning = await origin.query(
        f"INSERT INTO {TABLE} VALUES ($1, $2) RETURNING id", 9, "nine", read_only=False
    )
    assert returning.body["rows"] == [[9]] and returning.body["rowCount"] == 1
    assert await db_rows(pg_databases[0], f"SELECT 1 FROM {TABLE} WHERE id = 9")


async def test_write_with_read_only_is_not_cacheable(
    origin: OriginClient, pg_databases: tuple[str, str]
) -> None:
    reply = await origin.query(f"DELETE FROM {TABLE}", read_only=True)
    assert reply.status == 400
    assert reply.error["code"] == "not_cacheable"
    assert "read-only" in reply.error["message"]
    assert len(await db_rows(pg_databases[0], f"SELECT * FROM {TABLE}")) == 3


async def test_missing_table_is_query_error_with_sqlstate(origin: OriginClient) -> None:
    reply = await origin.query("SELECT * FROM origin_no_such_table")
    assert reply.status == 400
    assert reply.error["code"] == "query_error"
    assert reply.error["sqlstate"] == "42P01"
    assert "origin_no_such_table" in reply.error["message"]
    assert reply.error["requestId"] == reply.headers["X-Request-Id"]


async def test_statement_timeout_is_query_timeout(origin: OriginClient) -> None:
    reply = await origin.query("SELECT pg_sleep(3)")
    assert reply.status == 504
    assert reply.error["code"] == "query_timeout"
    assert (await origin.rows("SELECT 1")) == [[1]]


async def test_oversized_result_is_refused_without_reading_it_all(origin: OriginClient) -> None:
    started = time.monotonic()
    # 100 million rows, produced lazily: only a streaming reader answers this quickly.
    reply = await origin.query("SELECT generate_series(1, 100000000) AS n, repeat('x', 100)")
    assert reply.status == 422
    assert reply.error["code"] == "response_too_large"
    assert time.monotonic() - started < 3
    assert (await origin.rows("SELECT 2")) == [[2]]


async def test_oversized_returning_rolls_the_write_back(
    origin: OriginClient, pg_databases: tuple[str, str]
) -> None:
    sql = (
        f"INSERT INTO {TABLE} SELECT g, repeat('y', 1000) FROM generate_series(100, 200) g "
        "RETURNING v"
    )
    reply = await origin.query(sql, read_only=False)
    assert reply.error["code"] == "response_too_large"
    assert not await db_rows(pg_databases[0], f"SELECT 1 FROM {TABLE} WHERE id >= 100")


async def test_transaction_commits_all_statements(
    origin: OriginClient, pg_databases: tuple[str, str]
) -> None:
    reply = await origin.transaction(
        [
            (f"INSERT INTO {TABLE} VALUES ($1, $2)", [10, "ten"]),
            (f"UPDATE {TABLE} SET v = $1 WHERE id = $2", ["uno", 1]),
            (f"SELECT id, v FROM {TABLE} WHERE id IN (1, 10) ORDER BY id", []),
        ],
        isolation="serializable",
    )
    assert reply.status == 200, reply.body
    assert list(reply.body) == ["results", "producedAt"]
    results = reply.body["results"]
    assert [r["rowCount"] for r in results] == [1, 1, 2]
    assert results[2]["rows"] == [[1, "uno"], [10, "ten"]]
    assert list(results[0]) == ["columns", "rows", "rowCount"]
    rows = await db_rows(pg_databases[0], f"SELECT id, v FROM {TABLE} WHERE id IN (1, 10)")
    assert sorted((r["id"], r["v"]) for r in rows) == [(1, "uno"), (10, "ten")]


@pytest.mark.parametrize(
    ("failing", "code", "status"),
    [
        (("INSERT INTO origin_queries_t VALUES (1, 'dup')", []), "query_error", 400),
        (("SELECT pg_sleep(3)", []), "query_timeout", 504),
        (("SELECT $1::int", ["not a number"]), "bad_request", 400),
    ],
)
async def test_failed_transaction_rolls_back_everything(
    origin: OriginClient,
    pg_databases: tuple[str, str],
    failing: tuple[str, list[object]],
    code: str,
    status: int,
) -> None:
    reply = await origin.transaction(
        [
            (f"INSERT INTO {TABLE} VALUES (50, 'fifty')", []),
            (f"UPDATE {TABLE} SET v = 'changed'", []),
            failing,
        ]
    )
    assert reply.status == status, reply.body
    assert reply.error["code"] == code
    assert reply.error["statementIndex"] == 2
    if code == "query_error":
        assert reply.error["sqlstate"] == "23505"
    rows = await db_rows(pg_databases[0], f"SELECT id, v FROM {TABLE} ORDER BY id")
    assert [(r["id"], r["v"]) for r in rows] == [(1, "one"), (2, "two"), (3, "three")]


async def test_identical_read_only_queries_in_flight_execute_once(
    origin: OriginClient,
) -> None:
    """Counted on the database side: ce_mark() (tests/conftest.py) logs each execution
    through dblink, over its own connection, so the count survives the READ ONLY
    transaction and reflects exactly how many times PostgreSQL ran the statement."""
    marker = f"coalesce-{uuid.uuid4()}"
    sql = "SELECT pg_sleep(0.3), ce_mark($1) AS m"
    replies = await asyncio.gather(*(origin.query(sql, marker) for _ in range(20)))
    assert [r.status for r in replies] == [200] * 20
    assert all(r.body["rows"] == [[None, marker]] for r in replies)
    assert len({r.body["producedAt"] for r in replies}) == 1
    assert await executions(marker) == 1
    _, metrics = await origin.get("/metrics")
    assert 'cache_edge_origin_coalesced_total{tenant="acme"} 19.0' in metrics
    # Not in flight at the same time: it runs again.
    await origin.query(sql, marker)
    assert await executions(marker) == 2


async def test_writes_are_never_coalesced(origin: OriginClient) -> None:
    marker = f"write-{uuid.uuid4()}"
    sql = "SELECT pg_sleep(0.2), ce_mark($1)"
    replies = await asyncio.gather(*(origin.query(sql, marker, read_only=False) for _ in range(3)))
    assert [r.status for r in replies] == [200] * 3
    assert await executions(marker) == 3


async def test_other_tenant_uses_its_own_database(
    origin: OriginClient, pg_databases: tuple[str, str]
) -> None:
    origin.tenant = "globex"
    rows = await origin.rows("SELECT current_database()")
    assert rows == [[pg_databases[1].rsplit("/", 1)[1]]]


async def test_json_request_and_answer(origin: OriginClient) -> None:
    reply = await origin.query(f"SELECT v FROM {TABLE} WHERE id = $1", 3, fmt="json")
    assert reply.status == 200
    assert reply.body == {
        "columns": [{"name": "v", "type": "text"}],
        "rows": [["three"]],
        "rowCount": 1,
        "producedAt": reply.body["producedAt"],
        "watermark": reply.body["watermark"],
        "tables": [f"public.{TABLE}"],
    }
    assert list(reply.body)[:5] == ["columns", "rows", "rowCount", "producedAt", "watermark"]


async def test_health_readiness_and_metrics(origin: OriginClient) -> None:
    assert await origin.get("/healthz") == (200, '{"status":"ok"}')
    assert await origin.get("/readyz") == (200, '{"status":"ok"}')
    await origin.query("SELECT 'secret-sql-text'")
    await origin.query("SELECT * FROM origin_no_such_table")
    status, text = await origin.get("/metrics")
    assert status == 200
    assert 'cache_edge_origin_queries_total{kind="query",outcome="ok",tenant="acme"}' in text
    assert 'cache_edge_origin_errors_total{code="query_error"} 1.0' in text
    assert 'cache_edge_origin_pool_size{tenant="acme"}' in text
    assert "cache_edge_origin_query_duration_seconds_bucket" in text
    assert "secret-sql-text" not in text and "postgresql://" not in text


async def test_readiness_names_failing_tenants_only(pg_databases: tuple[str, str]) -> None:
    broken = pg_databases[1].replace("postgres@", "postgres:pw-s3cret@").rsplit("/", 1)[0]
    settings = origin_settings((pg_databases[0], broken + "/origin_no_such_db"))
    async with running_origin(settings) as client:
        status, text = await client.get("/readyz")
        assert status == 503
        assert text == '{"status":"unavailable","failed":["globex"]}'
        client.tenant = "globex"
        reply = await client.query("SELECT 1")
        assert reply.status == 503 and reply.error["code"] == "database_unavailable"
        assert "Retry-After" in reply.headers
        assert "pw-s3cret" not in reply.raw.decode(errors="replace")


async def test_cached_statements_survive_schema_changes(
    origin: OriginClient, pg_databases: tuple[str, str]
) -> None:
    """Prepared statements come from the connection's cache; a schema change in between
    must not turn into an error (asyncpg invalidates, the executor retries once)."""
    table = "origin_schema_change"
    conn = await asyncpg.connect(pg_databases[0])
    try:
        await conn.execute(f"DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (a int)")
        await conn.execute(f"INSERT INTO {table} VALUES (1)")
        for read_only in (True, False):
            assert await origin.rows(f"SELECT * FROM {table}", read_only=read_only) == [[1]]
        await conn.execute(f"ALTER TABLE {table} ADD COLUMN b text DEFAULT 'x'")
        for read_only in (True, False, True, False, True, False):
            reply = await origin.query(f"SELECT * FROM {table}", read_only=read_only)
            assert reply.status == 200, reply.body
            assert reply.body["rows"] == [[1, "x"]]
            assert [c["name"] for c in reply.body["columns"]] == ["a", "b"]
    finally:
        await conn.execute(f"DROP TABLE IF EXISTS {table}")
        await conn.close()


async def test_cached_reads_report_tables_and_what_tables_cannot_explain(
    origin: OriginClient, pg_databases: tuple[str, str]
) -> None:
    """Views are expanded to their base tables; clock, randomness and session are warned."""
    conn = await asyncpg.connect(pg_databases[0])
    try:
        await conn.execute(
            "DROP VIEW IF EXISTS deps_v; DROP TABLE IF EXISTS deps_a, deps_b;"
            "CREATE TABLE deps_a (id int PRIMARY KEY, b int); CREATE TABLE deps_b (id int);"
            "CREATE VIEW deps_v AS SELECT a.id FROM deps_a a JOIN deps_b b ON a.b = b.id"
        )
        reply = await origin.query("SELECT * FROM deps_v WHERE id > $1", 0)
        assert reply.body["tables"] == ["public.deps_a", "public.deps_b"]
        assert "warnings" not in reply.body
        clock = await origin.query("SELECT now(), random(), current_user, id FROM deps_a")
        assert clock.body["tables"] == ["public.deps_a"]
        text = " ".join(clock.body["warnings"])
        for word in ("now()", "random()", "current_user"):
            assert word in text, clock.body["warnings"]
        write = await origin.query("SELECT 1", read_only=False)
        assert "tables" not in write.body and "warnings" not in write.body
    finally:
        await conn.execute("DROP VIEW IF EXISTS deps_v; DROP TABLE IF EXISTS deps_a, deps_b")
        await conn.close()
