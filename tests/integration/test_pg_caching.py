"""Caching through the PostgreSQL door (issue 16), as real clients see it.

Every test asserts what the client receives and how many times PostgreSQL really executed
the statement: statements call ``ce_mark(marker)``, which logs each execution through
dblink, so the count survives the origin's READ ONLY transactions (see
:mod:`cache_edge.devtools.exec_log`). Functions are called in ``FROM`` where a statement
returns several rows, so that one execution logs one row.

Stacks: ``door`` (module scope, one node), ``regions`` (two nodes in two regions with a
door each and their own Redis database) and ``fragile`` (per test: its origin may be
stopped, its pool is one connection). In all of them tenant acme uses a database of this
run's own, and the nodes use a redis-server of the module's own: test processes running
at the same time share the machine's Redis databases and the test databases' purge logs,
and their purges and flushes would void entries while a test counts hits.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import psycopg
import pytest
import redis
from psycopg.pq import TransactionStatus
from sqlalchemy import String, bindparam, create_engine, func, select, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from cache_edge.devtools.exec_log import count_executions
from cache_edge.devtools.harness import free_port
from tests.conftest import API_KEY_A, dsn_for
from tests.integration.door_helpers import (
    Door,
    PrivateDoor,
    door_doc,
    open_door,
    private_database,
)
from tests.integration.node_helpers import marker, post
from tests.integration.stack import Stack, started
from tests.pgwire_capture import (
    SYNC,
    Extended,
    RawConnection,
    Simple,
    Target,
    bind_msg,
    capture,
    describe,
    describe_msg,
    execute_msg,
    parse_msg,
)

PID = os.getpid()
T = f"ce_pgc_{PID}"  # prefix of this module's tables
OWN_DB = f"cache_edge_pgc_{PID}"  # tenant acme's database in this module's stacks

# One statement over the types whose text and binary forms are the least trivial.
TYPES_SQL = (
    "SELECT m, 12345.678900::numeric AS n, -0.5::numeric(6,2) AS n2,"
    " '2024-03-01 12:34:56.789+02'::timestamptz AS ts,"
    ' \'{"a": [1, 2.5, {"b": null}], "c": "é"}\'::jsonb AS j,'
    " '\\x00ff10'::bytea AS b, ARRAY[1, 2, NULL]::int[] AS ia,"
    " ARRAY['x', 'y z', NULL]::text[] AS ta,"
    " 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS u,"
    " '1 year 2 mons 3 days 04:05:06.5'::interval AS iv"
    " FROM ce_mark({p}) AS m"
)


# ------------------------------------------------------------------ stacks


@pytest.fixture(scope="module")
def own_database(pg_databases: tuple[str, str]) -> Iterator[tuple[str, str]]:
    with private_database(OWN_DB) as dsn:
        yield dsn, pg_databases[1]


def _own(doors: Iterator[Door]) -> Iterator[PrivateDoor]:
    for door in doors:
        yield PrivateDoor(door.stack, door.host, door.port, OWN_DB)


@pytest.fixture(scope="module")
def door(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    own_database: tuple[str, str],
    own_redis: Callable[[int], str],
) -> Iterator[Door]:
    doc = door_doc(own_database, own_redis(0))
    for door in _own(open_door(tmp_path_factory.mktemp("door"), doc)):
        with logs_if_failed(request, door.stack):
            yield door


@pytest.fixture(scope="module")
def regions(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    own_database: tuple[str, str],
    own_redis: Callable[[int], str],
) -> Iterator[tuple[Door, Door]]:
    """One origin, a node in region-a and one in region-b (own Redis each), a door each."""
    a, b = own_redis(1), own_redis(2)
    doc = door_doc(own_database, a, node={"sync_grace": 2.0})
    stack = Stack(tmp_path_factory.mktemp("regions"), doc)
    with started(stack, regions=()) as st, logs_if_failed(request, st):
        doors = []
        for region, redis_url in (("region-a", a), ("region-b", b)):
            port = free_port()
            st.start_node(region, redis_url, extra_args=["--pg-listen", f"127.0.0.1:{port}"])
            doors.append(PrivateDoor(st, "127.0.0.1", port, OWN_DB))
        yield doors[0], doors[1]


@pytest.fixture
def fragile(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    own_database: tuple[str, str],
    own_redis: Callable[[int], str],
) -> Iterator[Door]:
    """A stack of this test's own, which the test may stop; tenant acme has a single
    database connection here, and waits for one at most 0.5 s."""
    url = own_redis(3)
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()
    doc = door_doc(own_database, url, origin={"pool_timeout": 0.5})
    doc["tenants"][0]["pool_max_size"] = 1
    for door in _own(open_door(tmp_path, doc)):
        with logs_if_failed(request, door.stack):
            yield door


@contextlib.contextmanager
def logs_if_failed(request: pytest.FixtureRequest, stack: Stack) -> Iterator[None]:
    """Print the stack's logs at teardown if a test using it failed (pytest shows them)."""
    failed = request.session.testsfailed
    yield
    if request.session.testsfailed > failed:
        print(stack.dump_logs())


# ------------------------------------------------------------------ helpers


