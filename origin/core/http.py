"""HTTP plumbing of the origin: signed and size-capped bodies, and the request log.

Every response leaves through the shared error boundary (cache_edge/server/http_errors.py,
built by :func:`error_boundary`), which turns any failure into a clean error body (a
database driver's failure through :func:`~origin.core.db_errors.map_database_error`, an
unexpected one into ``internal`` with details only in the log), counts it, attaches
``X-Request-Id`` and here writes one structured log line per request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from cache_edge.common.errors import Unauthorized
from cache_edge.common.signing import SIGNATURE_HEADER, SignatureError, signed_until, verify_headers
from cache_edge.common.wire import CONTENT_TYPES, WireFormat, decode_body, request_format
from cache_edge.server.bodies import read_capped
from cache_edge.server.config import Settings
from cache_edge.server.http_errors import REQUEST_ID, ErrorBoundary, reply_format
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
    "error_boundary",
    "read_signed",
]

log = get_logger("origin.core.http")

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", OriginMetrics)
LIVE = web.AppKey("live", LiveSettings)  # node secrets and tenants' caps, reloadable
REPLAY = web.AppKey("replay", ReplayCache)
TENANT = web.RequestKey("tenant", str)  # set only once a signature proved it

_KINDS = {"/v1/query": "query", "/v1/transaction": "transaction"}


@dataclass(frozen=True, slots=True)
class SignedRequest:
    tenant: str
    payload: Any
    fmt: WireFormat  # the response format the caller asked for


def binary_response(body: bytes, fmt: WireFormat, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, headers={"Content-Type": CONTENT_TYPES[fmt]})


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
    return SignedRequest(tenant, payload, reply_format(request))


def error_boundary(settings: Settings, metrics: OriginMetrics) -> ErrorBoundary:
    """The shared boundary, counting into the origin's metrics and logging each request."""

    def observe(request: web.Request, response: web.StreamResponse, code: str, took: float) -> None:
        tenant = request.get(TENANT)
        kind = _KINDS.get(request.path)
        if kind is not None and tenant is not None:
            metrics.observe(tenant, kind, code, took)
        log.info(
            "request",
            method=request.method,
            path=request.path,
            status=response.status,
            code=code,
            ms=round(took * 1000, 2),
            tenant=tenant,
            request_id=request.get(REQUEST_ID),
        )

    return ErrorBoundary(
        "origin",
        count=lambda code: metrics.errors.labels(code).inc(),
        # client_max_size (one byte over) backs up read_signed's own streaming cap
        max_body_bytes=settings.limits.max_body_bytes,
        translate=map_database_error,
        observe=observe,
    )
