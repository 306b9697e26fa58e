"""HTTP plumbing of the origin: request ids, signed and size-capped bodies, error responses, logs.

Every response leaves through :func:`middleware`, which turns any failure into
a clean error body (an unexpected one into ``internal`` with details only in the
log), attaches ``X-Request-Id`` and writes one structured log line.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from cache_edge.common.errors import (
    BadRequest,
    CacheEdgeError,
    InternalError,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
)
from cache_edge.common.request_ids import REQUEST_ID_HEADER, request_id
from cache_edge.common.signing import SIGNATURE_HEADER, SignatureError, signed_until, verify_headers
from cache_edge.common.wire import (
    CONTENT_TYPES,
    WireFormat,
    decode_body,
    encode_body,
    request_format,
    response_format,
)
from cache_edge.server.bodies import BodyTimeout, answer_and_close, read_capped
from cache_edge.server.config import Settings
from cache_edge.server.logs import get_logger
from cache_edge.server.reload import LiveSettings
from origin.core.db_errors import map_database_error
from origin.core.metrics import OriginMetrics
from origin.core.replay import ReplayCache

__all__ = [
    "LIVE",
    "METRICS",
    "REPLAY",
    "REQUEST_ID",
    "SETTINGS",
    "TENANT",
    "SignedRequest",
    "binary_response",
    "middleware",
    "read_signed",
]

log = get_logger("origin.core.http")

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", OriginMetrics)
LIVE = web.AppKey("live", LiveSettings)  # node secrets and tenants' caps, reloadable
REPLAY = web.AppKey("replay", ReplayCache)
REQUEST_ID = web.RequestKey("request_id", str)
TENANT = web.RequestKey("tenant", str)  # set only once a signature proved it

_KINDS = {"/v1/query": "query", "/v1/transaction": "transaction"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class SignedRequest:
    tenant: str
    payload: Any
    fmt: WireFormat  # the response format the caller asked for


def _reply_format(request: web.Request) -> WireFormat:
    try:
        fallback = request_format(request.headers.get("Content-Type"))
    except BadRequest:
        fallback = "json"
    return response_format(request.headers.get("Accept"), fallback)


def binary_response(body: bytes, fmt: WireFormat, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, headers={"Content-Type": CONTENT_TYPES[fmt]})


def _error_response(
    exc: CacheEdgeError, request: web.Request, status: int | None = None
) -> web.Response:
    fmt = _reply_format(request)
    resp = binary_response(
        encode_body(exc.to_body(request.get(REQUEST_ID)), fmt), fmt, status or exc.status
    )
    if exc.retry_after is not None:
        resp.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    return resp


async def read_signed(request: web.Request) -> SignedRequest:
    """Read the capped body, prove the node signature (once only) and the tenant, decode it."""
    settings = request.app[LIVE].current
    body = await read_capped(request, settings.limits.max_body_bytes, settings.origin.body_timeout)
    window = settings.origin.signature_window
    try:
        tenant = verify_headers(
            settings.node_secrets, request.method, request.path, request.headers, body, window
        )
    except SignatureError as exc:
        raise Unauthorized(str(exc)) from None
    # Only now, once proven: an unsigned request cannot fill the replay cache.
    valid_until = signed_until(request.headers, window)
    if not request.app[REPLAY].first_use(request.headers[SIGNATURE_HEADER], valid_until):
        raise Unauthorized("node signature already used: replayed request")
    if settings.tenant(tenant) is None:
        raise Unauthorized("unknown tenant")
    request[TENANT] = tenant
    payload = decode_body(body, request_format(request.headers.get("Content-Type")))
    return SignedRequest(tenant, payload, _reply_format(request))


def _from_http_exception(exc: web.HTTPException) -> CacheEdgeError:
    if exc.status == 404:
        return NotFound("no such route")
    if exc.status == 413:
        return PayloadTooLarge("request body too large")
    return BadRequest(exc.reason or "bad request")


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request[REQUEST_ID] = rid = request_id(request.headers.get(REQUEST_ID_HEADER))
    started = time.monotonic()
    code = "ok"
    stalled = False
    response: web.StreamResponse
    try:
        response = await handler(request)
    except CacheEdgeError as exc:
        code = exc.code
        stalled = isinstance(exc, BodyTimeout)
        if isinstance(exc, InternalError):
            log.error("internal_error", request_id=rid, exc_info=exc.__cause__ or exc)
        response = _error_response(exc, request)
    except web.HTTPException as exc:
        mapped = _from_http_exception(exc)
        code = mapped.code
        response = _error_response(mapped, request, exc.status)
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
    except Exception as exc:
        # A driver failure that a handler did not map (the database went away mid-request)
        # still gets its code from the one mapping; only the rest is internal.
        mapped = map_database_error(exc)
        code = mapped.code
        if isinstance(mapped, InternalError):
            log.error("internal_error", request_id=rid, exc_info=exc)
        response = _error_response(mapped, request)
    response.headers[REQUEST_ID_HEADER] = rid
    if stalled:
        await answer_and_close(request, response)  # the client stalled: no lingering for it
    elapsed = time.monotonic() - started
    tenant = request.get(TENANT)
    metrics = request.app[METRICS]
    if code != "ok":
        metrics.errors.labels(code).inc()
    kind = _KINDS.get(request.path)
    if kind is not None and tenant is not None:
        metrics.observe(tenant, kind, code, elapsed)
    log.info(
        "request",
        method=request.method,
        path=request.path,
        status=response.status,
        code=code,
        ms=round(elapsed * 1000, 2),
        tenant=tenant,
        request_id=rid,
    )
    return response
