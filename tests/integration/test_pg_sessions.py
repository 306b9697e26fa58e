"""Pooling and session semantics of the PostgreSQL door, as a client sees them.

Many client sessions share a few pooled database connections (transaction pooling); what a
session sets, prepares or pins must follow it and no other session may see it. Errors the
pooling adds (pool exhaustion, idle-in-transaction, a lost origin) arrive as PostgreSQL
errors, promptly. Three stacks: ``pooled`` (pool_max_size 5), ``strict`` (pool_timeout
0.5 s, idle_in_transaction_timeout 1 s, and tenant globex with a single connection), and a
per-test ``fragile`` one whose origin a test stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import psycopg
import pytest
from psycopg.pq import TransactionStatus

from tests.conftest import API_KEY_A, API_KEY_B, PG_ADMIN_DSN, RedisLease
from tests.integration.door_helpers import Door, door_doc, open_door

PID = os.getpid()
PG_PORT = urlsplit(PG_ADMIN_DSN).port or 5432


# ------------------------------------------------------------------ stacks


@pytest.fixture(scope="module")
def pooled(
    tmp_path_factory: pytest.TempPathFactory, pg_databases: tuple[str, str], redis_dbs: RedisLease
) -> Iterator[Door]:
    """pool_max_size 5 (and a pool_timeout long enough for 200 clients on a busy machine);
    info-level logs, so that what is logged can be checked."""
    doc = door_doc(
        pg_databases, redis_dbs("pooled"), origin={"pool_max_size": 5, "pool_timeout": 30.0}
    )
    doc["log_level"] = "info"
    yield from open_door(tmp_path_factory.mktemp("pooled"), doc)


@pytest.fixture(scope="module")
def strict(
    tmp_path_factory: pytest.TempPathFactory, pg_databases: tuple[str, str], redis_dbs: RedisLease
) -> Iterator[Door]:
    """Short pool_timeout and idle_in_transaction_timeout; globex has one connection."""
    doc = door_doc(
        pg_databases,
        redis_dbs("strict"),
        origin={"pool_timeout": 0.5, "idle_in_transaction_timeout": 1.0},
    )
    doc["tenants"][1]["pool_max_size"] = 1
    yield from open_door(tmp_path_factory.mktemp("strict"), doc)


@pytest.fixture
def fragile(tmp_path: Path, pg_databases: tuple[str, str], redis_dbs: RedisLease) -> Iterator[Door]:
    """A stack of this test's own: the test stops and restarts its origin."""
    yield from open_door(tmp_path, door_doc(pg_databases, redis_dbs.fresh("fragile")))


# ------------------------------------------------------------------ helpers


async def direct(door: Door, query: str, *args: Any, tenant: str = "acme") -> Any:
    conn = await asyncpg.connect(door.direct(tenant))
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()


def _socket_inodes(pid: int) -> set[int]:
    inodes: set[int] = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(int(link[8:-1]))
    return inodes


