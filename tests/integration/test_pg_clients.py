"""Real PostgreSQL clients, none of them ours, through the door: psql, pgbench, psycopg 3,
asyncpg and SQLAlchemy 2.

Each test asserts what the client itself reports (rows, types, command tags, exit status)
and, where it helps, compares with the same thing run straight against PostgreSQL: the door
relays PostgreSQL's own messages, so a client must not be able to tell the difference.
Tables carry this process's id, so two runs on one database do not collide; pgbench, whose
table names are fixed, gets a database of its own (tenant ``bench``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg.types.json import Jsonb
from sqlalchemy import ForeignKey, String, create_engine, select
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    selectinload,
)
from sqlalchemy.pool import NullPool

from tests.conftest import PG_ADMIN_DSN, dsn_for, sha
from tests.integration.door_helpers import Door, door_doc, open_door

PID = os.getpid()
T = f"ce_cli_{PID}"  # prefix of this module's tables in the acme database
BENCH_DB = "cache_edge_pgbench"
BENCH_KEY = "ce_test_key_tenant_bench"


# ------------------------------------------------------------------ fixtures and helpers


async def _admin(statement: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def door(
    tmp_path_factory: pytest.TempPathFactory, pg_databases: tuple[str, str], flushed_redis: str
) -> Iterator[Door]:
    """The default stack plus a tenant ``bench`` whose database only pgbench uses."""
    asyncio.run(_admin(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)"))
    asyncio.run(_admin(f"CREATE DATABASE {BENCH_DB}"))
    doc = door_doc(pg_databases, flushed_redis)
    doc["tenants"].append(
        {"id": "bench", "api_keys_sha256": [sha(BENCH_KEY)], "database_url": dsn_for(BENCH_DB)}
    )
    try:
        yield from open_door(tmp_path_factory.mktemp("door"), doc)
    finally:
        asyncio.run(_admin(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)"))
        asyncio.run(_drop_tables(pg_databases[0]))


async def _drop_tables(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        names = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename LIKE $1",
            f"%{PID}%",
        )
        for (name,) in names:
            await conn.execute(f'DROP TABLE IF EXISTS "{name}" CASCADE')
    finally:
        await conn.close()


def bench_url(door: Door) -> str:
    return f"postgresql://bench:{BENCH_KEY}@{door.host}:{door.port}/{BENCH_DB}"


def psql(
    url: str, *args: str, stdin: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """The machine's psql, without ~/.psqlrc, unaligned output."""
    return subprocess.run(
        ["psql", "-X", "-A", "-d", url, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={**os.environ, "PGCONNECT_TIMEOUT": "10"},
    )


def both_psql(door: Door, *args: str, stdin: str | None = None) -> str:
    """psql's output through the node, checked equal to psql's output straight to PostgreSQL."""
    via = psql(door.url(), *args, stdin=stdin)
    direct = psql(door.direct(), *args, stdin=stdin)
    assert via.returncode == direct.returncode == 0, (via.stderr, direct.stderr)
    assert via.stdout == direct.stdout
    assert via.stderr == direct.stderr
    return via.stdout


def direct_value(dsn: str, query: str) -> Any:
    """One value, read straight from PostgreSQL."""

    async def run() -> Any:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetchval(query)
        finally:
            await conn.close()

    return asyncio.run(run())


async def adirect_value(door: Door, query: str, *args: Any) -> Any:
    conn = await asyncpg.connect(door.direct())
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()


# ------------------------------------------------------------------ psql


def test_psql_gdesc_describes_columns_as_postgresql_does(door: Door) -> None:
    """``\\gdesc`` sends the query as a Parse/Describe, without running it."""
    out = both_psql(
        door,
        stdin=(
            "SELECT 1::int AS a, 'x'::text AS b, now() AS c, '{1,2}'::int[] AS d,"
            " 1.5::numeric(6,2) AS e, NULL::jsonb AS f \\gdesc\n"
        ),
    )
    assert out.splitlines() == [
        "Column|Type",
        "a|integer",
        "b|text",
        "c|timestamp with time zone",
        "d|integer[]",
        "e|numeric(6,2)",
        "f|jsonb",
        "(6 rows)",
    ]


def test_psql_copy_in_and_out(door: Door, tmp_path: Path) -> None:
    r"""``\copy`` runs COPY FROM STDIN / TO STDOUT over the door: every byte comes back."""
    table = f"{T}_copy"
    rows = [
        "1,plain,2024-01-02,",
        '2,"with, comma",2024-02-29,3.25',
        '3,"quote "" and\nnewline",1999-12-31,-0.5',
        "4,héllo wörld ✓,2000-01-01,1e3",
    ]
    source = tmp_path / "in.csv"
    source.write_text("\n".join(rows) + "\n", encoding="utf-8")
    out_file = tmp_path / "out.csv"
    result = psql(
        door.url(),
        "-v",
        "ON_ERROR_STOP=1",
        stdin=(
            f"CREATE TABLE {table} (id int PRIMARY KEY, name text, day date, x float8);\n"
            f"\\copy {table} FROM '{source}' WITH (FORMAT csv)\n"
            f"\\copy (SELECT id, name, day, x FROM {table} ORDER BY id) TO '{out_file}'"
            " WITH (FORMAT csv)\n"
        ),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["CREATE TABLE", "COPY 4", "COPY 4"]
    expected = source.read_text(encoding="utf-8").replace(",1e3", ",1000")
    assert out_file.read_text(encoding="utf-8") == expected
    assert direct_value(door.direct(), f"SELECT count(*) FROM {table}") == 4
    assert (
        direct_value(door.direct(), f"SELECT name FROM {table} WHERE id = 3")
        == 'quote " and\nnewline'
    )
    # and COPY TO STDOUT through psql's own -c, as text
    via = psql(door.url(), "-c", f"COPY (SELECT * FROM {table} ORDER BY id) TO STDOUT")
    direct = psql(door.direct(), "-c", f"COPY (SELECT * FROM {table} ORDER BY id) TO STDOUT")
    assert via.returncode == 0, via.stderr
    assert via.stdout == direct.stdout
    assert via.stdout.startswith("1\tplain\t2024-01-02\t\\N\n")


def test_psql_variables_interpolate(door: Door) -> None:
    """``\\set``, ``:var``, ``:'var'``, ``:"var"`` and ``\\gset`` all work through the node."""
    out = both_psql(
        door,
        "-t",
        stdin=(
            "\\set n 7\n"
            "\\set who 'O''Brien'\n"
            "\\set col answer\n"
            "SELECT :n * 6 AS :\"col\", :'who' AS who;\n"
            "SELECT 5 AS five, 'x' AS letter \\gset\n"
            "SELECT :five + 1, :'letter';\n"
        ),
    )
    assert out.splitlines() == ["42|O'Brien", "6|x"]


def test_psql_multi_statement_string(door: Door) -> None:
    """``-c "SELECT 1; SELECT 2"`` is one simple Query; psql 15 prints both results."""
    out = both_psql(door, "-t", "-c", "SELECT 1; SELECT 2, 'two'")
    assert out.splitlines() == ["1", "2|two"]
    # a multi-statement string is one implicit transaction: a failure rolls back all of it
    table = f"{T}_multi"
    both = psql(
        door.url(),
        "-c",
        f"CREATE TABLE {table} (x int); INSERT INTO {table} VALUES (1); SELECT 1/0",
    )
    assert both.returncode == 1
    assert "division by zero" in both.stderr
    assert direct_value(door.direct(), f"SELECT to_regclass('{table}') IS NULL") is True


SCRIPT = """\
SELECT 'before';
SELECT 1/0;
SELECT 'after';
BEGIN;
SELECT 'in transaction';
SELECT no_such_column;
SELECT 'skipped';
COMMIT;
SELECT 'end';
"""


def test_psql_error_mid_script_without_on_error_stop(door: Door, tmp_path: Path) -> None:
    """Without ON_ERROR_STOP psql goes on after an error and exits 0; inside a failed
    transaction PostgreSQL refuses the rest (25P02) and COMMIT answers ROLLBACK."""
    script = tmp_path / "script.sql"
    script.write_text(SCRIPT)
    via = psql(door.url(), "-t", "-f", str(script))
    direct = psql(door.direct(), "-t", "-f", str(script))
    assert via.returncode == direct.returncode == 0
    assert via.stdout == direct.stdout
    assert via.stderr == direct.stderr
    assert via.stdout.split() == [
        "before",
        "after",
        "BEGIN",
        "in",
        "transaction",
        "ROLLBACK",
        "end",
    ]
    assert "division by zero" in via.stderr
    assert 'column "no_such_column" does not exist' in via.stderr
    assert "current transaction is aborted" in via.stderr


def test_psql_error_mid_script_with_on_error_stop(door: Door, tmp_path: Path) -> None:
    """With ON_ERROR_STOP psql stops at the first error and exits 3 (a script) or 1 (-c)."""
    script = tmp_path / "script.sql"
    script.write_text(SCRIPT)
    via = psql(door.url(), "-t", "-v", "ON_ERROR_STOP=1", "-f", str(script))
    direct = psql(door.direct(), "-t", "-v", "ON_ERROR_STOP=1", "-f", str(script))
    assert via.returncode == direct.returncode == 3
    assert via.stdout == direct.stdout
    assert via.stdout.split() == ["before"]
    assert "division by zero" in via.stderr
    assert via.stderr == direct.stderr
    once = psql(door.url(), "-v", "ON_ERROR_STOP=1", "-c", "SELECT 1/0", "-c", "SELECT 'after'")
    assert once.returncode == 1
    assert "after" not in once.stdout
    # and a clean run exits 0
    assert psql(door.url(), "-c", "SELECT 1").returncode == 0


# ------------------------------------------------------------------ pgbench


def pgbench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["pgbench", *args], capture_output=True, text=True, timeout=120,
        env={**os.environ, "PGCONNECT_TIMEOUT": "10"},
    )  # fmt: skip


@pytest.fixture(scope="module")
def bench(door: Door) -> str:
    """``pgbench -i -s 1`` through the node (COPY of 100 000 rows, VACUUM, primary keys)."""
    url = bench_url(door)
    out = pgbench("-i", "-s", "1", url)
    assert out.returncode == 0, out.stderr
    assert "done in" in out.stderr
    counts = direct_value(
        dsn_for(BENCH_DB),
        "SELECT array[(SELECT count(*) FROM pgbench_accounts),"
        " (SELECT count(*) FROM pgbench_tellers), (SELECT count(*) FROM pgbench_branches)]",
    )
    assert counts == [100_000, 10, 1]
    return url


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench_tpcb(door: Door, bench: str, mode: str) -> None:
    """The built-in TPC-B script, 4 clients, 50 transactions each, each query mode: every
    transaction commits and TPC-B's invariants hold in the database."""
    out = pgbench("-M", mode, "-c", "4", "-j", "2", "-t", "50", bench)
    assert out.returncode == 0, out.stdout + out.stderr
    processed = re.search(r"number of transactions actually processed: (\d+)/(\d+)", out.stdout)
    failed = re.search(r"number of failed transactions: (\d+)", out.stdout)
    assert processed is not None and failed is not None, out.stdout
    assert processed.groups() == ("200", "200")
    assert failed.group(1) == "0"
    assert f"query mode: {mode}" in out.stdout
    # pgbench truncates pgbench_history before each run: this run's transactions only
    history = direct_value(dsn_for(BENCH_DB), "SELECT count(*) FROM pgbench_history")
    assert history == 200
    sums = direct_value(
        dsn_for(BENCH_DB),
        "SELECT array[(SELECT sum(abalance) FROM pgbench_accounts),"
        " (SELECT sum(tbalance) FROM pgbench_tellers), (SELECT sum(bbalance) FROM pgbench_branches)]",
    )
    assert sums[0] == sums[1] == sums[2]


# ------------------------------------------------------------------ psycopg 3

TYPED_QUERY = """
SELECT 1::int2 AS i2, 2147483647::int4 AS i4, 9007199254740993::int8 AS i8,
       1.5::float4 AS f4, 3.141592653589793::float8 AS f8,
       123456789.000000001::numeric AS num, 'NaN'::numeric AS nan,
       true AS b, 'héllo'::text AS t, 'abc'::varchar(5) AS vc, 'x'::char(3) AS ch,
       '\\x00ff10'::bytea AS by, '2024-02-29'::date AS d, '12:34:56.789'::time AS tm,
       '2024-02-29 12:34:56.789+05:30'::timestamptz AS tstz,
       '2024-02-29 12:34:56.789'::timestamp AS ts, '1 day 02:03:04.5'::interval AS iv,
       'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS u,
       '{"k": [1, 2, {"n": null}]}'::jsonb AS jb, '{"a":1}'::json AS js,
       ARRAY[1, NULL, 3]::int[] AS ai, ARRAY['a', 'b c']::text[] AS at,
       '192.168.0.1/24'::inet AS ip, NULL::text AS nul
"""


def _nan_free(value: Any) -> Any:
    """``value`` with Decimal NaN (never equal to itself) replaced by a marker."""
    if isinstance(value, Decimal) and value.is_nan():
        return "<NaN>"
    if isinstance(value, list | tuple):
        return type(value)(_nan_free(v) for v in value)
    return value


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_psycopg_results_equal_direct(door: Door, binary: bool) -> None:
    """Text and binary result formats: the same Python values and the same column types."""

    def fetch(url: str) -> tuple[Any, list[tuple[str, int]]]:
        with psycopg.connect(url) as conn, conn.cursor(binary=binary) as cur:
            cur.execute(TYPED_QUERY)
            assert cur.description is not None
            assert cur.pgresult is not None
            assert cur.pgresult.fformat(0) == (1 if binary else 0)
            return cur.fetchone(), [(c.name, c.type_code) for c in cur.description]

    via, direct = fetch(door.url()), fetch(door.direct())
    assert _nan_free(via) == _nan_free(direct)
    row = via[0]
    assert row[6].is_nan()
    assert row[2] == 9007199254740993
    assert row[5] == Decimal("123456789.000000001")
    assert row[11] == b"\x00\xff\x10"
    assert row[14] == dt.datetime(2024, 2, 29, 7, 4, 56, 789000, tzinfo=dt.UTC)
    assert row[18] == {"k": [1, 2, {"n": None}]}
    assert row[20] == [1, None, 3]


def test_psycopg_server_side_binding_and_prepare(door: Door) -> None:
    """Parameters travel in Bind (extended protocol), several types; prepare=True makes a
    named statement that later executions reuse."""
    params: tuple[Any, ...] = (
        42,
        -7.25,
        Decimal("-0.000001"),
        "tab\tquote' back\\slash ✓",
        b"\x00\x01\xfe",
        True,
        dt.date(1970, 1, 1),
        dt.datetime(2030, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC),
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
        [1, 2, 3],
        Jsonb({"nested": {"list": [True, None]}}),
        None,
        dt.timedelta(days=-1, seconds=5),
    )
    query = "SELECT " + ", ".join(["%s"] * len(params)) + ", pg_typeof(%s)::text"

    def run(url: str) -> list[Any]:
        with psycopg.connect(url, autocommit=True) as conn:
            out = [conn.execute(query, (*params, params[0])).fetchone()]
            for i in range(5):
                out.append(
                    conn.execute(
                        "SELECT %s::int + 1, %s::text", (i, str(i)), prepare=True
                    ).fetchone()
                )
            # the named statement is there, under psycopg's name, as far as the client can tell
            names = conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()
            out.append(names)
            return out

    via, direct = run(door.url()), run(door.direct())
    row = via[0]
    assert row[:-1] == (*params[:10], {"nested": {"list": [True, None]}}, None, params[12])
    assert row[-1] == "integer" or row[-1] == "smallint"
    assert via[1:6] == [(i + 1, str(i)) for i in range(5)]
    assert via[:6] == direct[:6]
    assert via[6] is not None and via[6][0] >= 1


def test_psycopg_pipeline_mode(door: Door) -> None:
    """Pipeline mode: many queries sent before any result is read, an error in the middle
    aborts the rest of its pipeline sync, and the connection goes on."""
    table = f"{T}_pipe"

    def run(url: str, name: str) -> tuple[list[Any], int]:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))
            conn.execute(
                sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, v text)").format(sql.Identifier(name))
            )
            ins = sql.SQL("INSERT INTO {} VALUES (%s, %s)").format(sql.Identifier(name))
            results: list[Any] = []
            with conn.pipeline():
                cur = conn.cursor()
                cur.executemany(ins, [(i, f"v{i}") for i in range(50)])
                c1 = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(name)))
                c2 = conn.execute("SELECT %s::text || %s::text", ("a", "b"))
            results += [c1.fetchone(), c2.fetchone()]
            with pytest.raises(psycopg.errors.UniqueViolation), conn.pipeline():
                conn.execute(ins, (1000, "ok"))
                conn.execute(ins, (0, "duplicate"))
                conn.execute(ins, (1001, "never"))
            results.append(conn.execute("SELECT 'after'").fetchone())
            count = conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(name))
            ).fetchone()
            assert count is not None
            return results, count[0]

    via = run(door.url(), table)
    direct = run(door.direct(), f"{table}_direct")
    assert via == direct
    # one Sync for the whole failed pipeline: one implicit transaction, 1000 rolled back too
    assert via == ([(50,), ("ab",), ("after",)], 50)


