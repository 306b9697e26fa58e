"""One HTTP error boundary for the node and the origin: every failure leaves as the same
error body, and every error answer is counted by its code.

    raised while handling a request      answered as
    CacheEdgeError                       itself (BodyTimeout: then the connection closes)
    aiohttp's 404 (no such route)        not_found          404
    aiohttp's 405 (wrong method)         bad_request        405, with Allow
    aiohttp's 413 (client_max_size)      payload_too_large  413
    any other aiohttp 4xx                bad_request        its status
    anything else                        ``translate(exc)`` when the app has one (the
                                         origin maps database driver errors), else
                                         internal 500; logged with its traceback

The body is ``{"error": {"code", "message", "requestId", ...}}`` in the format the
client reads (Accept, else its Content-Type, else JSON), with ``X-Request-Id`` and, when
the error says when to come back, ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from cache_edge.common.errors import (
    BadRequest,
    CacheEdgeError,
    InternalError,
    NotFound,
    PayloadTooLarge,
)
from cache_edge.common.request_ids import REQUEST_ID_HEADER, request_id
from cache_edge.common.wire import (
    CONTENT_TYPES,
    WireFormat,
    encode_body,
    request_format,
    response_format,
)
from cache_edge.server.bodies import BodyTimeout, answer_and_close
from cache_edge.server.logs import get_logger

__all__ = ["REQUEST_ID", "ErrorBoundary", "error_response", "reply_format"]

log = get_logger(__name__)

REQUEST_ID = web.RequestKey("request_id", str)  # set first thing for every request

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# What the app knows about failures the boundary does not (origin: driver errors).
Translate = Callable[[Exception], CacheEdgeError]
# Called once per request with its response, its code ("ok" or the error's) and seconds.
Observe = Callable[[web.Request, web.StreamResponse, str, float], None]


def reply_format(request: web.Request) -> WireFormat:
    """The format a client reads: what Accept names, else what it sent, else JSON."""
    try:
        fallback = request_format(request.headers.get("Content-Type"))
    except BadRequest:
        fallback = "json"
    return response_format(request.headers.get("Accept"), fallback)


def error_response(
    exc: CacheEdgeError, request: web.Request, status: int | None = None
) -> web.Response:
    fmt = reply_format(request)
    body = encode_body(exc.to_body(request.get(REQUEST_ID)), fmt)
    response = web.Response(
        status=status or exc.status, body=body, headers={"Content-Type": CONTENT_TYPES[fmt]}
    )
    if exc.retry_after is not None:
        # Rounded up: a client that waits as told finds a token (or a connection) free.
        response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    return response


# aiohttp keeps a keep-alive connection's last response referenced until its next
# request: an idle connection would hold its last answer. Small ones are cheaper to keep
# than to drop on every hit; larger ones are dropped once sent (docs/decisions.md).
_RETAIN_MAX = 16 * 1024


def _drop_body_when_sent(response: web.Response) -> None:
    task = asyncio.current_task()
    if task is not None:  # aiohttp's task for this request ends once it is written
        task.add_done_callback(lambda _t: setattr(response, "body", None))


class ErrorBoundary:
    """The middleware every request of an app passes through (innermost of the app's own)."""

    def __init__(
        self,
        service: str,
        *,
        count: Callable[[str], None],
        max_body_bytes: int,
        translate: Translate | None = None,
        observe: Observe | None = None,
    ) -> None:
        self._service = service
        self._count = count
        self._max_body_bytes = max_body_bytes
        self._translate = translate
        self._observe = observe

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        request[REQUEST_ID] = rid = request_id(request.headers.get(REQUEST_ID_HEADER))
        started = time.monotonic()
        code = "ok"
        stalled = False
        try:
            response = await handler(request)
        except CacheEdgeError as exc:
            code = exc.code
            stalled = isinstance(exc, BodyTimeout)
            if isinstance(exc, InternalError) and exc.__cause__ is not None:
                self._log_internal(request, exc.__cause__)  # a failure mapped to internal
            response = error_response(exc, request)
        except web.HTTPException as exc:
            if not 400 <= exc.status < 500:
                raise  # a redirect, or a 5xx raised on purpose: aiohttp answers it
            mapped = self._from_http(exc, request)
            code = mapped.code
            response = error_response(mapped, request, exc.status)
            if "Allow" in exc.headers:
                response.headers["Allow"] = exc.headers["Allow"]
        except Exception as exc:
            failure = self._unexpected(exc)
            if isinstance(failure, InternalError):
                self._log_internal(request, exc)  # a bug: its traceback, only in the log
            code = failure.code
            response = error_response(failure, request)
        if not response.prepared:
            response.headers[REQUEST_ID_HEADER] = rid
        if code != "ok":
            self._count(code)
        if stalled:
            await answer_and_close(request, response)  # it stalled: no lingering for it
        if self._observe is not None:
            self._observe(request, response, code, time.monotonic() - started)
        if type(response) is web.Response:
            body = response.body
            if isinstance(body, (bytes, bytearray)) and len(body) > _RETAIN_MAX:
                _drop_body_when_sent(response)
        return response

    def _unexpected(self, exc: Exception) -> CacheEdgeError:
        if self._translate is not None:
            return self._translate(exc)
        return InternalError(f"internal error; see the {self._service}'s log")

    def _from_http(self, exc: web.HTTPException, request: web.Request) -> CacheEdgeError:
        if exc.status == 404:
            return NotFound(f"no such endpoint: {request.path}")
        if exc.status == 413:
            return PayloadTooLarge(
                f"request body exceeds the limit of {self._max_body_bytes} bytes"
            )
        if isinstance(exc, web.HTTPMethodNotAllowed):
            allowed = ", ".join(sorted(exc.allowed_methods))
            return BadRequest(f"method {request.method} not allowed; use {allowed}")
        return BadRequest(exc.reason or "bad request")

    def _log_internal(self, request: web.Request, exc: BaseException) -> None:
        log.error(
            "internal_error", path=request.path, request_id=request.get(REQUEST_ID), exc_info=exc
        )