def database_ports(pid: int) -> list[int]:
    """Local ports of the TCP connections process ``pid`` holds to PostgreSQL."""
    inodes = _socket_inodes(pid)
    remote = f":{PG_PORT:04X} "
    ports: list[int] = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f:
                if remote not in line:
                    continue
                fields = line.split()
                if fields[2].endswith(remote.strip()) and int(fields[9]) in inodes:
                    ports.append(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


OBSERVE = (
    "SELECT current_setting('TimeZone') AS tz, current_setting('search_path') AS sp,"
    " current_setting('extra_float_digits') AS efd, current_setting('application_name') AS app,"
    " pg_backend_pid() AS pid FROM pg_sleep($1::float8)"
)


async def churn(
    door: Door, clients: int = 20, rounds: int = 4, hold: float = 0.01, tenant: str = "acme"
) -> list[asyncpg.Record]:
    """Other clients keeping every pooled connection busy; what each of them saw."""

    async def one() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(door.url(tenant))
        try:
            return [await conn.fetchrow(OBSERVE, hold) for _ in range(rounds)]
        finally:
            await conn.close()

    return [r for rows in await asyncio.gather(*(one() for _ in range(clients))) for r in rows]


# ------------------------------------------------------------------ transaction pooling


async def test_two_hundred_clients_share_five_connections(pooled: Door) -> None:
    """200 clients connected at once, each running a few statements and a transaction:
    all succeed, and PostgreSQL never sees more than the pool's 5 connections from the
    origin for the database (plus the HTTP door's own pool)."""
    table = f"ce_sess_{PID}_load"
    admin = await asyncpg.connect(pooled.direct())
    assert pooled.stack.origin is not None and pooled.stack.origin.proc is not None
    origin_pid = pooled.stack.origin.proc.pid
    await admin.execute(f"DROP TABLE IF EXISTS {table}")
    await admin.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, backend int)")
    done = asyncio.Event()
    seen: list[int] = []

    async def origin_connections() -> int:
        ports = await asyncio.to_thread(database_ports, origin_pid)
        return int(
            await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND client_port = ANY($1::int[])",
                ports,
            )
        )

    async def sample() -> None:
        while not done.is_set():
            seen.append(await origin_connections())
            await asyncio.sleep(0.02)

    go = asyncio.Event()

    async def client(i: int) -> set[int]:
        conn = await asyncpg.connect(pooled.url(), timeout=30)
        try:
            await go.wait()
            pids = set()
            assert await conn.fetchval("SELECT $1::int + 1", i) == i + 1
            async with conn.transaction():
                await conn.execute(f"INSERT INTO {table} VALUES ($1, pg_backend_pid())", i)
                await conn.execute("SELECT pg_sleep(0.005)")
                pids.add(await conn.fetchval("SELECT pg_backend_pid()"))
            pids.add(await conn.fetchval("SELECT pg_backend_pid() FROM pg_sleep(0.002)"))
            return pids
        finally:
            await conn.close()

    try:
        sampler = asyncio.create_task(sample())
        clients = [asyncio.create_task(client(i)) for i in range(200)]
        await asyncio.sleep(0.2)
        go.set()
        results = await asyncio.gather(*clients)
        done.set()
        await sampler
        backends = set().union(*results)
        assert len(backends) <= 5, backends
        assert await admin.fetchval(f"SELECT count(*) FROM {table}") == 200
        # each transaction's INSERT ran on a connection the client also saw in it
        assert (
            set(await admin.fetchval(f"SELECT array_agg(DISTINCT backend) FROM {table}"))
            <= backends
        )
        # 5 wire connections at most, plus the HTTP door's own (its pool, its LISTEN)
        assert 5 <= max(seen) <= 5 + 2, seen
    finally:
        await admin.execute(f"DROP TABLE IF EXISTS {table}")
        await admin.close()


