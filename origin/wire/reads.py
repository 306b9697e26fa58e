"""Cacheable reads for the PostgreSQL door: one statement, read-only, its bytes returned.

A node asks for one (``QUERY`` frame) when a client's statement may be cached: on a miss,
on a refresh. It runs on a pooled connection of the tenant in its own READ ONLY
transaction, with the client session's settings, in one round trip to the database::

    Query BEGIN READ ONLY, Parse, Bind, Describe portal, Execute, Sync, Query ROLLBACK

and the answer is the origin's usual answer (:mod:`cache_edge.common.answer`) whose core
is PostgreSQL's own RowDescription, DataRows and CommandComplete (and any notices), byte
for byte, for the node to store and replay. The watermark is read before the statement
runs, as for ``/v1/query``, and the tables it reads come from its plan (read once per
statement text), so purges and automatic invalidation cover door entries too.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from cache_edge.common.answer import PG_CORE, OriginAnswer
from cache_edge.common.errors import CacheEdgeError
from cache_edge.common.wire import packb
from cache_edge.pgwire.messages import (
    ProtocolViolation,
    cstring,
    error_response,
    message,
    sqlstate_of,
)
from cache_edge.pgwire.statements import touches_settings
from origin.core.dependencies import Dependencies
from origin.wire.pool import WirePools
from origin.wire.server import ServerError
from origin.wire.session import apply_sql, settings_key, sqlstate_for

__all__ = ["ReadRequest", "WireReads"]

_BEGIN = message(b"Q", cstring("BEGIN READ ONLY"))
_END = message(b"D", b"P\x00") + message(b"E", b"\x00\x00\x00\x00\x00") + message(b"S")
# ROLLBACK, not COMMIT: the transaction only read, and a setting its statement changed
# (set_config(..., false) in a function) goes with it instead of staying on the pooled
# connection for the tenant's other sessions.
_ROLLBACK = message(b"Q", cstring("ROLLBACK"))
_RESULT_KINDS = frozenset(b"TDCN")  # what a cacheable result is made of


@dataclass(frozen=True, slots=True)
class ReadRequest:
    tenant: str
    sql: str  # the statement text without hints: what is planned for its tables
    parse: bytes  # the Parse body after the statement name: query, parameter types
    bind: bytes  # the Bind body after portal and statement names: formats and values
    settings: dict[str, str]
    min_watermark: int = 0

    @classmethod
    def from_wire(cls, payload: Any) -> ReadRequest:
        if not isinstance(payload, dict):
            raise ValueError("QUERY payload must be a map")
        settings = payload.get("settings") or {}
        return cls(
            str(payload["tenant"]),
            str(payload["sql"]),
            bytes(payload["parse"]),
            bytes(payload["bind"]),
            {str(k): str(v) for k, v in settings.items()},
            int(payload.get("minWatermark") or 0),
        )


class WireReads:
    def __init__(
        self,
        pools: WirePools,
        tenant_config: Callable[[str], Any],
        watermark: Callable[[str, int], Awaitable[int]],
        dependencies: Callable[[str, str, int], Awaitable[Dependencies]],
        tags: Callable[[str, Dependencies], tuple[tuple[str, ...], tuple[str, ...]]],
    ) -> None:
        self._pools = pools
        self._tenant = tenant_config
        self._watermark = watermark
        self._dependencies = dependencies
        self._tags = tags

    async def classify(self, req: ReadRequest) -> dict[str, Any]:
        """What a statement reads, for the node's cache rules: ``{"tables", "volatile"}``
        (volatile: its result depends on more than table contents; never cached by a rule)."""
        try:
            deps = await self._dependencies(req.tenant, req.sql, _nparams(req.bind))
        except CacheEdgeError as exc:
            return {"error": error_response(sqlstate_for(exc), str(exc))}
        return {"tables": list(deps.tables), "volatile": bool(deps.warnings) or not deps.known}

    async def run(self, req: ReadRequest) -> dict[str, Any]:
        """``{"answer": bytes}``, ``{"error": ErrorResponse}`` (with ``"readOnly": True``
        when the statement tried to write) or ``{"uncacheable": reason}``."""
        tenant = self._tenant(req.tenant)
        if tenant is None:
            return {"error": error_response("28000", "unknown tenant")}
        if touches_settings(req.parse):
            # it changes the client session's settings: run it there, in the session
            return {"uncacheable": "it calls set_config()"}
        pool = self._pools.get(tenant)
        try:
            conn = await pool.acquire()
        except CacheEdgeError as exc:
            return {"error": error_response(sqlstate_for(exc), str(exc))}
        reusable = False
        try:
            settings = pool.clamped(req.settings)
            key = settings_key(settings)
            if conn.state_key != key:
                await conn.run(apply_sql(settings))
                conn.state_key = key
            mark = await self._watermark(req.tenant, req.min_watermark)
            produced = int(time.time() * 1000)
            conn.unnamed_owner = None  # the unnamed statement below replaces any other
            conn.write(
                _BEGIN
                + message(b"P", b"\x00" + req.parse)
                + message(b"B", b"\x00\x00" + req.bind)
                + _END
                + _ROLLBACK
            )
            core, error, odd = await _collect(conn)
            reusable = True
        except ServerError as exc:
            return {"error": error_response(exc.sqlstate, str(exc))}
        except (ConnectionError, OSError, ProtocolViolation):
            return {"error": error_response("08006", "the origin lost its database connection")}
        finally:
            pool.release(conn, reusable and not conn.closed)
        if error is not None:
            state = sqlstate_of(error)
            return {"error": error, "readOnly": state == "25006"}
        if odd:
            return {"uncacheable": odd}
        deps = await self._dependencies(req.tenant, req.sql, _nparams(req.bind))
        tags, warnings = self._tags(req.tenant, deps)
        answer = OriginAnswer(
            produced, watermark=mark, tables=deps.tables, warnings=warnings, tags=tags
        )
        return {"answer": answer.pack(PG_CORE, [packb("pg"), packb(core)])}


async def _collect(conn: Any) -> tuple[bytes, bytes | None, str]:
    """Read the three ReadyForQuery of the flight: (result bytes, first error, why the
    result cannot be cached or "")."""
    core: list[bytes] = []
    error: bytes | None = None
    odd = ""
    ready = 0
    step = 0  # 0: BEGIN, 1: the statement, 2: ROLLBACK
    while ready < 3:
        msg = await conn.read_message()
        kind = msg[:1]
        if kind == b"Z":
            ready += 1
            step += 1
            continue
        if kind == b"E":
            error = error or msg
            continue
        if step != 1 or kind in (b"1", b"2"):
            continue
        if kind == b"S":
            odd = odd or "it changes a reported setting"
        elif kind == b"n":
            odd = odd or "it returns no rows"
        elif kind == b"I":
            odd = odd or "it is empty"
        elif kind[0] not in _RESULT_KINDS:
            odd = odd or f"its result has a {kind.decode(errors='replace')} message"
        else:
            core.append(msg)
    return b"".join(core), error, odd


def _nparams(bind: bytes) -> int:
    """How many values a Bind body (after its names) carries: formats first, then values."""
    formats = int.from_bytes(bind[0:2], "big")
    at = 2 + 2 * formats
    return int.from_bytes(bind[at : at + 2], "big")
