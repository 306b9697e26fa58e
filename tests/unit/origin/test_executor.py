"""Executor decisions with scripted fake connections: retry safety, coalescing, producedAt,
and how few round trips a statement costs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from asyncpg import exceptions as pg
from asyncpg.types import Attribute, Type

from cache_edge.common.errors import DatabaseUnavailable, NotCacheable, QueryError
from cache_edge.common.protocol import QueryRequest, Statement, TransactionRequest
from cache_edge.common.wire import unpackb
from cache_edge.server.config import OriginConfig
from origin.core.executor import Executor
from origin.core.session import looks_like_read

INT4 = Type(oid=23, name="int4", kind="scalar", schema="pg_catalog")


class FakeStatement:
    def __init__(self, conn: FakeConn, sql: str) -> None:
        self.conn = conn
        self.sql = sql
        self._state = self  # what the executor hands to the protocol

    def get_parameters(self) -> tuple[Type, ...]:
        return (INT4,) * self.sql.count("$")

    def get_attributes(self) -> tuple[Attribute, ...]:
        return (Attribute("n", INT4),) if self.sql.startswith("SELECT") else ()


class FakeProtocol:
    """The two protocol calls the executor uses: Bind+Execute(limit)+Sync, Execute(limit)."""

    def __init__(self, conn: FakeConn) -> None:
        self.conn = conn
        self.pending: list[tuple[Any, ...]] = []

    async def bind_execute(
        self,
        state: FakeStatement,
        args: list[Any],
        portal: str,
        limit: int,
        extra: bool,
        timeout: float,
    ) -> tuple[list[Any], bytes | None, bool]:
        conn = self.conn
        conn.log.append(("run", state.sql, tuple(args)))
        await asyncio.sleep(0.05)  # long enough for concurrent callers to pile up
        if conn.fail_at == "run" and conn.fail_count > 0:
            conn.fail_count -= 1
            raise conn.error
        if conn.read_only_now() and state.sql.startswith(("INSERT", "SELECT nextval")):
            raise pg.ReadOnlySQLTransactionError("cannot execute INSERT in a read-only transaction")
        if not state.get_attributes():
            return [], b"INSERT 0 1", True
        self.pending = [(a,) for a in args] * conn.rows_per_arg
        return self._take(limit)

    async def execute(
        self, state: FakeStatement, portal: str, limit: int, extra: bool, timeout: float
    ) -> tuple[list[Any], bytes | None, bool]:
        assert self.conn.in_tx, "a portal survives the Sync only inside a transaction block"
        self.conn.log.append(("more", state.sql))
        return self._take(limit)

    def _take(self, limit: int) -> tuple[list[Any], bytes | None, bool]:
        n = limit or len(self.pending)
        out, self.pending = self.pending[:n], self.pending[n:]
        if len(out) == n and limit:
            return out, None, False  # PortalSuspended, as PostgreSQL answers an exact fit too
        return out, f"SELECT {len(out)}".encode(), True


class FakeSettings:
    def __init__(self, conn: FakeConn) -> None:
        self.conn = conn

    def __getattr__(self, name: str) -> Any:
        if name == "default_transaction_read_only" and self.conn.reports_read_only:
            return "on" if self.conn.session_ro else "off"
        raise AttributeError(name)


class FakeConn:
    def __init__(
        self,
        fail_at: str | None = None,
        error: BaseException | None = None,
        *,
        reports_read_only: bool = True,
        rows_per_arg: int = 1,
    ) -> None:
        self.fail_at = fail_at
        self.fail_count = 1 if fail_at == "run" and error is not None else 99
        self.error = error or pg.ConnectionDoesNotExistError("connection was closed")
        self.log: list[Any] = []
        self.in_tx = False
        self.tx_ro = False
        self.session_ro = False
        self.reports_read_only = reports_read_only
        self.rows_per_arg = rows_per_arg
        self.kept = False
        self._protocol = FakeProtocol(self)

    def read_only_now(self) -> bool:
        return self.tx_ro if self.in_tx else self.session_ro

    def get_settings(self) -> FakeSettings:
        return FakeSettings(self)

    def keep_session(self) -> None:
        self.kept = True

    def set_session_read_only(self, value: bool) -> None:
        pass

    async def execute(self, sql: str, timeout: float) -> str:
        if sql.startswith(("SET plan_cache_mode", "DEALLOCATE cache_edge_deps")):
            return sql  # the dependency probe's setup and undo, around its EXPLAIN
        self.log.append(sql)
        if self.fail_at == "begin" and sql.startswith(("BEGIN", "SET")):
            raise self.error
        if sql.startswith("SET default_transaction_read_only"):
            self.session_ro = sql.endswith("on")
        elif sql.startswith("BEGIN"):
            self.in_tx = True
            self.tx_ro = "READ ONLY" in sql
        elif sql in ("COMMIT", "ROLLBACK"):
            self.in_tx = False
        return sql

    async def prepare(self, sql: str, timeout: float) -> FakeStatement:
        if self.fail_at == "prepare":
            raise self.error
        return FakeStatement(self, sql)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        # Only EXPLAIN (the dependency probe) is run through fetchval.
        self.log.append("EXPLAIN")
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
    async def acquire(
        self, tenant: str, read_only_session: bool = False
    ) -> AsyncIterator[FakeConn]:
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
    assert conn.log[0] == "BEGIN ISOLATION LEVEL SERIALIZABLE READ WRITE"
    assert conn.log[-1] == "COMMIT"
    assert [r.row_count for r in result.results] == [1, 1]


async def test_transaction_failure_rolls_back_and_names_the_statement() -> None:
    conn = FakeConn(fail_at="prepare", error=pg.UndefinedTableError("nope"))
    request = TransactionRequest([Statement("SELECT 1", [])], "read_committed")
    with pytest.raises(QueryError) as info:
        await executor(FakePools(conn)).transaction("acme", request)
    assert info.value.extra["statementIndex"] == 0
    assert conn.log[-1] == "ROLLBACK"


def runs(conn: FakeConn) -> list[Any]:
    """The log without the statements' arguments: what went to the server, in order."""
    return [e[0] if isinstance(e, tuple) else e for e in conn.log]


