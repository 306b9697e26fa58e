"""Run one statement or one transaction for a tenant, streaming rows into a bounded buffer.

Identical read-only queries (same tenant, SQL and typed params, by
``keys.query_fingerprint``) in flight at the same time run once and every caller
gets the result: they would read the same snapshot-equivalent answer anyway.
Statements with ``readOnly=false`` are never coalesced, because two identical
INSERTs are two inserts; the caller asked for both to happen.

A read-only query (and a transaction) is retried once when the connection
failed before any statement reached the database (a connection that died while
idle in the pool); a single write is never retried, it might have run.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg

from cache_edge.config import OriginConfig
from cache_edge.errors import CacheEdgeError
from cache_edge.keys import query_fingerprint
from cache_edge.logs import get_logger
from cache_edge.protocol import QueryRequest, Statement, TransactionRequest
from cache_edge.singleflight import Group
from origin.db_errors import is_connection_error, is_stale_statement, map_database_error
from origin.dependencies import Dependencies, explain_dependencies
from origin.pool import TenantPools
from origin.results import ResultSet, RowBuffer, SizeBudget, row_count_from_status
from origin.types import coerce_params, type_name

__all__ = ["Executor", "QueryResult", "TransactionResult"]

log = get_logger("origin.executor")

T = TypeVar("T")

_MAX_REMEMBERED = 10_000  # statement texts whose dependencies we keep
_CHUNK_ROWS = 500  # rows per cursor round trip: few round trips, bounded overshoot past the limit
_NETWORK_GRACE = 5.0  # client-side timeout beyond statement_timeout, for a silent network
_ROLLBACK_TIMEOUT = 2.0
_ISOLATION = {
    "read_committed": "READ COMMITTED",
    "repeatable_read": "REPEATABLE READ",
    "serializable": "SERIALIZABLE",
}


@dataclass(frozen=True, slots=True)
class QueryResult:
    result: ResultSet
    produced_at: int  # epoch ms on the origin's clock, just before the statement ran
    watermark: int = 0  # last purge known committed before the statement ran
    dependencies: Dependencies | None = None  # what a read-only result depends on


@dataclass(frozen=True, slots=True)
class TransactionResult:
    results: tuple[ResultSet, ...]
    produced_at: int


class _Progress:
    """How far an attempt got: decides whether a retry is safe and which statement failed."""

    __slots__ = ("fresh", "produced_at", "started", "statement_index")

    def __init__(self, fresh: bool = False) -> None:
        self.started = False
        self.produced_at = 0
        self.statement_index: int | None = None
        # A retry after a schema change prepares anew instead of trusting any cache.
        self.fresh = fresh

    def start(self, clock: Callable[[], float]) -> None:
        self.produced_at = int(clock() * 1000)
        self.started = True


def _columns(attributes: Sequence[Any]) -> list[dict[str, str]]:
    return [{"name": a.name, "type": type_name(a.type)} for a in attributes]


class Executor:
    def __init__(
        self,
        pools: TenantPools,
        origin: OriginConfig,
        *,
        on_coalesced: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._pools = pools
        self._max_bytes = origin.max_response_bytes
        self._timeout = origin.statement_timeout + _NETWORK_GRACE
        self._on_coalesced = on_coalesced
        self._clock = clock
        self._flights: Group[QueryResult] = Group()
        self._deps: dict[tuple[str, str], Dependencies] = {}

    async def query(
        self,
        tenant: str,
        request: QueryRequest,
        watermark: Callable[[], Awaitable[int]] | None = None,
    ) -> QueryResult:
        """Run one statement. ``watermark`` is read inside the flight, before the statement
        runs, so every caller sharing a result also shares the watermark it was made under."""
        stmt = request.statement
        if not request.read_only:
            return await self._attempt(tenant, lambda c, p: self._write(c, stmt, p), False)

        async def read() -> QueryResult:
            try:
                mark = await watermark() if watermark is not None else 0
            except Exception as exc:
                raise map_database_error(exc) from exc
            result = await self._attempt(tenant, lambda c, p: self._read(c, tenant, stmt, p), True)
            return QueryResult(result.result, result.produced_at, mark, result.dependencies)

        if request.min_watermark:
            # The caller needs rows newer than a purge: an older flight must not answer it.
            return await read()
        key = query_fingerprint(tenant, stmt.sql, stmt.params)
        result, shared = await self._flights.do(key, read)
        if shared and self._on_coalesced is not None:
            self._on_coalesced(tenant)
        return result

    async def transaction(self, tenant: str, request: TransactionRequest) -> TransactionResult:
        # Nothing has run before the first statement starts, so that failure may be retried.
        return await self._attempt(tenant, lambda c, p: self._transaction(c, request, p), True)

    async def _attempt(
        self,
        tenant: str,
        work: Callable[[asyncpg.Connection, _Progress], Awaitable[T]],
        retry_before_start: bool,
    ) -> T:
        for attempt in (1, 2):
            progress = _Progress(fresh=attempt == 2)
            try:
                async with self._pools.acquire(tenant) as conn:
                    try:
                        return await work(conn, progress)
                    except Exception as exc:
                        if is_stale_statement(exc):
                            # Drop this connection's cached statements: they all predate
                            # the schema change, and would fail (and cost a retry) again.
                            with contextlib.suppress(Exception):
                                await conn.reload_schema_state()
                        raise
            except Exception as exc:
                retry = attempt == 1 and (
                    is_stale_statement(exc)
                    or (retry_before_start and not progress.started and is_connection_error(exc))
                )
                if retry:
                    log.info("retrying", tenant=tenant, error=type(exc).__name__)
                    continue
                if isinstance(exc, CacheEdgeError):
                    if progress.statement_index is not None:
                        exc.extra.setdefault("statementIndex", progress.statement_index)
                    raise
                raise map_database_error(exc, statement_index=progress.statement_index) from exc
        raise AssertionError("unreachable: the second attempt returns or raises")

    async def _collect(
        self, stmt: Any, args: list[Any], budget: SizeBudget, progress: _Progress
    ) -> ResultSet:
        """Run a prepared statement inside the open transaction and gather its rows."""
        attributes = stmt.get_attributes()
        if not progress.started:
            progress.start(self._clock)
        if not attributes:
            await stmt.fetch(*args, timeout=self._timeout)
            return ResultSet([], b"", 0, row_count_from_status(stmt.get_statusmsg()))
        rows = RowBuffer(_columns(attributes), budget)
        cursor = await stmt.cursor(*args, timeout=self._timeout)
        while True:
            chunk = await cursor.fetch(_CHUNK_ROWS, timeout=self._timeout)
            rows.add(chunk)
            if len(chunk) < _CHUNK_ROWS:
                return rows.finish()

    async def _prepare(
        self, conn: asyncpg.Connection, stmt: Statement, fresh: bool = False
    ) -> tuple[Any, list[Any]]:
        if fresh:
            prepared = await conn.prepare(stmt.sql, timeout=self._timeout)
        else:
            prepared = await _cached_prepare(conn, stmt.sql, self._timeout)
        return prepared, coerce_params(stmt.params, prepared.get_parameters())

    async def _in_transaction(
        self, conn: asyncpg.Connection, begin: str, work: Callable[[], Awaitable[T]]
    ) -> T:
        await conn.execute(begin, timeout=self._timeout)
        try:
            result = await work()
            await conn.execute("COMMIT", timeout=self._timeout)
        except Exception:
            await _rollback(conn)
            raise
        return result

    async def _read(
        self, conn: asyncpg.Connection, tenant: str, stmt: Statement, progress: _Progress
    ) -> QueryResult:
        deps: list[Dependencies] = []

        async def run() -> ResultSet:
            prepared, args = await self._prepare(conn, stmt, progress.fresh)
            deps.append(await self._dependencies(conn, tenant, stmt.sql, args))
            return await self._collect(prepared, args, SizeBudget(self._max_bytes), progress)

        result = await self._in_transaction(conn, "BEGIN READ ONLY", run)
        return QueryResult(result, progress.produced_at, dependencies=deps[0])

    async def _dependencies(
        self, conn: asyncpg.Connection, tenant: str, sql: str, args: list[Any]
    ) -> Dependencies:
        """Tables and warnings of a cached statement, planned once per statement text."""
        key = (tenant, sql)
        known = self._deps.get(key)
        if known is not None:
            return known
        # A savepoint, so a statement EXPLAIN cannot handle does not abort the transaction.
        await conn.execute("SAVEPOINT cache_edge_deps", timeout=self._timeout)
        try:
            found = await explain_dependencies(conn, sql, args)
            await conn.execute("RELEASE SAVEPOINT cache_edge_deps", timeout=self._timeout)
        except asyncpg.PostgresError as exc:
            await conn.execute("ROLLBACK TO SAVEPOINT cache_edge_deps", timeout=self._timeout)
            found = Dependencies((), (f"could not determine what it reads ({exc.sqlstate})",))
        if len(self._deps) >= _MAX_REMEMBERED:
            self._deps.clear()  # statement texts are few in practice; a flush is cheap
        self._deps[key] = found
        return found

    async def _write(
        self, conn: asyncpg.Connection, stmt: Statement, progress: _Progress
    ) -> QueryResult:
        prepared, args = await self._prepare(conn, stmt, progress.fresh)
        budget = SizeBudget(self._max_bytes)
        if not prepared.get_attributes():
            # No rows to stream: run it like a single auto-committed statement (VACUUM works too).
            result = await self._collect(prepared, args, budget, progress)
        else:
            # Cursors need a transaction; a refused oversized RETURNING also undoes the write.
            result = await self._in_transaction(
                conn, "BEGIN", lambda: self._collect(prepared, args, budget, progress)
            )
        return QueryResult(result, progress.produced_at)

    async def _transaction(
        self, conn: asyncpg.Connection, request: TransactionRequest, progress: _Progress
    ) -> TransactionResult:
        budget = SizeBudget(self._max_bytes)

        async def run() -> list[ResultSet]:
            results = []
            for index, stmt in enumerate(request.statements):
                progress.statement_index = index
                prepared, args = await self._prepare(conn, stmt, progress.fresh)
                results.append(await self._collect(prepared, args, budget, progress))
            progress.statement_index = None  # a failing COMMIT belongs to no single statement
            return results

        begin = f"BEGIN ISOLATION LEVEL {_ISOLATION[request.isolation]}"
        results = await self._in_transaction(conn, begin, run)
        return TransactionResult(tuple(results), progress.produced_at)


async def _cached_prepare(conn: asyncpg.Connection, sql: str, timeout: float) -> Any:
    """A prepared statement from the connection's statement cache.

    asyncpg's public ``prepare()`` bypasses its statement cache, so every call would cost a
    Parse round trip and a later Close (~3x the cost of a cached point query, measured).
    ``fetch()``/``cursor()`` use the cache but give no access to the parameter types we
    coerce JSON values to, so we ask for the cached path directly, falling back to the
    public call if a future asyncpg changes it. Schema changes invalidate cached
    statements; asyncpg then raises and drops them, and ``_attempt`` retries once.
    """
    prepare = getattr(conn, "_prepare", None)
    if prepare is not None:
        try:
            return await prepare(sql, timeout=timeout, use_cache=True)
        except TypeError:
            pass
    return await conn.prepare(sql, timeout=timeout)


async def _rollback(conn: asyncpg.Connection) -> None:
    """Best effort: if this fails the pool's reset on release rolls back or drops the connection."""
    try:
        # A lost connection is detached from its pool proxy: even asking raises then.
        if conn.is_closed() or not conn.is_in_transaction():
            return
        await conn.execute("ROLLBACK", timeout=_ROLLBACK_TIMEOUT)
    except Exception as exc:
        log.debug("rollback_failed", error=type(exc).__name__)
