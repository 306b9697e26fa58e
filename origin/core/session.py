"""A pooled connection as the executor drives it: one round trip per call, and its session.

The executor reads in sessions whose transactions are read-only by default; PostgreSQL
(>= 14) reports ``default_transaction_read_only`` whenever it changes, so whether a
session still is read-only is known without asking. A request that can only have read
is vouched for, and the pool then skips its reset round trip on release
(origin/core/pool.py). The asyncpg calls here reach below its public API where that API has
no one-round-trip equivalent; each says why.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import asyncpg

__all__ = [
    "bind_execute",
    "cached_prepare",
    "execute_more",
    "keep_session_if_untouched",
    "looks_like_read",
    "reported_read_only",
    "statement_shape",
]

_READ_WORDS = frozenset({"select", "values", "table", "with"})
# Functions a SELECT can change the session with (settings, locks, named dblink connections).
_SESSION_CALLS = re.compile(r"set_config|advisory|dblink", re.IGNORECASE)


def reported_read_only(conn: asyncpg.Connection) -> bool | None:
    """``default_transaction_read_only`` as the server last reported it (None: not reported)."""
    value = getattr(conn.get_settings(), "default_transaction_read_only", None)
    return None if value is None else value == "on"


@functools.lru_cache(maxsize=4096)
def looks_like_read(sql: str) -> bool:
    """Whether the statement starts like a query (a guess: a write still fails read-only).

    Skips blanks, comments and opening parentheses by hand: a regular expression for
    that backtracks exponentially on input like ``------...``. Remembered per text: the
    same few statements come again and again.
    """
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c.isspace() or c == "(":
            i += 1
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            i = n if end < 0 else end + 2
        else:
            break
    j = i
    while j < n and sql[j].isalpha():
        j += 1
    return sql[i:j].lower() in _READ_WORDS


def keep_session_if_untouched(conn: asyncpg.Connection, sql: str, tag: str) -> None:
    """Vouch that the request only read, so the pool may skip the reset on release.

    A query (tag ``SELECT n``) in a read-only session can still change the session
    through a few functions; any mention of those, or the read-only default switched
    off, and the pool resets as usual. Not seen: a user-defined function that sets a
    session variable inside a plain SELECT; that setting then lasts on the connection
    until a request that is not vouched for is released there (its reset clears it).
    """
    if not tag.startswith("SELECT") or _may_touch_session(sql):
        return
    if reported_read_only(conn) is not True:
        return
    keep = getattr(conn, "keep_session", None)
    if keep is not None:
        keep()


@functools.lru_cache(maxsize=4096)
def _may_touch_session(sql: str) -> bool:
    return _SESSION_CALLS.search(sql) is not None


async def bind_execute(
    conn: asyncpg.Connection, prepared: Any, args: list[Any], limit: int, timeout: float
) -> tuple[list[Any], str, bool]:
    """Bind the arguments to the unnamed portal and run it for up to ``limit`` rows (0: all),
    in one round trip: (rows, command tag, whether it ran to completion).

    asyncpg's public API has no call that returns whether a row-limited execution completed
    (``fetchrow`` uses a limit and discards that), and its cursors cost a separate Bind
    round trip and need a transaction block; so we use the protocol call those are built on.
    """
    rows, tag, done = await conn._protocol.bind_execute(
        prepared._state, args, "", limit, True, timeout
    )
    return rows, tag.decode() if tag else "", bool(done)


async def execute_more(
    conn: asyncpg.Connection, prepared: Any, limit: int, timeout: float
) -> tuple[list[Any], str, bool]:
    """The next rows of the unnamed portal (only inside a transaction block)."""
    rows, tag, done = await conn._protocol.execute(prepared._state, "", limit, True, timeout)
    return rows, tag.decode() if tag else "", bool(done)


_SHAPES: dict[int, tuple[Any, tuple[Any, ...], tuple[Any, ...]]] = {}
_MAX_SHAPES = 4096


def statement_shape(prepared: Any) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """A prepared statement's parameter types and result attributes, built once per
    statement of asyncpg's cache (its public getters build new tuples on every call).

    Keyed by the identity of asyncpg's statement state, which the entry keeps alive, so a
    key cannot be reused by another statement while it is remembered; a state asyncpg has
    closed is never handed out again, and its entry is only dropped with the others."""
    state = prepared._state
    found = _SHAPES.get(id(state))
    if found is not None and found[0] is state:
        return found[1], found[2]
    parameters, attributes = tuple(prepared.get_parameters()), tuple(prepared.get_attributes())
    if len(_SHAPES) >= _MAX_SHAPES:
        _SHAPES.clear()
    _SHAPES[id(state)] = (state, parameters, attributes)
    return parameters, attributes


async def cached_prepare(conn: asyncpg.Connection, sql: str, timeout: float) -> Any:
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