def test_psycopg_copy_from_and_to(door: Door) -> None:
    """``cursor.copy``: COPY FROM STDIN (text and binary) and COPY TO STDOUT."""
    table = f"{T}_pgcopy"
    rows = [
        (i, f"name {i}\t✓", None if i % 3 else dt.date(2024, 1, 1 + i % 28)) for i in range(500)
    ]
    with psycopg.connect(door.url(), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (id int, name text, day date)")
        with conn.cursor() as cur:
            with cur.copy(f"COPY {table} (id, name, day) FROM STDIN") as copy:
                for r in rows[:250]:
                    copy.write_row(r)
            assert cur.rowcount == 250
            with cur.copy(f"COPY {table} (id, name, day) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["int4", "text", "date"])
                for r in rows[250:]:
                    copy.write_row(r)
            assert cur.rowcount == 250
            out: list[tuple[Any, ...]] = []
            with cur.copy(f"COPY (SELECT * FROM {table} ORDER BY id) TO STDOUT") as copy:
                copy.set_types(["int4", "text", "date"])
                out.extend(copy.rows())
            assert out == rows
            raw = b""
            with cur.copy(
                f"COPY (SELECT * FROM {table} WHERE id < 3 ORDER BY id) TO STDOUT"
            ) as copy:
                for block in copy:
                    raw += bytes(block)
            assert (
                raw
                == "0\tname 0\\t✓\t2024-01-01\n1\tname 1\\t✓\t\\N\n2\tname 2\\t✓\t\\N\n".encode()
            )
            # a COPY that fails mid-stream leaves the connection usable
            with (
                pytest.raises(psycopg.errors.InvalidTextRepresentation),
                cur.copy(f"COPY {table} (id) FROM STDIN") as copy,
            ):
                copy.write(b"1\nnot a number\n")
            assert conn.execute("SELECT 1").fetchone() == (1,)
    assert direct_value(door.direct(), f"SELECT count(*) FROM {table}") == 500


def test_psycopg_transaction_with_savepoint(door: Door) -> None:
    """A transaction with a nested one (SAVEPOINT): the inner failure rolls back to the
    savepoint, the outer commits; the connection's status follows."""
    table = f"{T}_sp"
    with psycopg.connect(door.url()) as conn:
        conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY)")
        conn.commit()
        with conn.transaction():
            conn.execute(f"INSERT INTO {table} VALUES (1)")
            with pytest.raises(psycopg.errors.UniqueViolation), conn.transaction():
                conn.execute(f"INSERT INTO {table} VALUES (2)")
                conn.execute(f"INSERT INTO {table} VALUES (1)")
            assert conn.info.transaction_status == TransactionStatus.INTRANS
            conn.execute(f"INSERT INTO {table} VALUES (3)")
        assert conn.info.transaction_status.name == "IDLE"
        with pytest.raises(RuntimeError), conn.transaction():
            conn.execute(f"INSERT INTO {table} VALUES (4)")
            raise RuntimeError("roll back")
    assert direct_value(door.direct(), f"SELECT array_agg(id ORDER BY id) FROM {table}") == [1, 3]


# ------------------------------------------------------------------ asyncpg


async def test_asyncpg_prepared_statement_runs_many_times(door: Door) -> None:
    """``conn.prepare`` once, executed many times, with other queries in between."""
    conn = await asyncpg.connect(door.url())
    try:
        stmt = await conn.prepare("SELECT $1::int * 2 AS twice, $2::text || '!' AS shout")
        assert [a.name for a in stmt.get_attributes()] == ["twice", "shout"]
        assert [p.name for p in stmt.get_parameters()] == ["int4", "text"]
        for i in range(100):
            assert tuple(await stmt.fetchrow(i, f"n{i}")) == (2 * i, f"n{i}!")
            if i % 10 == 0:
                assert await conn.fetchval("SELECT $1::int", i) == i
        many = await stmt.fetch(7, "x")
        assert [tuple(r) for r in many] == [(14, "x!")]
        assert await conn.fetchval("SELECT count(*) FROM pg_prepared_statements") >= 1
    finally:
        await conn.close()


BINARY_VALUES: list[tuple[str, Any]] = [
    ("numeric", Decimal("-12345678901234567890.123456789")),
    ("numeric", Decimal("NaN")),
    ("uuid", uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")),
    ("timestamptz", dt.datetime(2024, 2, 29, 12, 34, 56, 789012, tzinfo=dt.UTC)),
    ("timestamp", dt.datetime(1999, 12, 31, 23, 59, 59)),
    ("jsonb", json.dumps({"a": [1, 2.5, None, "ü"]})),
    ("bytea", bytes(range(256))),
    ("int4[]", [1, None, -3]),
    ("text[]", ["a", "b c", "", None]),
    ("numeric[]", [Decimal("1.10"), Decimal("-2")]),
    ("interval", dt.timedelta(days=3, hours=4, microseconds=5)),
    ("date", dt.date(1, 1, 1)),
    ("date", dt.date(9999, 12, 31)),
    ("int8", -(2**63)),
    ("float8", 1e-308),
    ("bool", False),
    ("inet", ipaddress.ip_interface("10.0.0.1/8")),
]


async def _roundtrip(url: str) -> list[Any]:
    conn = await asyncpg.connect(url)
    try:
        out = []
        for type_name, value in BINARY_VALUES:
            back = await conn.fetchrow(
                f"SELECT $1::{type_name} AS v, $1::{type_name}::text AS t", value
            )
            out.append((back["v"], back["t"]))
        # and values PostgreSQL makes itself, decoded from binary
        made = await conn.fetchrow(
            "SELECT '1 year 2 mons 3 days 04:05:06.789'::interval, 'infinity'::date,"
            " '2000-01-01 00:00:00+00'::timestamptz, gen_random_uuid() IS NOT NULL,"
            " '{{1,2},{3,4}}'::int[], '\\xdeadbeef'::bytea, 0.1::numeric + 0.2::numeric"
        )
        out.append(tuple(made))
        return out
    finally:
        await conn.close()


async def test_asyncpg_binary_types_round_trip_as_direct(door: Door) -> None:
    """asyncpg binds and reads these types in binary: equal through the node and direct,
    and equal to what was sent."""
    via, direct = await _roundtrip(door.url()), await _roundtrip(door.direct())
    assert _nan_free(via) == _nan_free(direct)
    for (type_name, value), (back, _) in zip(BINARY_VALUES, via, strict=False):
        if type_name == "numeric" and value.is_nan():
            assert back.is_nan()
        elif type_name == "jsonb":
            assert json.loads(back) == json.loads(value)
        else:
            assert back == value, type_name


async def test_asyncpg_transactions_commit_and_roll_back(door: Door) -> None:
    """``conn.transaction()``: a commit is visible directly, a rollback leaves nothing, a
    nested one (a savepoint) rolls back alone."""
    table = f"{T}_apg_tx"
    conn = await asyncpg.connect(door.url())
    try:
        await conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, note text)")
        async with conn.transaction():
            await conn.execute(f"INSERT INTO {table} VALUES (1, 'committed')")
            assert conn.is_in_transaction()
        assert not conn.is_in_transaction()
        assert await adirect_value(door, f"SELECT note FROM {table} WHERE id = 1") == "committed"

        with pytest.raises(ZeroDivisionError):
            async with conn.transaction():
                await conn.execute(f"INSERT INTO {table} VALUES (2, 'rolled back')")
                # not visible outside while open
                assert await adirect_value(door, f"SELECT count(*) FROM {table}") == 1
                raise ZeroDivisionError
        assert await adirect_value(door, f"SELECT count(*) FROM {table} WHERE id = 2") == 0

        async with conn.transaction():
            await conn.execute(f"INSERT INTO {table} VALUES (3, 'outer')")
            with pytest.raises(asyncpg.UniqueViolationError):
                async with conn.transaction():
                    await conn.execute(f"INSERT INTO {table} VALUES (4, 'inner')")
                    await conn.execute(f"INSERT INTO {table} VALUES (3, 'duplicate')")
        ids = await adirect_value(door, f"SELECT array_agg(id ORDER BY id) FROM {table}")
        assert ids == [1, 3]

        # serializable, read-only: the options reach PostgreSQL
        async with conn.transaction(isolation="serializable", readonly=True):
            assert await conn.fetchval("SHOW transaction_isolation") == "serializable"
            with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
                await conn.execute(f"INSERT INTO {table} VALUES (5, 'no')")
    finally:
        await conn.close()


async def test_asyncpg_cursor_with_prefetch(door: Door) -> None:
    """Cursors fetch by Execute with a row limit (PortalSuspended between batches), inside
    the transaction that keeps the portal."""
    conn = await asyncpg.connect(door.url())
    try:
        async with conn.transaction():
            got = [
                r[0]
                async for r in conn.cursor(
                    "SELECT g FROM generate_series(1, $1::int) g", 20, prefetch=3
                )
            ]
            assert got == list(range(1, 21))
            cur = await conn.cursor("SELECT g, g::text FROM generate_series(1, 50) g")
            first = await cur.fetch(5)
            assert [tuple(r) for r in first] == [(i, str(i)) for i in range(1, 6)]
            assert await cur.forward(10) == 10
            row = await cur.fetchrow()
            assert row is not None and tuple(row) == (16, "16")
            rest = await cur.fetch(100)
            assert [r[0] for r in rest] == list(range(17, 51))
            assert await cur.fetchrow() is None
    finally:
        await conn.close()


async def test_asyncpg_without_statement_cache(door: Door) -> None:
    """``statement_cache_size=0``: asyncpg parses unnamed statements and binds them in a
    later round trip. Twenty such clients at once on a pool of ten connections: a client's
    Bind may land on another connection than its Parse, and still runs its own statement."""

    async def client(n: int) -> list[Any]:
        conn = await asyncpg.connect(door.url(), statement_cache_size=0)
        try:
            out = []
            for i in range(15):
                out.append(await conn.fetchval(f"SELECT $1::int + {n} /* {n}-{i} */", i))
                row = await conn.fetchrow("SELECT $1::text AS a, $2::numeric AS b", str(n), i)
                assert row is not None
                out.append((row["a"], row["b"]))
            stmt = await conn.prepare("SELECT $1::int * 10")
            out.append(await stmt.fetchval(n))
            return out
        finally:
            await conn.close()

    results = await asyncio.gather(*(client(n) for n in range(20)))
    for n, out in enumerate(results):
        expected: list[Any] = []
        for i in range(15):
            expected += [i + n, (str(n), Decimal(i))]
        assert out == [*expected, n * 10]


# ------------------------------------------------------------------ SQLAlchemy 2


def _models(prefix: str) -> tuple[type[Any], type[Any], type[DeclarativeBase]]:
    class Base(DeclarativeBase):
        pass

    class Author(Base):
        __tablename__ = f"{prefix}_author"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(String(100))
        born: Mapped[dt.date | None]
        books: Mapped[list[Book]] = relationship(
            back_populates="author", cascade="all, delete-orphan", order_by="Book.id"
        )

    class Book(Base):
        __tablename__ = f"{prefix}_book"
        id: Mapped[int] = mapped_column(primary_key=True)
        title: Mapped[str]
        price: Mapped[Decimal]
        author_id: Mapped[int] = mapped_column(ForeignKey(f"{prefix}_author.id"))
        author: Mapped[Author] = relationship(back_populates="books")

    return Author, Book, Base


def sa_url(door: Door, driver: str) -> str:
    return door.url().replace("postgresql://", f"postgresql+{driver}://", 1)


def test_sqlalchemy_orm_crud_psycopg(door: Door) -> None:
    """Declarative models, a one-to-many relationship, create/read/update/delete with
    ``postgresql+psycopg://`` through the node."""
    Author, Book, Base = _models(f"{T}_sa_sync")
    engine = create_engine(sa_url(door, "psycopg"), poolclass=NullPool)
    try:
        Base.metadata.create_all(engine)
        with Session(engine) as s, s.begin():
            a = Author(name="Ursula", born=dt.date(1929, 10, 21))
            a.books = [
                Book(title="Earthsea", price=Decimal("9.99")),
                Book(title="The Dispossessed", price=Decimal("12.50")),
            ]
            s.add(a)
        with Session(engine) as s:
            found = s.scalars(select(Author).where(Author.name == "Ursula")).one()
            assert [b.title for b in found.books] == ["Earthsea", "The Dispossessed"]
            assert found.born == dt.date(1929, 10, 21)
            found.books[0].price = Decimal("10.00")
            found.name = "Ursula K."
            s.commit()
            author_id = found.id
        with Session(engine) as s:
            got = s.get(Author, author_id)
            assert got is not None and got.name == "Ursula K."
            prices = s.scalars(select(Book.price).order_by(Book.id)).all()
            assert prices == [Decimal("10.00"), Decimal("12.50")]
            s.delete(got.books[1])
            s.commit()
            assert s.scalar(select(Book.title).where(Book.author_id == author_id)) == "Earthsea"
            s.delete(got)
            s.commit()
            assert s.scalars(select(Book)).all() == []
        # the rollback of a failed flush leaves the session usable
        with Session(engine) as s:
            s.add(Author(id=1, name="one"))
            s.commit()
            s.add(Author(id=1, name="again"))
            with pytest.raises(Exception, match="duplicate key"):
                s.commit()
            s.rollback()
            assert s.scalar(select(Author.name).where(Author.id == 1)) == "one"
    finally:
        engine.dispose()
    assert direct_value(door.direct(), f"SELECT count(*) FROM {T}_sa_sync_author") == 1


async def test_sqlalchemy_orm_crud_asyncpg(door: Door) -> None:
    """The same with ``postgresql+asyncpg://`` and AsyncSession (asyncpg's prepared
    statements under SQLAlchemy's own cache). Needs greenlet (``sqlalchemy[asyncio]``)."""
    pytest.importorskip("greenlet", reason="SQLAlchemy's asyncio extension needs greenlet")
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    Author, Book, Base = _models(f"{T}_sa_async")
    engine = create_async_engine(sa_url(door, "asyncpg"), pool_size=3)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        async with AsyncSession(engine) as s, s.begin():
            for n in range(5):
                a = Author(name=f"author {n}")
                a.books = [Book(title=f"book {n}.{k}", price=Decimal(f"{n}.{k}")) for k in range(3)]
                s.add(a)
        async with AsyncSession(engine) as s:
            rows = (
                await s.execute(
                    select(Author.name, Book.title).join(Author.books).order_by(Book.id)
                )
            ).all()
            assert len(rows) == 15
            assert rows[4] == ("author 1", "book 1.1")
            a = (
                await s.scalars(
                    select(Author)
                    .where(Author.name == "author 2")
                    .options(selectinload(Author.books))
                )
            ).one()
            books = a.books
            assert [b.title for b in books] == ["book 2.0", "book 2.1", "book 2.2"]
            a.name = "renamed"
            books[0].price = Decimal("99.99")
            await s.commit()
        async with AsyncSession(engine) as s:
            assert await s.scalar(select(Book.price).where(Book.title == "book 2.0")) == Decimal(
                "99.99"
            )
            victim = (await s.scalars(select(Author).where(Author.name == "renamed"))).one()
            await s.delete(victim)
            await s.commit()
            # the same statements again: asyncpg's prepared statements, reused
            for _ in range(3):
                assert await s.scalar(select(Book.id).where(Book.title == "book 2.0")) is None
                found = await s.scalar(select(Author.id).where(Author.name == "author 3"))
                assert found is not None
    finally:
        await engine.dispose()
    assert await adirect_value(door, f"SELECT count(*) FROM {T}_sa_async_book") == 12
    assert await adirect_value(door, f"SELECT count(*) FROM {T}_sa_async_author") == 4