async def test_a_small_read_is_one_round_trip_in_a_read_only_session() -> None:
    conn = FakeConn()
    ex = executor(FakePools(conn, conn))
    await ex.query("acme", read())
    # The session is switched to read-only once; EXPLAIN runs once per statement text.
    assert runs(conn) == ["SET default_transaction_read_only = on", "EXPLAIN", "run"]
    assert conn.kept  # only read: the pool may skip its reset
    conn.log.clear()
    result = await ex.query("acme", read())
    assert runs(conn) == ["run"]
    assert unpackb(b"\x91" + result.result.rows) == [[7]]


async def test_a_read_that_writes_is_not_cacheable() -> None:
    conn = FakeConn()
    request = QueryRequest(Statement("INSERT INTO t VALUES ($1)", [1]), read_only=True)
    with pytest.raises(NotCacheable):
        await executor(FakePools(conn)).query("acme", request)
    assert not conn.kept


async def test_more_rows_than_one_chunk_are_read_again_in_a_read_only_block() -> None:
    conn = FakeConn(rows_per_arg=1200)
    result = await executor(FakePools(conn)).query("acme", read())
    assert result.result.n_rows == 1200
    assert runs(conn)[2:] == ["run", "BEGIN READ ONLY", "run", "more", "more", "COMMIT"]


async def test_without_the_reported_setting_reads_run_in_a_read_only_block() -> None:
    conn = FakeConn(reports_read_only=False)
    await executor(FakePools(conn)).query("acme", read())
    assert runs(conn) == ["EXPLAIN", "BEGIN READ ONLY", "run", "COMMIT"]
    assert not conn.kept


async def test_an_uncached_query_runs_read_only_and_a_writing_one_runs_again_read_write() -> None:
    conn = FakeConn()
    ex = executor(FakePools(conn, conn, conn))
    plain = QueryRequest(Statement("SELECT $1", [1]), read_only=False)
    await ex.query("acme", plain)
    assert runs(conn) == ["SET default_transaction_read_only = on", "run"]
    conn.log.clear()
    writing = QueryRequest(Statement("SELECT nextval($1)", [1]), read_only=False)
    result = await ex.query("acme", writing)
    assert result.result.n_rows == 1
    assert runs(conn) == ["run", "BEGIN READ WRITE", "run", "COMMIT"]
    conn.log.clear()
    await ex.query("acme", writing)  # remembered: no read-only try any more
    # The session is still read-only (no pool reset here): made read-write before the block.
    assert runs(conn) == [
        "RESET default_transaction_read_only",
        "BEGIN READ WRITE",
        "run",
        "COMMIT",
    ]


async def test_forgotten_dependencies_are_explained_again() -> None:
    conn = FakeConn()
    ex = executor(FakePools(*[conn] * 4))
    await ex.query("acme", read())
    await ex.query("acme", read())
    assert runs(conn).count("EXPLAIN") == 1
    ex.forget_dependencies("globex")
    await ex.query("acme", read())
    assert runs(conn).count("EXPLAIN") == 1
    ex.forget_dependencies("acme")
    await ex.query("acme", read())
    assert runs(conn).count("EXPLAIN") == 2


@pytest.mark.parametrize(
    ("sql", "looks"),
    [
        ("SELECT 1", True),
        ("  /* c */ (select 1)", True),
        ("-- note\nWITH x AS (DELETE FROM t RETURNING 1) SELECT 1", True),  # fails read-only
        ("\tvalues (1)", True),
        ("TABLE t", True),
        ("INSERT INTO t VALUES (1)", False),
        ("selectx", False),
        ("/* unterminated SELECT", False),
        ("", False),
        ("-" * 100_000 + "1", False),  # linear time: no backtracking
    ],
)
def test_which_uncached_statements_get_the_read_only_try(sql: str, looks: bool) -> None:
    assert looks_like_read(sql) is looks
