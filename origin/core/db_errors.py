"""The one place where asyncpg and socket errors become cache-edge errors.

    asyncpg / OS error                                   -> cache-edge error
    ReadOnlySQLTransactionError (25006)                  -> NotCacheable
    QueryCanceledError (57014), client-side timeout      -> QueryTimeout
    connection lost/refused, 08xxx, 57P01-57P03, 53300,
      bad database or credentials at connect,
      the client's protocol state broken by a lost
      connection (InternalClientError, InterfaceError
      "closed" / "another operation is in progress")     -> DatabaseUnavailable
    invalid input for a query argument (client side)     -> BadRequest
    any other PostgresError                              -> QueryError (+ sqlstate)
    anything else                                        -> InternalError (details logged only)

This is the only module of the origin's core that names asyncpg's exception classes.
Handlers never see a driver exception: code that talks to the database runs inside
:func:`translated` (or re-raises through :func:`raise_mapped` once it has looked at
the raw failure, as the executor's retry does), and the HTTP error boundary maps
whatever still escapes with the same :func:`map_database_error`. Decisions that need
the raw failure ask the predicates below (``is_connection_error``...).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, NoReturn, ParamSpec, TypeVar

import asyncpg
from asyncpg import exceptions as pg

from cache_edge.common.errors import (
    BadRequest,
    CacheEdgeError,
    DatabaseUnavailable,
    InternalError,
    NotCacheable,
    QueryError,
    QueryTimeout,
)

__all__ = [
    "is_connection_error",
    "is_read_only_violation",
    "is_stale_statement",
    "map_database_error",
    "mapped",
    "raise_mapped",
    "rejected_sqlstate",
    "translated",
]

_MAX_MESSAGE = 500  # a server message can quote a huge value; keep error bodies small

_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    pg.PostgresConnectionError,  # 08xxx, includes ConnectionDoesNotExistError
    pg.CannotConnectNowError,  # 57P03: the server is starting up or shutting down
    pg.AdminShutdownError,  # 57P01: terminated by a restart
    pg.CrashShutdownError,  # 57P02
    pg.TooManyConnectionsError,  # 53300
    pg.InvalidCatalogNameError,  # 3D000 at connect: the database does not exist
    pg.InvalidAuthorizationSpecificationError,  # 28xxx at connect: bad user or password
    # asyncpg's protocol state machine is out of step with the server. Seen when the server
    # ended the session (a restart, pg_terminate_backend) while the connection was idle or
    # mid-statement: its FATAL error was read, the socket's close not yet, and the next
    # call finds the protocol still consuming that error ("cannot switch to state 15;
    # another operation (2) is in progress"). The connection is unusable, whatever the cause.
    pg.InternalClientError,
    OSError,  # refused, reset, unreachable (ConnectionError is a subclass)
)

# Messages asyncpg uses when the socket went away under a live connection object, or
# when a call finds the connection still busy with an operation the lost socket ended.
_CLOSED_MARKERS = (
    "connection is closed",
    "connection was closed",
    "underlying connection",
    "released back to the pool",  # the pool detached a connection that died under us
    "another operation is in progress",
    "another operation is cancelling",
)


def is_connection_error(exc: BaseException) -> bool:
    """True when the connection (not the statement) failed: the pool should reconnect."""
    if isinstance(exc, _CONNECTION_ERRORS):
        return True
    if isinstance(exc, pg.InterfaceError):
        text = str(exc)
        return any(marker in text for marker in _CLOSED_MARKERS)
    return False


def is_stale_statement(exc: BaseException) -> bool:
    """True when a cached prepared statement outlived a schema change (safe to re-run)."""
    return isinstance(exc, (pg.InvalidCachedStatementError, pg.OutdatedSchemaCacheError))


def is_read_only_violation(exc: BaseException) -> bool:
    """True when a statement tried to write in a read-only transaction (25006)."""
    return isinstance(exc, pg.ReadOnlySQLTransactionError)


def rejected_sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE when PostgreSQL rejected the statement; None for any other failure."""
    if isinstance(exc, asyncpg.PostgresError):
        return str(exc.sqlstate)
    return None


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def _postgres_extra(exc: asyncpg.PostgresError) -> dict[str, Any]:
    extra: dict[str, Any] = {"sqlstate": exc.sqlstate}
    for attr in ("detail", "hint"):
        value = getattr(exc, attr, None)
        if value:
            extra[attr] = _clip(str(value))
    return extra


def _is_argument_error(exc: BaseException) -> bool:
    # asyncpg raises its DataError class client-side when it cannot encode an argument.
    return isinstance(exc, pg.DataError) and str(exc).startswith("invalid input for query argument")


def map_database_error(exc: BaseException, *, statement_index: int | None = None) -> CacheEdgeError:
    """Translate one failure; ``statement_index`` is added for errors inside a transaction."""
    mapped = _map(exc)
    if statement_index is not None:
        mapped.extra.setdefault("statementIndex", statement_index)
    return mapped


def raise_mapped(exc: BaseException, *, statement_index: int | None = None) -> NoReturn:
    """Raise ``exc`` as its cache-edge error (itself when it already is one)."""
    mapped = map_database_error(exc, statement_index=statement_index)
    if mapped is exc:
        raise exc
    raise mapped from exc


P = ParamSpec("P")
T = TypeVar("T")


def mapped(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Decorate a coroutine so that whatever fails inside leaves as a cache-edge error."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except Exception as exc:
            raise_mapped(exc)

    return wrapper


@contextlib.contextmanager
def translated() -> Iterator[None]:
    """``with translated(): ...``: whatever fails inside leaves as a cache-edge error."""
    try:
        yield
    except Exception as exc:
        raise_mapped(exc)


def _map(exc: BaseException) -> CacheEdgeError:
    if isinstance(exc, CacheEdgeError):
        return exc
    if isinstance(exc, pg.ReadOnlySQLTransactionError):
        return NotCacheable(
            "cached queries must be read-only: the statement tried to write "
            f"({_clip(str(exc))}); send it without a cache strategy",
            sqlstate=exc.sqlstate,
        )
    if isinstance(exc, pg.QueryCanceledError):
        return QueryTimeout(
            f"the statement was cancelled by the statement timeout: {_clip(str(exc))}",
            sqlstate=exc.sqlstate,
        )
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return QueryTimeout("the database did not answer in time")
    if is_connection_error(exc):
        # Never echo connect errors verbatim: some name the host, user or DSN.
        sqlstate = getattr(exc, "sqlstate", None)
        return DatabaseUnavailable(
            f"the database is unavailable ({type(exc).__name__}); retry shortly",
            sqlstate=sqlstate if isinstance(sqlstate, str) else None,
        )
    if _is_argument_error(exc):
        return BadRequest(_clip(str(exc)), field="params")
    if is_stale_statement(exc):
        return QueryError(
            "the table definition changed while the statement ran; retry", sqlstate="0A000"
        )
    if isinstance(exc, asyncpg.PostgresError):
        return QueryError(_clip(str(exc)), **_postgres_extra(exc))
    internal = InternalError("internal error in the origin; see its log for the request id")
    internal.__cause__ = exc
    return internal
