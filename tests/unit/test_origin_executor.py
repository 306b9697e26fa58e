"""Executor decisions with scripted fake connections: retry safety, coalescing, producedAt."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from asyncpg import exceptions as pg
from asyncpg.types import Attribute, Type

from cache_edge.config import OriginConfig
from cache_edge.errors import DatabaseUnavailable, QueryError
from cache_edge.protocol import QueryRequest, Statement, TransactionRequest
from cache_edge.wire import unpackb
from origin.executor import Executor

INT4 = Type(oid=23, name="int4", kind="scalar", schema="pg_catalog")


class FakeCursor:
    def __init__(self, rows: list[tuple[Any, ...]], fail: BaseException | None) -> None:
        self.rows = rows
        self.fail = fail

    async def fetch(self, n: int, timeout: float) -> list[tuple[Any, ...]]:
        await asyncio.sleep(0.05)  # long enough for concurrent callers to pile up
        if self.fail is not None:
            raise self.fail
        out, self.rows = self.rows[:n], self.rows[n:]
        return out


class FakeStatement:
    def __init__(self, conn: FakeConn, sql: str) -> None:
        self.conn = conn
        self.sql = sql

    def get_parameters(self) -> tuple[Type, ...]:
        return (INT4,) * self.sql.count("$")

    def get_attributes(self) -> tuple[Attribute, ...]:
        return (Attribute("n", INT4),) if self.sql.startswith("SELECT") else ()

    def get_statusmsg(self) -> str:
        return "INSERT 0 1"

    async def fetch(self, *args: Any, timeout: float) -> list[Any]:
        self.conn.log.append(("run", self.sql, args))
        if self.conn.fail_at == "run":
            raise self.conn.error
        return []

    def cursor(self, *args: Any, timeout: float) -> Any:
        self.conn.log.append(("run", self.sql, args))
        fail = self.conn.error if self.conn.fail_at == "run" else None

        async def make() -> FakeCursor:
            return FakeCursor([(a,) for a in args], fail)

        return make()


class FakeConn:
    def __init__(self, fail_at: str | None = None, error: BaseException | None = None) -> None:
        self.fail_at = fail_at
        self.error = error or pg.ConnectionDoesNotExistError("connection was closed")
        self.log: list[Any] = []
        self.in_tx = False

    async def execute(self, sql: str, timeout: float) -> str:
        self.log.append(sql)
        if self.fail_at == "begin" and sql.startswith("BEGIN"):
            raise self.error
        self.in_tx = sql.startswith("BEGIN")
        return sql

    async def prepare(self, sql: str, timeout: float) -> FakeStatement:
        if self.fail_at == "prepare":
            raise self.error
        return FakeStatement(self, sql)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        # Only EXPLAIN (the dependency probe) is run through fetchval.
        return [{"Plan": {"Node Type": "Result", "Output": ["1"]}}]

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        return []

    def is_closed(self) -> bool:
        return False

    def is_in_transaction(self) -> bool:
        return self.in_tx


class FakePools:
    def __init__(self, *conns: FakeConn) -> None:
        self.conns = list(conns)
        self.acquired = 0

    @asynccontextmanager
    async def acquire(self, tenant: str) -> AsyncIterator[FakeConn]:
        self.acquired += 1
        yield self.conns.pop(0) if self.conns else FakeConn()


def executor(pools: FakePools, coalesced: list[str] | None = None) -> Executor:
    hook = coalesced.append if coalesced is not None else None
    return Executor(pools, OriginConfig(), on_coalesced=hook, clock=lambda: 1234.5678)  # type: ignore[arg-type]


def read(sql: str = "SELECT $1", *params: Any) -> QueryRequest:
    return QueryRequest(Statement(sql, list(params or (7,))), read_only=True)


async def test_read_retries_once_when_the_connection_died_before_the_statement() -> None:
    dead = FakeConn(fail_at="begin")
    pools = FakePools(dead, FakeConn())
    result = await executor(pools).query("acme", read())
    assert pools.acquired == 2
    assert unpackb(b"\x91" + result.result.rows) == [[7]]
    assert result.produced_at == 1234567


async def test_read_is_not_retried_once_the_statement_ran() -> None:
    pools = FakePools(FakeConn(fail_at="run"), FakeConn())
    with pytest.raises(DatabaseUnavailable):
        await executor(pools).query("acme", read())
    assert pools.acquired == 1


async def test_writes_are_never_retried() -> None:
    pools = FakePools(FakeConn(fail_at="prepare"), FakeConn())
    request = QueryRequest(Statement("INSERT INTO t VALUES ($1)", [1]), read_only=False)
    with pytest.raises(DatabaseUnavailable):
        await executor(pools).query("acme", request)
    assert pools.acquired == 1


async def test_a_statement_error_is_not_retried() -> None:
    pools = FakePools(FakeConn(fail_at="prepare", error=pg.UndefinedTableError("nope")))
    with pytest.raises(QueryError):
        await executor(pools).query("acme", read())
    assert pools.acquired == 1


async def test_stale_cached_statement_is_retried() -> None:
    stale = FakeConn(fail_at="run", error=pg.InvalidCachedStatementError("cached plan changed"))
    pools = FakePools(stale, FakeConn())
    await executor(pools).query("acme", read())
    assert pools.acquired == 2


async def test_identical_reads_in_flight_share_one_execution() -> None:
    conns = [FakeConn() for _ in range(5)]
    pools = FakePools(*conns)
    coalesced: list[str] = []
    ex = executor(pools, coalesced)
    results = await asyncio.gather(*(ex.query("acme", read()) for _ in range(5)))
    assert pools.acquired == 1
    assert len({id(r) for r in results}) == 1
    assert coalesced == ["acme"] * 4
    # A different tenant, SQL or typed param is a different query.
    await asyncio.gather(
        ex.query("acme", read("SELECT $1", 8)),
        ex.query("globex", read()),
        ex.query("acme", read("SELECT $1", "7")),
    )
    assert pools.acquired == 4


async def test_identical_writes_all_run() -> None:
    pools = FakePools()
    ex = executor(pools)
    request = QueryRequest(Statement("INSERT INTO t VALUES ($1)", [1]), read_only=False)
    results = await asyncio.gather(*(ex.query("acme", request) for _ in range(3)))
    assert pools.acquired == 3
    assert [r.result.row_count for r in results] == [1, 1, 1]


async def test_transaction_runs_statements_in_order_inside_one_transaction() -> None:
    conn = FakeConn()
    request = TransactionRequest(
        [Statement("INSERT INTO t VALUES ($1)", [1]), Statement("SELECT $1", [2])],
        "serializable",
    )
    result = await executor(FakePools(conn)).transaction("acme", request)
    assert conn.log[0] == "BEGIN ISOLATION LEVEL SERIALIZABLE"
    assert conn.log[-1] == "COMMIT"
    assert [r.row_count for r in result.results] == [1, 1]


async def test_transaction_failure_rolls_back_and_names_the_statement() -> None:
    conn = FakeConn(fail_at="prepare", error=pg.UndefinedTableError("nope"))
    request = TransactionRequest([Statement("SELECT 1", [])], "read_committed")
    with pytest.raises(QueryError) as info:
        await executor(FakePools(conn)).transaction("acme", request)
    assert info.value.extra["statementIndex"] == 0
    assert conn.log[-1] == "ROLLBACK"
