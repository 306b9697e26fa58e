"""A connection asyncpg can no longer drive (issue 13, G): database_unavailable, retried
when nothing ran, and never lent again."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from asyncpg import exceptions as pg

from cache_edge.common.errors import DatabaseUnavailable, InternalError, QueryError
from cache_edge.server.config import OriginConfig, TenantConfig
from origin.core.db_errors import is_connection_error, map_database_error
from origin.core.pool import TenantPool

TENANT = TenantConfig("acme", (), "postgresql://app@db.invalid/app", pool_max_size=1)

BROKEN = [
    # The server ended the session while the protocol was still reading its FATAL error.
    pg.InternalClientError("cannot switch to state 15; another operation (2) is in progress"),
    pg.InternalClientError('cannot switch to state 12; protocol is in the "failed" state'),
    pg.InterfaceError("cannot perform operation: another operation is in progress"),
    pg.InterfaceError("cannot perform operation: connection is closed"),
    pg.InterfaceError("cannot call Transaction.__aexit__(): the underlying connection is closed"),
    pg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
]


@pytest.mark.parametrize("exc", BROKEN, ids=lambda e: type(e).__name__)
def test_a_broken_client_state_is_database_unavailable(exc: BaseException) -> None:
    mapped = map_database_error(exc)
    assert type(mapped) is DatabaseUnavailable
    assert mapped.status == 503 and mapped.retry_after is not None
    assert type(exc).__name__ in mapped.message
    assert is_connection_error(exc)  # a read that had not started is retried elsewhere


def test_misuse_that_leaves_the_connection_usable_is_not_unavailable() -> None:
    wrong_args = pg.InterfaceError("the server expects 1 argument for this query, 2 were passed")
    assert not is_connection_error(wrong_args)
    assert type(map_database_error(wrong_args)) is InternalError


class Conn:
    def __init__(self) -> None:
        self.terminated = False

    def terminate(self) -> None:
        self.terminated = True


class OneConnectionPool:
    """asyncpg.Pool as the tenant pool uses it: lends its connection until it is terminated."""

    def __init__(self) -> None:
        self.conn = Conn()
        self.connections = [self.conn]

    def __await__(self) -> Any:
        async def ready() -> OneConnectionPool:
            return self

        return ready().__await__()

    async def acquire(self) -> Conn:
        if self.conn.terminated:
            self.conn = Conn()  # asyncpg's slot reconnects
            self.connections.append(self.conn)
        return self.conn

    async def release(self, conn: Conn, timeout: float) -> None:
        await asyncio.sleep(0)


async def _lease_failing_with(pool: TenantPool, exc: BaseException) -> None:
    with pytest.raises(type(exc)):
        async with pool.acquire(read_only_session=True):
            raise exc


@pytest.mark.parametrize("exc", BROKEN, ids=lambda e: type(e).__name__)
async def test_a_connection_that_broke_is_never_lent_again(exc: BaseException) -> None:
    fake = OneConnectionPool()
    pool = TenantPool(TENANT, OriginConfig(), lambda dsn, **kw: fake)
    await _lease_failing_with(pool, exc)
    async with pool.acquire(read_only_session=True) as conn:
        assert conn is fake.connections[1]
    assert fake.connections[0].terminated


async def test_an_already_mapped_failure_is_traced_to_its_cause() -> None:
    fake = OneConnectionPool()
    pool = TenantPool(TENANT, OriginConfig(), lambda dsn, **kw: fake)
    mapped = map_database_error(BROKEN[0])
    mapped.__cause__ = BROKEN[0]
    await _lease_failing_with(pool, mapped)
    assert fake.connections[0].terminated


async def test_a_statement_error_keeps_the_connection() -> None:
    fake = OneConnectionPool()
    pool = TenantPool(TENANT, OriginConfig(), lambda dsn, **kw: fake)
    await _lease_failing_with(pool, pg.UniqueViolationError("duplicate key"))
    await _lease_failing_with(pool, QueryError("mapped already", sqlstate="23505"))
    async with pool.acquire(read_only_session=True) as conn:
        assert conn is fake.connections[0]
    assert not fake.connections[0].terminated
