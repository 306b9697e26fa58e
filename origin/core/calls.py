"""Queries and transactions that nodes send over their link (CALL frames), answered like HTTP.

The link was proven once when it opened (origin/wire/endpoint.py), so a call carries no
signature of its own; everything else is what ``POST /v1/query`` and ``/v1/transaction``
do: the same handlers, the same answer bytes, the same error bodies and codes (a database
driver's failure through :func:`~origin.core.db_errors.map_database_error`, a bug as
``internal`` with its traceback only in the log), the same metrics and request log line.

    raised by the handler        answered as
    CacheEdgeError               its status and error body
    anything else                map_database_error(exc): its status and error body
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from cache_edge.common.errors import BadRequest, CacheEdgeError, InternalError, Unauthorized
from cache_edge.common.request_ids import request_id
from cache_edge.common.wire import WireFormat, packb, unpackb
from cache_edge.server.config import Settings
from cache_edge.server.logs import get_logger
from origin.core.db_errors import map_database_error
from origin.core.metrics import OriginMetrics

__all__ = ["CallHandler", "Calls"]

log = get_logger("origin.core.calls")

# (tenant, payload, format) -> answer body
CallHandler = Callable[[str, Any, WireFormat], Awaitable[bytes]]


class Calls:
    """Runs one CALL: ``answer(path, tenant, body, request id) -> (status, body, request id)``."""

    def __init__(
        self,
        settings: Callable[[], Settings],
        handlers: dict[str, tuple[str, CallHandler]],  # path -> (metrics kind, handler)
        metrics: OriginMetrics,
    ) -> None:
        self._settings = settings
        self._handlers = handlers
        self._metrics = metrics
        self._observed: dict[tuple[str, str], Callable[[float], None]] = {}
        self._ok: dict[tuple[str, str], Callable[[], None]] = {}

    async def answer(
        self, path: str, tenant: str, payload: Any, incoming_id: Any
    ) -> tuple[int, bytes, str]:
        rid = request_id(incoming_id if isinstance(incoming_id, str) else None)
        started = time.monotonic()
        found = self._handlers.get(path)
        kind = found[0] if found else None
        code = "ok"
        try:
            if found is None:
                raise BadRequest(f"no such call over the link: {path!r}")
            if self._settings().tenant(tenant) is None:
                raise Unauthorized("unknown tenant")
            if isinstance(payload, bytes):  # the node's body, in the HTTP door's msgpack
                payload = unpackb(payload)
            body = await found[1](tenant, payload, "msgpack")
            status = 200
        except Exception as exc:
            failure = exc if isinstance(exc, CacheEdgeError) else map_database_error(exc)
            if isinstance(failure, InternalError):
                cause = exc if failure is not exc else exc.__cause__
                if cause is not None:
                    log.error("internal_error", path=path, request_id=rid, exc_info=cause)
            code = failure.code
            status = failure.status
            body = packb(failure.to_body(rid))
            self._metrics.errors.labels(code).inc()
        took = time.monotonic() - started
        if kind is not None:
            self._observe(tenant, kind, code, took)
        log.info(
            "request",
            method="CALL",
            path=path,
            status=status,
            code=code,
            ms=round(took * 1000, 2),
            tenant=tenant,
            request_id=rid,
        )
        return status, body, rid

    def _observe(self, tenant: str, kind: str, code: str, took: float) -> None:
        if code != "ok":
            self._metrics.observe(tenant, kind, code, took)
            return
        # The labelled children of the common case, looked up once per tenant and kind.
        key = (tenant, kind)
        inc = self._ok.get(key)
        observe = self._observed.get(key)
        if inc is None or observe is None:
            inc = self._metrics.queries.labels(tenant, kind, "ok").inc
            observe = self._metrics.latency.labels(tenant, kind).observe
            self._ok[key] = inc
            self._observed[key] = observe
        inc()
        observe(took)