async def test_set_persists_across_pooled_connections(pooled: Door) -> None:
    """A client's SET follows it from connection to connection while other clients churn
    the pool; the others never see it. SET inside a rolled-back transaction and SET LOCAL
    end as in PostgreSQL; RESET returns to the default."""
    schema = f"ce_sess_{PID}_sp"
    default_tz = await direct(pooled, "SHOW TimeZone")
    default_sp = await direct(pooled, "SHOW search_path")
    await direct(pooled, f"CREATE SCHEMA IF NOT EXISTS {schema}")
    await direct(pooled, f"CREATE TABLE IF NOT EXISTS {schema}.marker AS SELECT 'found' AS v")
    a = await asyncpg.connect(pooled.url())
    try:
        await a.execute("SET TimeZone = 'Asia/Tokyo'")
        await a.execute(f"SET search_path = {schema}, public")
        await a.execute("SET extra_float_digits = 0")
        # a SET in a transaction that rolls back is undone; SET LOCAL ends with its transaction
        await a.execute("BEGIN; SET TimeZone = 'America/New_York'; ROLLBACK")
        await a.execute("BEGIN; SET LOCAL extra_float_digits = 3; COMMIT")

        async def watch() -> list[asyncpg.Record]:
            out = []
            for _ in range(12):
                out.append(
                    await a.fetchrow(
                        "SELECT current_setting('TimeZone') AS tz,"
                        " '2024-01-01 00:00:00+00'::timestamptz::text AS ts,"
                        " (0.1::float8 + 0.2::float8)::text AS f, (SELECT v FROM marker) AS m,"
                        " pg_backend_pid() AS pid"
                    )
                )
                await asyncio.sleep(0.01)
            return out

        mine, others = await asyncio.gather(watch(), churn(pooled, clients=20, rounds=4))
        for row in mine:
            assert (row["tz"], row["ts"], row["f"], row["m"]) == (
                "Asia/Tokyo",
                "2024-01-01 09:00:00+09",
                "0.3",
                "found",
            )
        assert len({r["pid"] for r in mine}) > 1, "the client never changed connection"
        for row in others:
            assert (row["tz"], row["sp"], row["efd"]) == (default_tz, default_sp, "1")

        await a.execute("RESET TimeZone")
        await a.execute("RESET extra_float_digits")
        _, more = await asyncio.gather(asyncio.sleep(0), churn(pooled, clients=10, rounds=2))
        assert await a.fetchval("SHOW TimeZone") == default_tz
        assert await a.fetchval("SELECT (0.1::float8 + 0.2::float8)::text") == "0.30000000000000004"
        assert await a.fetchval("SELECT v FROM marker") == "found"  # search_path still set
        await a.execute("RESET ALL")
        await churn(pooled, clients=10, rounds=2)
        assert await a.fetchval("SHOW search_path") == default_sp
        for row in more:
            assert row["tz"] == default_tz
    finally:
        await a.close()
        await direct(pooled, f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def test_startup_parameters_apply(pooled: Door) -> None:
    """``options=-c …`` and ``application_name`` in the startup packet apply to the session
    (and are reported back as PostgreSQL reports them), and stay with it on any connection."""
    url = pooled.url(
        options="-c TimeZone=Pacific/Auckland -c DateStyle=SQL,DMY", application_name="ce-door-app"
    )
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.info.parameter_status("TimeZone") == "Pacific/Auckland"
        assert conn.info.parameter_status("application_name") == "ce-door-app"
        assert conn.info.parameter_status("DateStyle") == "SQL, DMY"
        for _ in range(3):
            row = conn.execute(
                "SELECT current_setting('application_name'), current_setting('TimeZone'),"
                " '2024-03-01'::date::text,"
                " (SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid())"
            ).fetchone()
            assert row == ("ce-door-app", "Pacific/Auckland", "01/03/2024", "ce-door-app")
            asyncio.run(churn(pooled, clients=8, rounds=2))
        assert conn.execute("SHOW application_name").fetchone() == ("ce-door-app",)
    # psql's own application_name, set in the URL
    out = subprocess.run(
        ["psql", "-XAt", pooled.url(application_name="from-psql"), "-c", "SHOW application_name"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (out.returncode, out.stdout.strip()) == (0, "from-psql"), out.stderr
    # an invalid setting is refused at startup, as PostgreSQL refuses it
    for name, value, sqlstate, text in [
        ("TimeZone", "Not/AZone", "22023", 'invalid value for parameter "TimeZone"'),
        ("no_such_setting", "1", "42704", 'unrecognized configuration parameter "no_such_setting"'),
    ]:
        with pytest.raises(psycopg.OperationalError) as via:
            psycopg.connect(pooled.url(options=f"-c {name}={value}"))
        assert text in str(via.value)
        for url in (pooled.url(), pooled.direct()):
            with pytest.raises(asyncpg.PostgresError) as err:
                asyncio.run(asyncpg.connect(url, server_settings={name: value}))
            assert err.value.sqlstate == sqlstate
            assert text in str(err.value)


async def test_prepared_statements_survive_pool_churn(pooled: Door) -> None:
    """A statement prepared once keeps working while other clients (with statements of
    the same driver-made names) churn the pool and the client changes connection."""
    a = await asyncpg.connect(pooled.url())
    try:
        stmt = await a.prepare("SELECT $1::int * 3 AS v, 'mine' AS who, pg_backend_pid() AS pid")
        named = await a.prepare("SELECT $1::text || '-a' AS v")

        async def rival() -> None:
            conn = await asyncpg.connect(pooled.url())
            try:
                # asyncpg names these __asyncpg_stmt_1__ … as it named the client's
                other = await conn.prepare("SELECT $1::int * 1000 AS v, 'rival' AS who, 0 AS pid")
                text = await conn.prepare("SELECT $1::text || '-rival' AS v")
                for i in range(5):
                    assert tuple(await other.fetchrow(i)) == (i * 1000, "rival", 0)
                    assert await text.fetchval(str(i)) == f"{i}-rival"
                    await conn.execute("SELECT pg_sleep(0.005)")
            finally:
                await conn.close()

        async def mine() -> set[int]:
            pids = set()
            for i in range(15):
                row = await stmt.fetchrow(i)
                assert (row["v"], row["who"]) == (i * 3, "mine")
                assert await named.fetchval(str(i)) == f"{i}-a"
                pids.add(row["pid"])
                await asyncio.sleep(0.005)
            return pids

        pids, _ = await asyncio.gather(mine(), asyncio.gather(*(rival() for _ in range(15))))
        assert len(pids) > 1, "the client never changed connection"
    finally:
        await a.close()


async def test_temp_table_pins_the_session(pooled: Door) -> None:
    """A TEMP table pins its client to one connection: it works across transactions while
    others churn, nobody else sees it, and it is gone once its client disconnects."""
    name = f"ce_sess_{PID}_tmp"
    a = await asyncpg.connect(pooled.url())
    try:
        await a.execute(f"CREATE TEMP TABLE {name} (x int)")
        home = await a.fetchval("SELECT pg_backend_pid()")

        async def use() -> list[int]:
            pids = []
            for i in range(6):
                async with a.transaction():
                    await a.execute(f"INSERT INTO {name} VALUES ($1)", i)
                    pids.append(await a.fetchval("SELECT pg_backend_pid()"))
                await asyncio.sleep(0.01)
            return pids

        pids, others = await asyncio.gather(use(), churn(pooled, clients=12, rounds=3))
        assert set(pids) == {home}
        assert home not in {r["pid"] for r in others}
        assert await a.fetchval(f"SELECT array_agg(x ORDER BY x) FROM {name}") == list(range(6))
        b = await asyncpg.connect(pooled.url())
        try:
            assert await b.fetchval("SELECT to_regclass($1)", name) is None
        finally:
            await b.close()
        count = "SELECT count(*) FROM pg_class WHERE relname = $1 AND relpersistence = 't'"
        assert await direct(pooled, count, name) == 1
    finally:
        await a.close()
    for _ in range(100):  # the backend ends a moment after its client
        if not await direct(pooled, count, name):
            break
        await asyncio.sleep(0.05)
    assert await direct(pooled, count, name) == 0
    assert await direct(pooled, "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", home) == 0


# ------------------------------------------------------------------ refusals


async def test_set_role_is_refused(pooled: Door) -> None:
    """SET ROLE, SET SESSION AUTHORIZATION and RESET ROLE fail with 42501, in the simple
    and the extended protocol; the session goes on, and inside a transaction the refusal
    aborts it like any error."""
    conn = await asyncpg.connect(pooled.url())
    try:
        user = await conn.fetchval("SELECT current_user")
        for statement in [
            "SET ROLE postgres",
            "set session role postgres",
            "SET LOCAL ROLE postgres",
            "SET SESSION AUTHORIZATION postgres",
            "RESET ROLE",
            "SELECT 1; SET ROLE postgres",
        ]:
            with pytest.raises(asyncpg.InsufficientPrivilegeError) as err:
                await conn.execute(statement)
            assert err.value.sqlstate == "42501"
            assert "changing the role is not supported" in str(err.value)
            assert await conn.fetchval("SELECT current_user") == user
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetch("SET ROLE postgres")  # extended protocol (Parse/Bind/Execute)
        tx = conn.transaction()
        await tx.start()
        await conn.execute("SELECT 1")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("SET ROLE postgres")
        with pytest.raises(asyncpg.InFailedSQLTransactionError):
            await conn.execute("SELECT 1")
        await tx.rollback()
        assert await conn.fetchval("SELECT 2") == 2
    finally:
        await conn.close()


async def test_role_in_startup_options_is_refused(pooled: Door) -> None:
    """``role`` (or session_authorization) in the startup packet: FATAL 42501."""
    with pytest.raises(asyncpg.InsufficientPrivilegeError) as err:
        await asyncpg.connect(pooled.url(), server_settings={"role": "postgres"})
    assert err.value.sqlstate == "42501"
    with pytest.raises(psycopg.OperationalError) as perr:
        psycopg.connect(pooled.url(options="-c role=postgres"))
    assert "changing the role is not supported" in str(perr.value)
    with pytest.raises(psycopg.OperationalError) as perr:
        psycopg.connect(pooled.url(options="-c session_authorization=postgres"))
    assert "changing the role is not supported" in str(perr.value)


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT set_config('role', '{role}', false)",
        "SET/**/ROLE {role}",
        'SET "role" TO {role}',
    ],
    ids=["set_config", "comment", "quoted"],
)
async def test_role_change_does_not_leak_to_other_clients(strict: Door, statement: str) -> None:
    """What a client would see: another client's role change must never become its own
    current_user (globex has one pooled connection, so B surely gets A's). The text filter
    misses these forms; the relay reads the role back with the session's settings and
    closes a connection whose role changed, instead of lending it on."""
    role = f"ce_sess_{PID}_role"
    await direct(strict, f"DROP ROLE IF EXISTS {role}", tenant="globex")
    await direct(strict, f"CREATE ROLE {role} NOLOGIN", tenant="globex")
    try:
        user = await direct(strict, "SELECT current_user", tenant="globex")
        a = await asyncpg.connect(strict.url("globex"))
        try:
            with contextlib.suppress(asyncpg.InsufficientPrivilegeError):  # refused: as promised
                await a.execute(statement.format(role=role))
        finally:
            await a.close()
        b = await asyncpg.connect(strict.url("globex"))
        try:
            assert await b.fetchval("SELECT current_user") == user
        finally:
            await b.close()
    finally:
        # a pinned session's connection is closed, not reused: that removes the poisoned one
        c = await asyncpg.connect(strict.url("globex"))
        try:
            await c.execute(f"CREATE TEMP TABLE ce_sess_{PID}_flush (x int)")
        finally:
            await c.close()
        await asyncio.sleep(0.2)
        await direct(strict, f"DROP ROLE IF EXISTS {role}", tenant="globex")


# ------------------------------------------------------------------ timeouts and the pool


def test_idle_in_transaction_loses_its_connection(strict: Door) -> None:
    """A client silent inside a transaction past idle_in_transaction_timeout (1 s) loses
    its connection with PostgreSQL's FATAL 25P03; the pool's only connection is free again
    for the next client at once (pool_timeout is 0.5 s)."""
    conn = psycopg.connect(strict.url("globex"))
    try:
        conn.execute("SELECT 1")
        assert conn.info.transaction_status == TransactionStatus.INTRANS
        time.sleep(1.8)
        with pytest.raises(psycopg.Error) as err:
            conn.execute("SELECT 1")
        assert err.value.sqlstate == "25P03", err.value
        assert "terminating connection due to idle-in-transaction timeout" in str(err.value)
        assert conn.closed
    finally:
        conn.close()
    started = time.monotonic()
    with psycopg.connect(strict.url("globex")) as other:
        other.execute("SELECT 1")
        other.commit()
        assert other.execute("SELECT 'free'").fetchone() == ("free",)
    assert time.monotonic() - started < 2.0


async def test_pool_exhaustion_fails_with_53300(strict: Door) -> None:
    """With the one connection held by an open transaction, another client's statement
    fails with 53300 after pool_timeout (0.5 s), not later, in the simple and in the
    extended protocol (asyncpg: Parse/Describe/Flush, then a Sync after the error); the
    client goes on, and its statements work once the transaction ends."""
    a = await asyncpg.connect(strict.url("globex"))
    b = await asyncpg.connect(strict.url("globex"))
    stop = asyncio.Event()

    async def hold() -> int:
        # always a statement running, so idle_in_transaction_timeout (1 s) never fires
        rounds = 0
        while not stop.is_set():
            await a.execute("SELECT pg_sleep(0.1)")
            rounds += 1
        return rounds

    try:
        tx = a.transaction()
        await tx.start()
        holder = asyncio.create_task(hold())
        for protocol in ("simple", "extended"):
            started = time.monotonic()
            with pytest.raises(asyncpg.PostgresError) as err:
                if protocol == "extended":
                    await b.fetchval("SELECT $1::int", 1)
                else:
                    await b.execute("SELECT 1")
            elapsed = time.monotonic() - started
            assert err.value.sqlstate == "53300", err.value
            assert "0.5 s" in str(err.value) and "pool_max_size 1" in str(err.value)
            assert 0.45 <= elapsed < 0.85, (protocol, elapsed)
        stop.set()
        assert await holder > 5
        await tx.commit()
        assert await b.fetchval("SELECT $1::int", 7) == 7
        assert await b.fetchval("SELECT 8") == 8
    finally:
        stop.set()
        await a.close()
        await b.close()


# ------------------------------------------------------------------ cancel, status


async def test_cancel_by_asyncpg_timeout(pooled: Door) -> None:
    """asyncpg's timeout sends a CancelRequest to the node: the statement stops in the
    database at once, and the connection is usable afterwards."""
    marker = f"ce_cancel_{PID}"
    conn = await asyncpg.connect(pooled.url())
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await conn.execute(f"SELECT pg_sleep(30) /* {marker} */", timeout=0.5)
        assert time.monotonic() - started < 3.0
        assert await conn.fetchval("SELECT 41 + 1") == 42
        running = await direct(
            pooled,
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE $1",
            f"%{marker}%",
        )
        assert running == 0
        # the task way: cancelling a query sends a CancelRequest too
        task = asyncio.create_task(conn.fetchval(f"SELECT pg_sleep(30) /* {marker} */"))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await conn.fetchval("SELECT 'usable'") == "usable"
    finally:
        await conn.close()


def test_cancel_by_psycopg(pooled: Door) -> None:
    """psycopg's ``conn.cancel()`` from another thread: the statement ends with 57014 at
    once, through the node, and the connection goes on."""
    with psycopg.connect(pooled.url(), autocommit=True) as conn:
        timer = threading.Timer(0.3, conn.cancel)
        started = time.monotonic()
        timer.start()
        with pytest.raises(psycopg.errors.QueryCanceled) as err:
            conn.execute("SELECT pg_sleep(30)")
        assert err.value.sqlstate == "57014"
        assert "canceling statement due to user request" in str(err.value)
        assert time.monotonic() - started < 3.0
        assert conn.execute("SELECT 'after'").fetchone() == ("after",)
        # a cancel of an idle session does nothing
        conn.cancel()
        assert conn.execute("SELECT 'still'").fetchone() == ("still",)


def test_ready_for_query_status_follows_the_transaction(pooled: Door) -> None:
    """psycopg's ``transaction_status`` (ReadyForQuery's status byte) is IDLE, INTRANS and
    INERROR at the same moments as directly."""

    def statuses(url: str) -> list[TransactionStatus]:
        seen = []
        with psycopg.connect(url) as conn:
            seen.append(conn.info.transaction_status)
            conn.execute("SELECT 1")
            seen.append(conn.info.transaction_status)
            with pytest.raises(psycopg.errors.DivisionByZero):
                conn.execute("SELECT 1/0")
            seen.append(conn.info.transaction_status)
            with pytest.raises(psycopg.errors.InFailedSqlTransaction):
                conn.execute("SELECT 1")
            seen.append(conn.info.transaction_status)
            conn.rollback()
            seen.append(conn.info.transaction_status)
            conn.autocommit = True
            conn.execute("BEGIN")
            seen.append(conn.info.transaction_status)
            asyncio.run(churn(pooled, clients=6, rounds=2))  # cannot take this connection
            conn.execute("SAVEPOINT s")
            with pytest.raises(psycopg.errors.UndefinedTable):
                conn.execute("SELECT * FROM no_such_table_anywhere")
            seen.append(conn.info.transaction_status)
            conn.execute("ROLLBACK TO SAVEPOINT s")
            seen.append(conn.info.transaction_status)
            conn.execute("COMMIT")
            seen.append(conn.info.transaction_status)
        return seen

    via = statuses(pooled.url())
    assert via == statuses(pooled.direct())
    idle, intrans, inerror = (
        TransactionStatus.IDLE,
        TransactionStatus.INTRANS,
        TransactionStatus.INERROR,
    )
    assert via == [idle, intrans, inerror, inerror, idle, intrans, inerror, intrans, idle]


# ------------------------------------------------------------------ login errors


def test_wrong_database_is_3d000(pooled: Door) -> None:
    """A database name other than the tenant's: 3D000, as PostgreSQL says it."""
    wrong = pooled.url().rsplit("/", 1)[0] + "/not_this_db"
    with pytest.raises(asyncpg.InvalidCatalogNameError) as err:
        asyncio.run(asyncpg.connect(wrong))
    assert err.value.sqlstate == "3D000"
    assert 'database "not_this_db" does not exist' in str(err.value)
    out = subprocess.run(
        ["psql", "-XAt", wrong, "-c", "SELECT 1"], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 2
    assert 'FATAL:  database "not_this_db" does not exist' in out.stderr


async def test_wrong_key_is_28p01_and_never_logged(pooled: Door) -> None:
    """A wrong key: 28P01 ``password authentication failed`` (psql exits 2), as for another
    tenant's key or an unknown tenant; no key ever appears in the node's or the origin's
    log. (Each refusal takes a second: the attempts run side by side.)"""
    wrong_key = f"ce_wrong_key_{PID}_zz9"

    async def psql(url: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            "psql", "-XAt", url, "-c", "SELECT 1",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, stderr = await proc.communicate()
        return await proc.wait(), stderr.decode()

    async def refusal(url: str) -> asyncpg.PostgresError:
        with pytest.raises(asyncpg.InvalidPasswordError) as err:
            await asyncpg.connect(url)
        return err.value

    unknown = pooled.url().replace("acme:", "nobody:", 1)
    (code, stderr), wrong, other_tenant, nobody = await asyncio.gather(
        psql(pooled.url(key=wrong_key)),
        refusal(pooled.url(key=wrong_key)),
        refusal(pooled.url("acme", key=API_KEY_B)),
        refusal(unknown),
    )
    assert code == 2
    assert 'FATAL:  password authentication failed for user "acme"' in stderr
    for err in (wrong, other_tenant, nobody):
        assert err.sqlstate == "28P01"
    assert str(wrong) == str(other_tenant) == 'password authentication failed for user "acme"'
    assert str(nobody) == 'password authentication failed for user "nobody"'
    # a good login, so that the log has something of the door in it
    assert await psql(pooled.url()) == (0, "")
    node_log = pooled.stack.nodes()[0].logs()
    assert "pg_connection" in node_log
    assert pooled.stack.origin is not None
    for log in (node_log, pooled.stack.origin.logs()):
        for secret in (wrong_key, API_KEY_A, API_KEY_B):
            assert secret not in log


# ------------------------------------------------------------------ the origin goes away


def _lose_origin(door: Door, how: signal.Signals) -> None:
    origin = door.stack.origin
    assert origin is not None
    idle = psycopg.connect(door.url(), autocommit=True)
    busy = psycopg.connect(door.url(), autocommit=True)
    try:
        assert idle.execute("SELECT 1").fetchone() == (1,)
        errors: list[BaseException] = []

        def sleeper() -> None:
            try:
                busy.execute("SELECT pg_sleep(8)")
            except BaseException as exc:  # recorded for the assertions
                errors.append(exc)

        thread = threading.Thread(target=sleeper)
        thread.start()
        time.sleep(0.3)
        started = time.monotonic()
        origin.stop(how)
        thread.join(5.0)
        assert not thread.is_alive(), "the client waiting on a statement was left hanging"
        assert time.monotonic() - started < 5.0
        # The statement in flight is lost with the link: FATAL, its connection closed.
        assert len(errors) == 1, errors
        assert isinstance(errors[0], psycopg.OperationalError), errors[0]
        assert errors[0].sqlstate == "08006", errors[0]
        assert "the node lost its link to the origin" in str(errors[0])
        assert busy.closed
        # The idle session stays: what needs the origin fails at once, and not fatally.
        with pytest.raises(psycopg.OperationalError) as err:
            idle.execute("SELECT 1")
        assert err.value.sqlstate == "08006", err.value
        assert "the origin is unreachable" in str(err.value)
        assert not idle.closed
        # A login with settings the node has seen works without the origin (cached reads
        # need none); one with new settings needs the origin, and is refused promptly.
        with (
            psycopg.connect(door.url(), autocommit=True) as known,
            pytest.raises(psycopg.OperationalError, match="the origin is unreachable"),
        ):
            known.execute("SELECT 1")
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError) as down:
            psycopg.connect(door.url(application_name=f"new-{how.name}"), connect_timeout=10)
        assert time.monotonic() - started < 6.0
        assert "cannot reach the origin" in str(down.value)
        origin.start()
        # The idle session goes on with a new origin session once the origin is back.
        assert idle.execute("SELECT 'still here'").fetchone() == ("still here",)
    finally:
        idle.close()
        busy.close()
    with psycopg.connect(door.url(), autocommit=True) as again:
        assert again.execute("SELECT 'back'").fetchone() == ("back",)


@pytest.mark.slow
def test_origin_dies_mid_session(fragile: Door) -> None:
    """The origin is killed (then, once it is back, stopped) under open sessions: a client
    waiting on a statement gets FATAL 08006 at once; an idle one stays connected, gets a
    non-fatal 08006 for what needs the origin, and goes on once the origin is back; new
    logins with settings the node has seen work (cached reads need no origin), others fail
    fast."""
    _lose_origin(fragile, signal.SIGKILL)
    _lose_origin(fragile, signal.SIGTERM)


def test_sql_deallocate_of_a_protocol_statement(pooled: Door) -> None:
    """psycopg with a libpq older than 17 deallocates the statements it prepared with the
    protocol by SQL (``DEALLOCATE _pg3_0``) when its cache is full: the door finds the
    session's statement under that name (docs/driver-suites.md, D3)."""
    with psycopg.connect(pooled.url(), autocommit=True) as conn:
        conn.prepare_threshold = 0
        for text in ("select 1::bigint", "select 2::int"):
            conn.execute(text)
        assert conn.execute("DEALLOCATE _pg3_0", prepare=False).statusmessage == "DEALLOCATE"
        with pytest.raises(psycopg.errors.InvalidSqlStatementName):
            conn.execute('DEALLOCATE "_pg3_0"', prepare=False)  # gone, as directly
        assert conn.execute("SELECT 'still fine'", prepare=False).fetchone() == ("still fine",)
