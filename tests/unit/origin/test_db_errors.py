"""asyncpg and socket failures map to the right stable code, in one place."""

from __future__ import annotations

import pytest
from asyncpg import exceptions as pg

from cache_edge.common.errors import (
    BadRequest,
    CacheEdgeError,
    DatabaseUnavailable,
    InternalError,
    NotCacheable,
    PoolTimeout,
    QueryError,
    QueryTimeout,
)
from origin.core.db_errors import is_connection_error, is_stale_statement, map_database_error


@pytest.mark.parametrize(
    ("exc", "expected", "sqlstate"),
    [
        (pg.ReadOnlySQLTransactionError("cannot execute INSERT"), NotCacheable, "25006"),
        (
            pg.QueryCanceledError("canceling statement due to statement timeout"),
            QueryTimeout,
            "57014",
        ),
        (TimeoutError(), QueryTimeout, None),
        (pg.ConnectionDoesNotExistError("connection was closed"), DatabaseUnavailable, "08003"),
        (pg.AdminShutdownError("terminating connection"), DatabaseUnavailable, "57P01"),
        (
            pg.CannotConnectNowError("the database system is starting up"),
            DatabaseUnavailable,
            "57P03",
        ),
        (pg.TooManyConnectionsError("sorry, too many clients"), DatabaseUnavailable, "53300"),
        (ConnectionRefusedError(111, "Connection refused"), DatabaseUnavailable, None),
        (
            pg.InterfaceError("cannot call Connection.fetch(): connection is closed"),
            DatabaseUnavailable,
            None,
        ),
        (pg.UndefinedTableError('relation "nope" does not exist'), QueryError, "42P01"),
        (pg.UniqueViolationError("duplicate key"), QueryError, "23505"),
        (pg.DivisionByZeroError("division by zero"), QueryError, "22012"),
        (pg.InvalidCachedStatementError("cached statement plan is invalid"), QueryError, "0A000"),
    ],
)
def test_driver_errors_map_to_stable_codes(
    exc: BaseException, expected: type[CacheEdgeError], sqlstate: str | None
) -> None:
    mapped = map_database_error(exc)
    assert type(mapped) is expected
    assert mapped.extra.get("sqlstate") == sqlstate


def test_read_only_violation_says_cached_queries_must_be_read_only() -> None:
    mapped = map_database_error(pg.ReadOnlySQLTransactionError("cannot execute UPDATE"))
    assert mapped.code == "not_cacheable" and mapped.status == 400
    assert "read-only" in mapped.message


def test_query_error_carries_server_message_and_detail() -> None:
    exc = pg.UniqueViolationError('duplicate key value violates unique constraint "t_pkey"')
    exc.detail = "Key (id)=(1) already exists."
    body = map_database_error(exc, statement_index=2).to_body("rid")["error"]
    assert body["code"] == "query_error"
    assert body["sqlstate"] == "23505"
    assert "duplicate key" in body["message"]
    assert body["detail"] == "Key (id)=(1) already exists."
    assert body["statementIndex"] == 2


def test_client_side_argument_error_is_bad_request() -> None:
    exc = pg.DataError("invalid input for query argument $1: 'x' (an integer is required)")
    assert isinstance(map_database_error(exc), BadRequest)


def test_connect_errors_never_echo_their_text() -> None:
    exc = OSError("could not connect to postgresql://app:hunter2@db:5432/app")
    mapped = map_database_error(exc)
    assert isinstance(mapped, DatabaseUnavailable)
    assert "hunter2" not in mapped.message
    assert mapped.retry_after is not None


def test_unexpected_exception_is_internal_with_generic_message() -> None:
    boom = RuntimeError("secret internals")
    mapped = map_database_error(boom)
    assert isinstance(mapped, InternalError) and mapped.status == 500
    assert "secret" not in mapped.message
    assert mapped.__cause__ is boom


def test_our_own_errors_pass_through_and_gain_the_statement_index() -> None:
    exc = PoolTimeout("no connection")
    assert map_database_error(exc, statement_index=0) is exc
    assert exc.extra["statementIndex"] == 0


def test_long_server_messages_are_clipped() -> None:
    mapped = map_database_error(pg.StringDataRightTruncationError("x" * 5000))
    assert len(mapped.message) <= 500


def test_retry_classification() -> None:
    assert is_connection_error(pg.ConnectionDoesNotExistError("gone"))
    assert is_connection_error(BrokenPipeError())
    assert not is_connection_error(pg.UndefinedTableError("nope"))
    assert not is_connection_error(pg.InterfaceError("cannot use a closed cursor: argument"))
    assert is_stale_statement(pg.InvalidCachedStatementError("cached plan"))
    assert not is_stale_statement(pg.QueryCanceledError("timeout"))
