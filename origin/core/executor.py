"""Run one statement or one transaction for a tenant, streaming rows into a bounded buffer.

Identical read-only queries (same tenant, SQL and typed params, by
``keys.query_fingerprint``) in flight at the same time run once and every caller
gets the result: they would read the same snapshot-equivalent answer anyway.
Statements with ``readOnly=false`` are never coalesced, because two identical
INSERTs are two inserts; the caller asked for both to happen.

A read-only query (and a transaction) is retried once when the connection
failed before any statement reached the database (a connection that died while
idle in the pool); a single write is never retried, it might have run.

Round trips. A read runs in a session whose transactions are read-only by default
(``default_transaction_read_only``, set once per connection), so a query whose rows
fit one chunk is a single Bind/Execute/Sync from asyncpg's statement cache: no
BEGIN/COMMIT, and (when it can only have read) no reset when the connection goes
back to the pool. More rows than one chunk: the statement runs again in a
``BEGIN READ ONLY`` block, a chunk per round trip, under the byte budget.
Uncached statements that look like queries get the same read-only try; a write
fails there before changing anything in the database (remembered per statement
text, so once) and runs in a ``BEGIN READ WRITE`` block, or auto-committed when it
returns no rows. (Only effects outside the transaction, such as a ``dblink`` call
made before the statement's first write, can happen in that failed try too.)
Servers that do not report ``default_transaction_read_only`` (PostgreSQL < 14)
get explicit read-only blocks throughout.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg

from cache_edge.common.keys import query_fingerprint
from cache_edge.common.protocol import QueryRequest, Statement, TransactionRequest
from cache_edge.common.singleflight import Group
from cache_edge.common.wire import packb
from cache_edge.server.config import OriginConfig
from cache_edge.server.logs import get_logger
from origin.core.db_errors import (
    is_connection_error,
    is_read_only_violation,
    is_stale_statement,
    raise_mapped,
    rejected_sqlstate,
    translated,
)
from origin.core.dependencies import Dependencies, explain_dependencies
from origin.core.pool import TenantPools
from origin.core.results import ResultSet, RowBuffer, SizeBudget, row_count_from_status
from origin.core.session import (
    bind_execute,
    cached_prepare,
    execute_more,
    keep_session_if_untouched,
    looks_like_read,
    reported_read_only,
    statement_shape,
)
from origin.core.types import coerce_params, type_name

__all__ = ["Executor", "QueryResult", "TransactionResult"]

log = get_logger("origin.core.executor")

T = TypeVar("T")

_MAX_REMEMBERED = 10_000  # statement texts whose dependencies (or write-ness) we keep
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


@dataclass(frozen=True, slots=True)
class _Bound:
    """A prepared statement with its arguments coerced to its parameter types."""

    prepared: Any
    args: list[Any]
    attributes: tuple[Any, ...]  # result columns; none for a command without rows


@functools.lru_cache(maxsize=1024)
def _columns(attributes: tuple[Any, ...]) -> tuple[list[dict[str, str]], bytes]:
    """A result's column descriptions and their msgpack, made once per shape (asyncpg's
    attributes are tuples of names and types). Shared: never changed by their users."""
    columns = [{"name": a.name, "type": type_name(a.type)} for a in attributes]
    return columns, packb(columns)


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
        # Uncached statements that looked like queries but wrote: they skip the read-only try.
        self._writers: dict[tuple[str, str], None] = {}

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
            return await self._attempt(tenant, lambda c, p: self._write(c, tenant, stmt, p), False)

        async def read() -> QueryResult:
            with translated():
                mark = await watermark() if watermark is not None else 0
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
                async with self._pools.acquire(tenant, read_only_session=True) as conn:
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
                raise_mapped(exc, statement_index=progress.statement_index)
        raise AssertionError("unreachable: the second attempt returns or raises")

    async def _rows(
        self,
        conn: asyncpg.Connection,
        bound: _Bound,
        budget: SizeBudget,
        progress: _Progress,
        *,
        in_block: bool,
    ) -> tuple[ResultSet, str] | None:
        """Run a prepared statement, ``_CHUNK_ROWS`` rows per round trip, and gather them.

        The first chunk comes with the Bind in one round trip. In a transaction block
        (``in_block``) the unnamed portal outlives each Sync and the next chunks follow;
        outside one it is gone, so more rows than one chunk give None (run it in a block).
        Returns the result and the command tag.
        """
        prepared, args, attributes = bound.prepared, bound.args, bound.attributes
        if not progress.started:
            progress.start(self._clock)
        if not attributes:
            _, tag, _ = await bind_execute(conn, prepared, args, 0, self._timeout)
            return ResultSet([], b"", 0, row_count_from_status(tag)), tag
        columns, packed_columns = _columns(tuple(attributes))
        rows = RowBuffer(columns, budget, packed_columns)
        chunk, tag, done = await bind_execute(conn, prepared, args, _CHUNK_ROWS, self._timeout)
        rows.add(chunk)
        while not done:
            if not in_block:
                return None
            chunk, tag, done = await execute_more(conn, prepared, _CHUNK_ROWS, self._timeout)
            rows.add(chunk)
        return rows.finish(), tag

    async def _read_rows(
        self,
        conn: asyncpg.Connection,
        bound: _Bound,
        progress: _Progress,
        begin: str,
        read_only_session: bool,
    ) -> tuple[ResultSet, str]:
        """A read: one round trip in a read-only session when the rows fit one chunk, else
        the whole statement again in a ``begin`` transaction block."""
        if read_only_session:
            budget = SizeBudget(self._max_bytes)
            found = await self._rows(conn, bound, budget, progress, in_block=False)
            if found is not None:
                return found
        return await self._in_block(conn, begin, bound, SizeBudget(self._max_bytes), progress)

    async def _in_block(
        self,
        conn: asyncpg.Connection,
        begin: str,
        bound: _Bound,
        budget: SizeBudget,
        progress: _Progress,
    ) -> tuple[ResultSet, str]:
        async def run() -> tuple[ResultSet, str]:
            found = await self._rows(conn, bound, budget, progress, in_block=True)
            assert found is not None  # in a block every chunk is read
            return found

        return await self._in_transaction(conn, begin, run)

    async def _read_only_session(self, conn: asyncpg.Connection) -> bool:
        """Make the session's transactions read-only by default (once per connection).

        PostgreSQL >= 14 reports ``default_transaction_read_only`` to the client whenever it
        changes (so a statement that switched it off is noticed); older servers do not, and
        their reads run in explicit ``BEGIN READ ONLY`` blocks instead (False).
        """
        state = reported_read_only(conn)
        if state is None:
            return False
        if not state:
            await conn.execute("SET default_transaction_read_only = on", timeout=self._timeout)
            mark = getattr(conn, "set_session_read_only", None)
            if mark is not None:
                mark(True)
        return reported_read_only(conn) is True

    async def _read_write_session(self, conn: asyncpg.Connection) -> None:
        """Undo ``_read_only_session`` before a write (a round trip only when it was set).

        It has to be a statement of its own, after the write's prepare: asyncpg sends Parse
        and Describe without a Sync, so a Parse sent under the read-only default opened the
        implicit transaction read-only and took its snapshot there. A ``BEGIN READ WRITE``
        would join that transaction and fail (25001, "read-write mode must be set before any
        query"); a simple query commits it, and the block starts anew read-write.
        """
        if reported_read_only(conn) is not True:
            return
        await conn.execute("RESET default_transaction_read_only", timeout=self._timeout)
        mark = getattr(conn, "set_session_read_only", None)
        if mark is not None:
            mark(False)

    async def _prepare(
        self, conn: asyncpg.Connection, stmt: Statement, fresh: bool = False
    ) -> _Bound:
        if fresh:
            prepared = await conn.prepare(stmt.sql, timeout=self._timeout)
        else:
            prepared = await cached_prepare(conn, stmt.sql, self._timeout)
        parameters, attributes = statement_shape(prepared)
        args = coerce_params(stmt.params, parameters)
        return _Bound(prepared, args, attributes)

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
        bound = await self._prepare(conn, stmt, progress.fresh)
        read_only = await self._read_only_session(conn)  # before EXPLAIN too (it runs nothing)
        deps = await self._dependencies(conn, tenant, stmt.sql, bound.args)
        result, tag = await self._read_rows(conn, bound, progress, "BEGIN READ ONLY", read_only)
        keep_session_if_untouched(conn, stmt.sql, tag)
        return QueryResult(result, progress.produced_at, dependencies=deps)

    async def statement_dependencies(self, tenant: str, sql: str, nargs: int) -> Dependencies:
        """What a statement reads, for a caller without a connection of ours (the
        PostgreSQL door's cached reads run on raw connections): planned once per text."""
        known = self._deps.get((tenant, sql))
        if known is not None:
            return known
        with translated():
            async with self._pools.acquire(tenant) as conn:
                return await self._dependencies(conn, tenant, sql, [None] * nargs)

    def forget_dependencies(self, tenant: str) -> None:
        """Drop what EXPLAIN said about the tenant's statements (its schema changed)."""
        for key in [k for k in self._deps if k[0] == tenant]:
            del self._deps[key]

    async def _dependencies(
        self, conn: asyncpg.Connection, tenant: str, sql: str, args: list[Any]
    ) -> Dependencies:
        """Tables and warnings of a cached statement, planned once per statement text."""
        key = (tenant, sql)
        known = self._deps.get(key)
        if known is not None:
            return known
        # Outside any transaction block, so a statement EXPLAIN cannot handle spoils nothing.
        try:
            found = await explain_dependencies(conn, sql, args, self._timeout)
        except Exception as exc:
            sqlstate = rejected_sqlstate(exc)
            if sqlstate is None:
                raise  # not the statement: the connection or the network
            found = Dependencies(
                (), (f"could not determine what it reads ({sqlstate})",), known=False
            )
        if len(self._deps) >= _MAX_REMEMBERED:
            self._deps.clear()  # statement texts are few in practice; a flush is cheap
        self._deps[key] = found
        return found

    async def _write(
        self, conn: asyncpg.Connection, tenant: str, stmt: Statement, progress: _Progress
    ) -> QueryResult:
        bound = await self._prepare(conn, stmt, progress.fresh)
        has_rows = bool(bound.attributes)
        key = (tenant, stmt.sql)
        tried = False
        # Most uncached statements are plain SELECTs: try it read-only in one round trip.
        # A write fails there before changing anything, and runs below (remembered).
        if (
            has_rows
            and key not in self._writers
            and looks_like_read(stmt.sql)
            and await self._read_only_session(conn)
        ):
            tried = True
            try:
                result, tag = await self._read_rows(conn, bound, progress, "BEGIN READ WRITE", True)
            except Exception as exc:
                if not is_read_only_violation(exc):
                    raise
                if len(self._writers) >= _MAX_REMEMBERED:
                    self._writers.clear()
                self._writers[key] = None
            else:
                keep_session_if_untouched(conn, stmt.sql, tag)
                return QueryResult(result, progress.produced_at)
        if not tried:
            # (After the try, its Sync ended the Parse's transaction: BEGIN READ WRITE works.)
            await self._read_write_session(conn)
        budget = SizeBudget(self._max_bytes)
        if not has_rows:
            # No rows to stream: run it like a single auto-committed statement (VACUUM works too).
            found = await self._rows(conn, bound, budget, progress, in_block=True)
            assert found is not None
            result = found[0]
        else:
            # In a block: a refused oversized RETURNING also undoes the write.
            result, _ = await self._in_block(conn, "BEGIN READ WRITE", bound, budget, progress)
        return QueryResult(result, progress.produced_at)

    async def _transaction(
        self, conn: asyncpg.Connection, request: TransactionRequest, progress: _Progress
    ) -> TransactionResult:
        budget = SizeBudget(self._max_bytes)

        async def run() -> list[ResultSet]:
            results = []
            for index, stmt in enumerate(request.statements):
                progress.statement_index = index
                bound = await self._prepare(conn, stmt, progress.fresh)
                found = await self._rows(conn, bound, budget, progress, in_block=True)
                assert found is not None
                results.append(found[0])
            progress.statement_index = None  # a failing COMMIT belongs to no single statement
            return results

        begin = f"BEGIN ISOLATION LEVEL {_ISOLATION[request.isolation]} READ WRITE"
        results = await self._in_transaction(conn, begin, run)
        return TransactionResult(tuple(results), progress.produced_at)


async def _rollback(conn: asyncpg.Connection) -> None:
    """Best effort: if this fails the pool's reset on release rolls back or drops the connection."""
    try:
        # A lost connection is detached from its pool proxy: even asking raises then.
        if conn.is_closed() or not conn.is_in_transaction():
            return
        await conn.execute("ROLLBACK", timeout=_ROLLBACK_TIMEOUT)
    except Exception as exc:
        log.debug("rollback_failed", error=type(exc).__name__)