def psql(url: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """The machine's psql, without ~/.psqlrc, unaligned, tuples only."""
    return subprocess.run(
        ["psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", url, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PGCONNECT_TIMEOUT": "10"},
    )


async def direct_execute(door: Door, statement: str, *args: Any) -> None:
    conn = await asyncpg.connect(door.direct())
    try:
        await conn.execute(statement, *args)
    finally:
        await conn.close()


async def direct_fetch(door: Door, statement: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(door.direct())
    try:
        rows: list[asyncpg.Record] = await conn.fetch(statement, *args)
        return rows
    finally:
        await conn.close()


def last_status(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SHOW cache_edge.last_status").fetchone()
    assert row is not None
    return str(row[0])


async def alast_status(conn: asyncpg.Connection) -> str:
    return str(await conn.fetchval("SHOW cache_edge.last_status"))


async def first_value(conn: asyncpg.Connection, statement: str, *args: Any) -> Any:
    """The first value of the first row, by ``fetch``: asyncpg's fetchval and fetchrow send
    Execute with a row limit of 1, which is never served from the cache."""
    rows = await conn.fetch(statement, *args)
    return rows[0][0]


async def executions(m: str) -> int:
    """How many times PostgreSQL executed ce_mark(m) in this run's database."""
    return await count_executions(dsn_for(OWN_DB), m)


def traceparent() -> str:
    return f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"


def show(messages: list[bytes]) -> str:
    """A step's messages, one readable line each (for assertion messages)."""
    return "\n".join(describe(m) for m in messages)


async def door_metrics(door: Door) -> str:
    node = door.stack.nodes()[0]
    async with aiohttp.ClientSession() as http, http.get(node.url + "/metrics") as resp:
        return await resp.text()


# ------------------------------------------------------------------ 1. psql


@pytest.mark.parametrize(
    "hint",
    [
        "/* cache ttl=60 tags=psql_short */",
        "/*cache_tags='psql_commenter',cache_ttl='60',traceparent='{tp}'*/",
    ],
    ids=["short", "sqlcommenter"],
)
async def test_psql_hinted_select_twice_is_executed_once(door: Door, hint: str) -> None:
    m = marker("psql")
    statement = f"SELECT ce_mark('{m}') AS m, 42 AS answer {hint.format(tp=traceparent())}"
    show_status = "SHOW cache_edge.last_status"
    # -c several times: one session, each -c one simple Query.
    out = psql(door.url(), "-c", statement, "-c", show_status, "-c", statement, "-c", show_status)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [f"{m}|42", "miss", f"{m}|42", "ttl"]
    assert out.stderr == ""
    assert await executions(m) == 1
    # New sessions, the hint first (-c), then a script on stdin (psql sends the ';'):
    # served from the same entry.
    first = f"{hint.format(tp=traceparent())} SELECT ce_mark('{m}') AS m, 42 AS answer"
    out = psql(door.url(), "-c", first, "-c", show_status)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [f"{m}|42", "ttl"]
    out = psql(door.url(), stdin=f"{statement};\n{show_status};\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [f"{m}|42", "ttl"]
    assert await executions(m) == 1
    metrics = await door_metrics(door)
    assert 'cache_edge_node_door_answers_total{door="postgres",status="ttl",tenant="acme"}' in (
        metrics
    ), [line for line in metrics.splitlines() if "door_answers" in line]


# ------------------------------------------------------------------ 2. purge across regions


async def _purge(url: str, body: dict[str, object]) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        reply = await post(http, url, body, API_KEY_A, path="/v1/invalidate", fmt="json")
    assert reply.status == 200, reply.body
    return reply.body  # type: ignore[no-any-return]


async def _wait_live(url: str, names: set[str]) -> None:
    """Purge a throwaway tag until the origin lists every region as live."""
    body: dict[str, Any] = {}
    for _ in range(100):
        body = await _purge(url, {"tags": ["warmup"], "wait": 2})
        if set(body["appliedRegions"]) >= names:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"regions never became live: {body}")


async def test_purge_by_tag_in_another_region_reaches_the_door(
    regions: tuple[Door, Door],
) -> None:
    door_a, door_b = regions
    node_b = door_b.stack.nodes()[1]
    table = f"{T}_products"
    await direct_execute(door_a, f"CREATE TABLE {table} (id int PRIMARY KEY, name text)")
    await direct_execute(door_a, f"INSERT INTO {table} VALUES (1, 'apple')")
    await _wait_live(node_b.url, {"region-a", "region-b"})
    m = marker("purge")
    read = (
        f"SELECT p.id, p.name, m FROM ce_mark('{m}') AS m, {table} AS p ORDER BY p.id"
        " /* cache ttl=300 tags=products */"
    )
    status = "SHOW cache_edge.last_status"
    out = psql(door_a.url(), "-c", read, "-c", status, "-c", read, "-c", status)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [f"1|apple|{m}", "miss", f"1|apple|{m}", "ttl"]
    assert await executions(m) == 1
    # Changed behind the cache's back: the entry (rightly, per its ttl) still answers.
    await direct_execute(door_a, f"INSERT INTO {table} VALUES (2, 'pear')")
    out = psql(door_a.url(), "-c", read, "-c", status)
    assert out.stdout.splitlines() == [f"1|apple|{m}", "ttl"], out.stderr
    done = await _purge(node_b.url, {"tags": ["products"], "wait": 10})
    assert {"region-a", "region-b"} <= set(done["appliedRegions"]), done
    assert not {"region-a", "region-b"} & set(done["pendingRegions"]), done
    out = psql(door_a.url(), "-c", read, "-c", status, "-c", read, "-c", status)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        f"1|apple|{m}",
        f"2|pear|{m}",
        "miss",
        f"1|apple|{m}",
        f"2|pear|{m}",
        "ttl",
    ]
    assert await executions(m) == 2
    # Region b's door has its own entries (own Redis), with the same rows.
    out = psql(door_b.url(), "-c", read, "-c", status)
    assert out.stdout.splitlines() == [f"1|apple|{m}", f"2|pear|{m}", "miss"], out.stderr
    assert await executions(m) == 3


# ------------------------------------------------------------------ 3. psycopg and asyncpg


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
async def test_psycopg_hit_equals_direct(door: Door, binary: bool) -> None:
    m = marker("pg3")
    statement = TYPES_SQL.replace("{p}", "%s") + " /*cache_ttl='60'*/"
    with psycopg.connect(door.direct()) as conn:
        expected = conn.cursor(binary=binary).execute(statement, (m,)).fetchall()
    with psycopg.connect(door.url(), autocommit=True) as conn:
        seen = []
        for _ in range(2):
            seen.append(conn.cursor(binary=binary).execute(statement, (m,)).fetchall())
            seen.append([(last_status(conn),)])
        assert seen == [expected, [("miss",)], expected, [("ttl",)]]
        # prepared on the server (Parse named, then Bind/Describe/Execute/Sync): same entry
        again = conn.cursor(binary=binary).execute(statement, (m,), prepare=True).fetchall()
        assert again == expected and last_status(conn) == "ttl"
        again = conn.cursor(binary=binary).execute(statement, (m,), prepare=True).fetchall()
        assert again == expected and last_status(conn) == "ttl"
    row = expected[0]
    assert row[1] == Decimal("12345.678900") and row[5] == b"\x00\xff\x10"
    assert row[3] == dt.datetime(2024, 3, 1, 10, 34, 56, 789000, tzinfo=dt.UTC)
    assert row[4] == {"a": [1, 2.5, {"b": None}], "c": "é"}
    assert row[6] == [1, 2, None] and row[7] == ["x", "y z", None]
    assert row[8] == uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
    assert await executions(m) == 2  # once directly, once through the door


async def test_psycopg_inside_transactions(door: Door) -> None:
    """autocommit=False: psycopg opens a transaction, where nothing is cached (it sees its
    own writes). A transaction begun READ ONLY opts hinted reads in; a failed one never
    gets a cached answer."""
    m = marker("pg3tx")
    statement = "SELECT ce_mark(%s) AS m /* cache ttl=60 */"
    with psycopg.connect(door.url(), autocommit=False) as conn:
        for _ in range(2):
            assert conn.execute(statement, (m,)).fetchall() == [(m,)]
            assert conn.info.transaction_status == TransactionStatus.INTRANS
            assert last_status(conn) == "none"
        conn.commit()
        assert await executions(m) == 2  # executed twice: no hit
        conn.read_only = True  # BEGIN READ ONLY
        for status in ("miss", "ttl"):
            assert conn.execute(statement, (m,)).fetchall() == [(m,)]
            assert conn.info.transaction_status == TransactionStatus.INTRANS
            assert last_status(conn) == status
        conn.commit()
        assert await executions(m) == 3
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1/0")
        assert conn.info.transaction_status == TransactionStatus.INERROR
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute(statement, (m,))
        conn.rollback()
    # outside a transaction: the entry the read-only transaction stored
    with psycopg.connect(door.url(), autocommit=True) as conn:
        assert conn.execute(statement, (m,)).fetchall() == [(m,)]
        assert last_status(conn) == "ttl"
    assert await executions(m) == 3


async def _text_codecs(conn: asyncpg.Connection) -> None:
    """Ask for these types' results in text format (asyncpg asks for binary otherwise)."""
    for name in ("numeric", "timestamptz", "jsonb", "bytea", "uuid", "interval", "int4"):
        await conn.set_type_codec(
            name, schema="pg_catalog", encoder=str, decoder=str, format="text"
        )


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
async def test_asyncpg_hit_equals_direct(door: Door, binary: bool) -> None:
    m = marker("apg")
    statement = TYPES_SQL.replace("{p}", "$1") + " /* cache ttl=60 */"
    conn = await asyncpg.connect(door.direct())
    try:
        if not binary:
            await _text_codecs(conn)
        expected = [tuple(r) for r in await conn.fetch(statement, m)]
    finally:
        await conn.close()
    conn = await asyncpg.connect(door.url())
    try:
        if not binary:
            await _text_codecs(conn)
        for status in ("miss", "ttl", "ttl"):
            assert [tuple(r) for r in await conn.fetch(statement, m)] == expected
            assert await alast_status(conn) == status
    finally:
        await conn.close()
    # a second connection (statement prepared anew): the same entry
    conn = await asyncpg.connect(door.url())
    try:
        if not binary:
            await _text_codecs(conn)
        assert [tuple(r) for r in await conn.fetch(statement, m)] == expected
        assert await alast_status(conn) == "ttl"
    finally:
        await conn.close()
    row = expected[0]
    if binary:
        assert row[1] == Decimal("12345.678900") and row[5] == b"\x00\xff\x10"
        # asyncpg reads a year as 365 days and a month as 30: 365 + 2 * 30 + 3 days
        assert row[9] == dt.timedelta(days=428, seconds=4 * 3600 + 5 * 60 + 6.5)
    else:
        assert row[1] == "12345.678900" and row[5] == "\\x00ff10"
        assert row[9] == "1 year 2 mons 3 days 04:05:06.5"
    assert await executions(m) == 2  # once directly, once through the door


@pytest.mark.parametrize("result_format", [0, 1], ids=["text", "binary"])
async def test_hits_replay_postgresql_bytes(door: Door, result_format: int) -> None:
    """The same hinted statement captured directly and through the node (miss, then hit,
    in new sessions each): every message of the step is byte-identical."""
    m = marker("bytes")
    hinted = TYPES_SQL.replace("{p}", "$1") + " /*cache_ttl='60'*/"
    steps = [
        Extended(hinted, params=[m.encode()], result_formats=[result_format]),
    ]
    direct = await capture(Target.from_dsn(door.direct()), steps)
    node = Target.from_dsn(door.url())
    miss = await capture(node, [*steps, Simple("SHOW cache_edge.last_status")])
    hit = await capture(node, [*steps, Simple("SHOW cache_edge.last_status")])
    kinds = [m[:1] for m in direct.steps[0]]
    assert kinds == [b"1", b"2", b"T", b"D", b"C", b"Z"], show(direct.steps[0])
    assert miss.steps[0] == direct.steps[0], show(miss.steps[0]) + "\n--\n" + show(direct.steps[0])
    assert hit.steps[0] == direct.steps[0], show(hit.steps[0]) + "\n--\n" + show(direct.steps[0])
    assert b"miss" in miss.steps[1][1] and b"ttl" in hit.steps[1][1]
    # the simple protocol: RowDescription, DataRow, CommandComplete, ReadyForQuery
    simple = Simple(TYPES_SQL.replace("{p}", f"'{m}'") + " /* cache ttl=60 */")
    direct = await capture(Target.from_dsn(door.direct()), [simple])
    miss = await capture(node, [simple, Simple("SHOW cache_edge.last_status")])
    hit = await capture(node, [simple, Simple("SHOW cache_edge.last_status")])
    assert [m[:1] for m in direct.steps[0]] == [b"T", b"D", b"C", b"Z"]
    assert miss.steps[0] == direct.steps[0] == hit.steps[0], show(hit.steps[0])
    assert b"miss" in miss.steps[1][1] and b"ttl" in hit.steps[1][1]
    assert await executions(m) == 4  # two directly, one miss per protocol


# ------------------------------------------------------------------ 4. keys


async def test_statements_differing_only_in_their_hint_share_an_entry(door: Door) -> None:
    m = marker("keys")
    statement = (
        "SELECT ce_mark(%s) AS m, 1 AS one"
        " /*cache_tags='k1%%2Ck2',cache_ttl='60',route='/a',traceparent='{tp}'*/"
    )
    with psycopg.connect(door.url(), autocommit=True) as conn:
        for status in ("miss", "ttl"):
            sql_text = statement.replace("{tp}", traceparent())
            assert conn.execute(sql_text, (m,)).fetchall() == [(m, 1)]
            assert last_status(conn) == status
        # the same strategy in the short form, at the start: the same entry
        same = "/* cache ttl=60 tags=k1,k2 */ SELECT ce_mark(%s) AS m, 1 AS one"
        assert conn.execute(same, (m,)).fetchall() == [(m, 1)]
        assert last_status(conn) == "ttl"
        # another strategy is another entry (as for /v1/query: ttl, swr and tags are keyed)
        other = "SELECT ce_mark(%s) AS m, 1 AS one /* cache ttl=30 tags=k1,k2 */"
        assert conn.execute(other, (m,)).fetchall() == [(m, 1)]
        assert last_status(conn) == "miss"
    assert await executions(m) == 2


async def test_parameter_values_are_part_of_the_key(door: Door) -> None:
    m = marker("params")
    statement = "SELECT ce_mark(%s) AS m, %s::int AS x /* cache ttl=60 */"
    with psycopg.connect(door.url(), autocommit=True) as conn:
        for x, status in ((1, "miss"), (2, "miss"), (1, "ttl"), (2, "ttl")):
            assert conn.execute(statement, (m, x)).fetchall() == [(m, x)]
            assert last_status(conn) == status
    assert await executions(m) == 2


async def test_time_zone_is_part_of_the_key(door: Door) -> None:
    m = marker("tz")
    statement = (
        "SELECT ce_mark(%s) AS m, '2024-01-01 12:00+00'::timestamptz AS ts,"
        " '2024-01-01 12:00+00'::timestamptz::text AS shown /* cache ttl=60 */"
    )
    utc = dt.datetime(2024, 1, 1, 12, tzinfo=dt.UTC)
    with psycopg.connect(door.url(), autocommit=True) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        (row,) = conn.execute(statement, (m,)).fetchall()
        assert row == (m, utc, "2024-01-01 12:00:00+00") and last_status(conn) == "miss"
        conn.execute("SET TimeZone = 'Asia/Tokyo'")
        (row,) = conn.execute(statement, (m,)).fetchall()
        assert row == (m, utc, "2024-01-01 21:00:00+09") and last_status(conn) == "miss"
        assert row[1].utcoffset() == dt.timedelta(hours=9)
        (row,) = conn.execute(statement, (m,)).fetchall()
        assert row[2] == "2024-01-01 21:00:00+09" and last_status(conn) == "ttl"
        conn.execute("SET TimeZone = 'UTC'")
        (row,) = conn.execute(statement, (m,)).fetchall()
        assert row == (m, utc, "2024-01-01 12:00:00+00") and last_status(conn) == "ttl"
        assert row[1].utcoffset() == dt.timedelta(0)
    assert await executions(m) == 2
    # a startup TimeZone is a setting like any other: Tokyo's entry
    with psycopg.connect(door.url(options="-c TimeZone=Asia/Tokyo"), autocommit=True) as conn:
        (row,) = conn.execute(statement, (m,)).fetchall()
        assert row[2] == "2024-01-01 21:00:00+09" and last_status(conn) == "ttl"
    assert await executions(m) == 2


async def test_text_and_binary_results_are_separate_entries(door: Door) -> None:
    m = marker("fmt")
    statement = "SELECT ce_mark(%s) AS m, 1.5::numeric AS n, 7::int AS i /* cache ttl=60 */"
    with psycopg.connect(door.url(), autocommit=True) as conn:
        for binary, status in ((False, "miss"), (True, "miss"), (False, "ttl"), (True, "ttl")):
            rows = conn.cursor(binary=binary).execute(statement, (m,)).fetchall()
            assert rows == [(m, Decimal("1.5"), 7)] and last_status(conn) == status
    assert await executions(m) == 2


async def test_settings_changed_without_a_set_tag_run_uncached(door: Door) -> None:
    """set_config(), a DO block and a function change settings with no SET command tag:
    the node cannot key on them, so that session's hinted reads run uncached, and right."""
    m = marker("unset")
    statement = (
        "SELECT ce_mark(%s) AS m, '2024-01-01 12:00+00'::timestamptz::text AS shown,"
        " '\\x00ff'::bytea::text AS b /* cache ttl=60 */"
    )
    url = door.url(options="-c TimeZone=UTC -c bytea_output=hex")
    utc, hex_ = "2024-01-01 12:00:00+00", "\\x00ff"
    tokyo, escaped = "2024-01-01 21:00:00+09", "\\000\\377"
    with psycopg.connect(url, autocommit=True) as conn:
        for status in ("miss", "ttl"):
            assert conn.execute(statement, (m,)).fetchall() == [(m, utc, hex_)]
            assert last_status(conn) == status
    function = f"{T}_to_tokyo"
    await direct_execute(
        door,
        f"CREATE FUNCTION {function}() RETURNS void LANGUAGE plpgsql"
        " AS $$BEGIN PERFORM set_config('TimeZone', 'Asia/Tokyo', false); END$$",
    )
    cases: list[tuple[str, tuple[str, ...], str, str]] = [
        # set_config in a simple query: TimeZone is reported (ParameterStatus)
        ("SELECT set_config('TimeZone', 'Asia/Tokyo', false)", (), tokyo, hex_),
        # set_config with parameters (extended protocol); bytea_output is not reported
        ("SELECT set_config(%s, %s, false)", ("bytea_output", "escape"), utc, escaped),
        # SET inside a DO block: the command tag is DO
        ("DO $$BEGIN EXECUTE 'SET bytea_output = escape'; END$$", (), utc, escaped),
        # a function that calls set_config: only PostgreSQL's ParameterStatus tells
        (f"SELECT {function}()", (), tokyo, hex_),
    ]
    for change, args, shown, b in cases:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(change, args or None)
            for _ in range(2):
                rows = conn.execute(statement, (m,)).fetchall()
                assert rows == [(m, shown, b)], change
                assert last_status(conn) == "none", change
    assert await executions(m) == 1 + 2 * len(cases)
    metrics = await door_metrics(door)
    assert 'cache_edge_node_pg_unmodelled_sessions_total{tenant="acme"}' in metrics
    # settings that cannot change a result's bytes keep the session cached (asyncpg turns
    # jit off and back around its type introspection)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "SELECT set_config('jit', 'off', false), set_config('jit', %s, false)", ("on",)
        )
        conn.execute("SELECT set_config('application_name', 'renamed', false)")
        assert conn.execute(statement, (m,)).fetchall() == [(m, utc, hex_)]
        assert last_status(conn) == "ttl"
    assert await executions(m) == 1 + 2 * len(cases)


async def test_a_cached_read_never_leaves_settings_on_pooled_connections(door: Door) -> None:
    """The origin runs a cacheable read on a pooled connection: a setting its statement
    changes must not stay there for the tenant's next sessions. A hinted set_config() runs
    in the client's own session instead (as PostgreSQL would), uncached."""
    function = f"{T}_escape"
    await direct_execute(
        door,
        f"CREATE FUNCTION {function}() RETURNS int LANGUAGE plpgsql"
        " AS $$BEGIN PERFORM set_config('bytea_output', 'escape', false); RETURN 1; END$$",
    )
    m = marker("leak")
    with psycopg.connect(door.url(), autocommit=True) as conn:
        hinted = f"SELECT {function}() AS one, ce_mark(%s) AS m /* cache ttl=60 */"
        assert conn.execute(hinted, (m,)).fetchall() == [(1, m)]
        assert last_status(conn) == "miss"
        assert conn.execute("SHOW bytea_output").fetchall() == [("hex",)]
        statement = "SELECT set_config('bytea_output', 'escape', false) AS v /* cache ttl=60 */"
        assert conn.execute(statement).fetchall() == [("escape",)]
        assert last_status(conn) == "none"
        assert conn.execute("SHOW bytea_output").fetchall() == [("escape",)]
    for _ in range(6):
        with psycopg.connect(door.url(), autocommit=True) as conn:
            assert conn.execute("SHOW bytea_output").fetchall() == [("hex",)]
            assert conn.execute("SELECT '\\x00ff'::bytea::text").fetchall() == [("\\x00ff",)]
    assert await executions(m) == 1


async def test_a_session_that_sets_a_setting_keeps_its_database_connection(door: Door) -> None:
    """The settings the keys above depend on are read back from the database when a
    session changes them; the connection stays in the pool (only a role change closes it)."""
    with psycopg.connect(door.url(), autocommit=True) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        conn.execute("SET TimeZone = 'Asia/Tokyo'")
        again = conn.execute("SELECT pg_backend_pid(), current_setting('TimeZone')").fetchone()
        assert again == (row[0], "Asia/Tokyo")  # idle connections are reused newest first
    origin = door.stack.origin
    assert origin is not None
    assert "wire_role_changed" not in origin.logs()


# ------------------------------------------------------------------ 5. SET cache_edge.*


async def test_set_cache_edge_ttl_with_psycopg(door: Door) -> None:
    m = marker("setpg")
    statement = "SELECT ce_mark(%s) AS m"
    with psycopg.connect(door.url(), autocommit=True) as conn:
        assert conn.execute(statement, (m,)).fetchall() == [(m,)]
        assert last_status(conn) == "none"
        assert conn.execute("SHOW cache_edge.ttl").fetchall() == [("",)]
        conn.execute("SET cache_edge.ttl = 60")
        assert conn.execute("SHOW cache_edge.ttl").fetchall() == [("60",)]
        for status in ("miss", "ttl"):
            assert conn.execute(statement, (m,)).fetchall() == [(m,)]
            assert last_status(conn) == status
        conn.execute("RESET cache_edge.ttl")
        assert conn.execute("SHOW cache_edge.ttl").fetchall() == [("",)]
        assert conn.execute(statement, (m,)).fetchall() == [(m,)]
        assert last_status(conn) == "none"
        with pytest.raises(psycopg.errors.UndefinedObject) as undefined:
            conn.execute("SET cache_edge.nonsense = 1")
        assert undefined.value.sqlstate == "42704"
        with pytest.raises(psycopg.errors.InvalidParameterValue) as invalid:
            conn.execute("SET cache_edge.ttl = 'abc'")
        assert invalid.value.sqlstate == "22023"
        assert conn.execute("SHOW cache_edge.ttl").fetchall() == [("",)]
        assert conn.info.transaction_status == TransactionStatus.IDLE
    assert await executions(m) == 3  # unhinted, the miss, and after RESET
    # Startup options work the same way.
    n = marker("setopt")
    with psycopg.connect(door.url(options="-c cache_edge.ttl=60"), autocommit=True) as conn:
        assert conn.execute("SHOW cache_edge.ttl").fetchall() == [("60",)]
        for status in ("miss", "ttl"):
            assert conn.execute(statement, (n,)).fetchall() == [(n,)]
            assert last_status(conn) == status
    assert await executions(n) == 1
    # and a bad one is refused at startup, as PostgreSQL refuses a bad setting
    for options, problem in (
        ("-c cache_edge.ttl=abc", "cache hint: ttl must be a whole number of seconds"),
        ("-c cache_edge.nope=1", 'unrecognized configuration parameter "cache_edge.nope"'),
    ):
        with pytest.raises(psycopg.OperationalError, match=problem):
            psycopg.connect(door.url(options=options), autocommit=True)


async def test_set_cache_edge_ttl_with_asyncpg(door: Door) -> None:
    m = marker("setapg")
    statement = "SELECT ce_mark($1) AS m"
    conn = await asyncpg.connect(door.url())
    try:
        assert await first_value(conn, statement, m) == m
        assert await alast_status(conn) == "none"
        await conn.execute("SET cache_edge.ttl = 60")  # simple protocol
        assert await conn.fetchval("SHOW cache_edge.ttl") == "60"  # prepared
        for status in ("miss", "ttl"):
            assert await first_value(conn, statement, m) == m
            assert await alast_status(conn) == status
        await conn.fetch("RESET cache_edge.ttl")  # prepared: Parse/Describe, Bind/Execute
        assert await conn.fetchval("SHOW cache_edge.ttl") == ""
        assert await first_value(conn, statement, m) == m
        assert await alast_status(conn) == "none"
        await conn.fetch("SET cache_edge.ttl = 60")  # prepared too
        assert await conn.fetchval("SHOW cache_edge.ttl") == "60"
        assert await first_value(conn, statement, m) == m
        assert await alast_status(conn) == "ttl"
        for run in (conn.execute, conn.fetch):
            with pytest.raises(asyncpg.UndefinedObjectError) as undefined:
                await run("SET cache_edge.nonsense = 1")
            assert undefined.value.sqlstate == "42704"
            with pytest.raises(asyncpg.InvalidParameterValueError) as invalid:
                await run("SET cache_edge.ttl = 'abc'")
            assert invalid.value.sqlstate == "22023"
        assert await conn.fetchval("SHOW cache_edge.ttl") == "60"
        assert await conn.fetchval("SELECT 1") == 1  # the session is still usable
    finally:
        await conn.close()
    assert await executions(m) == 3


# ------------------------------------------------------------------ 6. writes, bad hints


async def test_hinted_write_is_refused_and_writes_nothing(door: Door) -> None:
    table = f"{T}_writes"
    await direct_execute(door, f"CREATE TABLE {table} (k text)")
    m = marker("write")
    with psycopg.connect(door.url(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction) as refused:
            conn.execute(f"INSERT INTO {table} VALUES (%s) /* cache ttl=60 */", (m,))
        assert refused.value.sqlstate == "25006"
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute(
                f"WITH w AS (INSERT INTO {table} VALUES (%s) RETURNING k) SELECT k FROM w"
                " /*cache_ttl='60'*/",
                (m,),
            )
        assert conn.info.transaction_status == TransactionStatus.IDLE
        assert last_status(conn) == "none"
    conn2 = await asyncpg.connect(door.url())
    try:
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await conn2.execute(f"INSERT INTO {table} VALUES ('{m}') /* cache ttl=60 */")
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await conn2.execute(f"INSERT INTO {table} VALUES ($1) /* cache ttl=60 */", m)
        # the same write without a hint goes through
        await conn2.execute(f"INSERT INTO {table} VALUES ($1)", m + "-plain")
    finally:
        await conn2.close()
    rows = await direct_fetch(door, f"SELECT k FROM {table} ORDER BY k")
    assert [r["k"] for r in rows] == [m + "-plain"]


@pytest.mark.parametrize(
    "hint",
    [
        "/* cache ttl=abc */",
        "/* cache ttl */",
        "/*cache_ttl='soon'*/",
        "/* cache ttl=60 bogus=1 */",
    ],
)
async def test_malformed_hint_warns_and_runs_uncached(door: Door, hint: str) -> None:
    m = marker("bad")
    statement = f"SELECT ce_mark(%s) AS m {hint}"
    notices: list[tuple[str | None, str | None, str]] = []

    def on_notice(diag: psycopg.errors.Diagnostic) -> None:  # valid during the call only
        notices.append((diag.severity_nonlocalized, diag.sqlstate, diag.message_primary or ""))

    with psycopg.connect(door.url(), autocommit=True) as conn:
        conn.add_notice_handler(on_notice)
        for _ in range(2):
            assert conn.execute(statement, (m,)).fetchall() == [(m,)]
            assert last_status(conn) == "none"
    assert len(notices) == 2, notices
    for severity, sqlstate, said in notices:
        assert severity == "WARNING" and sqlstate == "01000"
        assert said.startswith("cache hint") and said.endswith("the statement runs uncached")
    assert await executions(m) == 2
    # asyncpg: prepared, then Bind/Execute each time; the notice comes with each run
    n = marker("bad-apg")
    messages: list[asyncpg.PostgresLogMessage] = []
    conn = await asyncpg.connect(door.url())
    try:
        conn.add_log_listener(lambda _c, msg: messages.append(msg))
        for _ in range(2):
            assert await first_value(conn, statement.replace("%s", "$1"), n) == n
        await asyncio.sleep(0.1)  # log listeners are called soon, not at once
    finally:
        await conn.close()
    assert [msg.severity for msg in messages] == ["WARNING", "WARNING"]
    assert await executions(n) == 2


# ------------------------------------------------------------------ 7. row limits


async def test_row_limited_execute_is_never_cached(door: Door) -> None:
    m = marker("limit")
    hinted = "SELECT g, m FROM ce_mark($1) AS m, generate_series(1, 5) AS g /* cache ttl=60 */"
    limited = Extended(hinted, params=[m.encode()], max_rows=2)
    node = Target.from_dsn(door.url())
    direct = await capture(Target.from_dsn(door.direct()), [limited])
    kinds = [x[:1] for x in direct.steps[0]]
    assert kinds.count(b"s") == 2 and kinds.count(b"D") == 5, show(direct.steps[0])
    for _ in range(2):
        via = await capture(node, [limited, Simple("SHOW cache_edge.last_status")])
        assert via.steps[0] == direct.steps[0], show(via.steps[0])
        assert b"none" in via.steps[1][1]
    assert await executions(m) == 3  # once directly, twice through the node
    # Execute(2) and Sync in one write: PortalSuspended, and the Sync ends the portal
    async with await RawConnection.connect(node) as conn:
        for _ in range(2):
            await conn.send(
                parse_msg("", hinted)
                + bind_msg("", "", [m.encode()])
                + describe_msg(b"P", "")
                + execute_msg("", 2)
                + SYNC
            )
            got = await conn.read_until_ready()
            assert [x[:1] for x in got] == [b"1", b"2", b"T", b"D", b"D", b"s", b"Z"], show(got)
    assert await executions(m) == 5
    # asyncpg's fetchrow and fetchval: Execute(1) + Sync
    conn2 = await asyncpg.connect(door.url())
    try:
        for _ in range(2):
            row = await conn2.fetchrow(hinted, m)
            assert row is not None and tuple(row) == (1, m)
            assert await conn2.fetchval(hinted, m) == 1
            assert await alast_status(conn2) == "none"
    finally:
        await conn2.close()
    assert await executions(m) == 9
    # nothing was stored: the first unlimited run is a miss
    full = await capture(
        node, [Extended(hinted, params=[m.encode()]), Simple("SHOW cache_edge.last_status")]
    )
    assert [x[:1] for x in full.steps[0]].count(b"D") == 5
    assert b"miss" in full.steps[1][1]
    assert await executions(m) == 10


# ------------------------------------------------------------------ 8. SQLAlchemy


SA_HINT = "/*cache_tags='sa',cache_ttl='60',traceparent='{tp}'*/"


def _sa_statements(m: str) -> tuple[Any, Any, Any]:
    """A text() statement with a sqlcommenter comment appended, the same hint on a Core
    select() (suffix_with), and a plain text() statement for SET cache_edge.ttl."""
    hinted = text(f"SELECT ce_mark(:m) AS m, 7 AS seven {SA_HINT.format(tp=traceparent())}")
    core_select = select(func.ce_mark(bindparam("m", type_=String)).label("m")).suffix_with(
        SA_HINT.format(tp=traceparent())
    )
    plain = text("SELECT ce_mark(:m) AS m, 7 AS seven")
    return hinted, core_select, plain


def test_sqlalchemy_psycopg_sqlcommenter_and_set(door: Door) -> None:
    url = door.url().replace("postgresql://", "postgresql+psycopg://", 1)
    engine = create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    m, n, k = marker("sa"), marker("sa-core"), marker("sa-set")
    hinted, core_select, plain = _sa_statements(m)
    statuses = []
    try:
        with engine.connect() as conn:
            for statement, value, expected in (
                (hinted, m, [(m, 7)]),
                (hinted, m, [(m, 7)]),
                (core_select, n, [(n,)]),
                (core_select, n, [(n,)]),
            ):
                assert conn.execute(statement, {"m": value}).all() == expected
                statuses.append(conn.exec_driver_sql("SHOW cache_edge.last_status").scalar())
            conn.exec_driver_sql("SET cache_edge.ttl = 60")
            for _ in range(2):
                assert conn.execute(plain, {"m": k}).all() == [(k, 7)]
                statuses.append(conn.exec_driver_sql("SHOW cache_edge.last_status").scalar())
    finally:
        engine.dispose()
    assert statuses == ["miss", "ttl"] * 3
    assert [asyncio.run(executions(x)) for x in (m, n, k)] == [1, 1, 1]


async def test_sqlalchemy_asyncpg_sqlcommenter_and_set(door: Door) -> None:
    url = door.url().replace("postgresql://", "postgresql+asyncpg://", 1)
    engine = create_async_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    m, n, k = marker("saa"), marker("saa-core"), marker("saa-set")
    hinted, core_select, plain = _sa_statements(m)
    statuses = []
    try:
        async with engine.connect() as conn:
            for statement, value, expected in (
                (hinted, m, [(m, 7)]),
                (hinted, m, [(m, 7)]),
                (core_select, n, [(n,)]),
                (core_select, n, [(n,)]),
            ):
                assert (await conn.execute(statement, {"m": value})).all() == expected
                shown = await conn.exec_driver_sql("SHOW cache_edge.last_status")
                statuses.append(shown.scalar())
            await conn.exec_driver_sql("SET cache_edge.ttl = 60")
            for _ in range(2):
                assert (await conn.execute(plain, {"m": k})).all() == [(k, 7)]
                shown = await conn.exec_driver_sql("SHOW cache_edge.last_status")
                statuses.append(shown.scalar())
    finally:
        await engine.dispose()
    assert statuses == ["miss", "ttl"] * 3
    assert [await executions(x) for x in (m, n, k)] == [1, 1, 1]


# ------------------------------------------------------------------ 9, 10. stale answers


STALE_READ = "SELECT ce_mark(%s) AS m, 7 AS seven /* cache ttl=1 stale_if_error=60 */"


@pytest.mark.slow
async def test_stale_if_error_when_the_origin_is_down(fragile: Door) -> None:
    """The origin stopped: past ttl, a session opened before and one opened while it is
    away (settings the node has seen) both get the old rows, ``stale``; one execution."""
    m = marker("sie")
    with psycopg.connect(fragile.url(), autocommit=True) as conn:
        assert conn.execute(STALE_READ, (m,)).fetchall() == [(m, 7)]
        assert last_status(conn) == "miss"
        assert await executions(m) == 1
        origin = fragile.stack.origin
        assert origin is not None
        origin.stop()
        await asyncio.sleep(1.2)  # past ttl
        # a session opened before the origin went away...
        assert conn.execute(STALE_READ, (m,)).fetchall() == [(m, 7)]
        assert last_status(conn) == "stale"
    # ...and one opened while it is away
    with psycopg.connect(fragile.url(), autocommit=True) as conn:
        assert conn.execute(STALE_READ, (m,)).fetchall() == [(m, 7)]
        assert last_status(conn) == "stale"
    assert await executions(m) == 1


@pytest.mark.slow
async def test_stale_if_error_when_the_database_is_out_of_reach(fragile: Door) -> None:
    """The origin is up but cannot get a database connection (the tenant has one, held
    by a transaction; pool_timeout 0.5 s): past ttl, the old rows, ``stale``."""
    m, n = marker("sie-db"), marker("sie-none")
    with psycopg.connect(fragile.url(), autocommit=True) as conn:
        assert conn.execute(STALE_READ, (m,)).fetchall() == [(m, 7)]
        assert last_status(conn) == "miss"
        with psycopg.connect(fragile.url()) as holder:
            holder.execute("SELECT 1")  # BEGIN: the tenant's one connection is taken
            assert holder.info.transaction_status == TransactionStatus.INTRANS
            await asyncio.sleep(1.2)  # past ttl
            assert conn.execute(STALE_READ, (m,)).fetchall() == [(m, 7)]
            assert last_status(conn) == "stale"
            # nothing to fall back on: the pool's error, as PostgreSQL would send it
            with pytest.raises(psycopg.errors.TooManyConnections) as busy:
                conn.execute(STALE_READ, (n,))
            assert busy.value.sqlstate == "53300"
            holder.rollback()
        assert conn.execute(STALE_READ, (m,)).fetchall() == [(m, 7)]
        assert last_status(conn) == "miss"
    assert await executions(m) == 2
    assert await executions(n) == 0


@pytest.mark.slow
async def test_swr_serves_the_old_rows_and_refreshes_once(door: Door) -> None:
    """Past ttl, within swr: a burst of reads on six sessions gets the old rows at once
    (``swr``) while one refresh (0.3 s in the database) runs; then the new rows (``ttl``)."""
    table = f"{T}_swr"
    await direct_execute(door, f"CREATE TABLE {table} (v int)")
    await direct_execute(door, f"INSERT INTO {table} VALUES (1)")
    m = marker("swr")
    statement = (
        f"SELECT v, m FROM ce_mark($1) AS m, {table}, pg_sleep(0.3) /* cache ttl=2 swr=30 */"
    )

    async def read(conn: asyncpg.Connection) -> tuple[list[tuple[Any, ...]], str]:
        rows = [tuple(r) for r in await conn.fetch(statement, m)]
        return rows, await alast_status(conn)

    conns = [await asyncpg.connect(door.url()) for _ in range(6)]
    try:
        assert await read(conns[0]) == ([(1, m)], "miss")
        await direct_execute(door, f"UPDATE {table} SET v = 2")
        await asyncio.sleep(2.2)
        burst = await asyncio.gather(*(read(c) for c in conns))
        assert burst == [([(1, m)], "swr")] * len(conns)
        for _ in range(100):  # until the refresh lands: old rows (swr) or new ones (ttl)
            got = await read(conns[1])
            if got[0] == [(2, m)]:
                assert got[1] == "ttl"
                break
            assert got == ([(1, m)], "swr")
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the refresh never landed")
        assert await read(conns[2]) == ([(2, m)], "ttl")
    finally:
        for conn in conns:
            await conn.close()
    assert await executions(m) == 2  # the miss and exactly one refresh
