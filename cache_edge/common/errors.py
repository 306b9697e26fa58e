"""The one error tree of cache-edge: every failure a client can see has a stable code.

    CacheEdgeError                      code             HTTP
    ├── BadRequest                      bad_request       400
    │   └── NotCacheable                not_cacheable     400
    ├── Unauthorized                    unauthorized      401
    ├── NotFound                        not_found         404
    ├── CaptureUnavailable              capture_unavailable 409
    ├── StreamGap                       stream_gap        410
    ├── PayloadTooLarge                 payload_too_large 413
    ├── ResponseTooLarge                response_too_large 422
    ├── RateLimited                     rate_limited      429
    ├── SubscriberTooSlow               subscriber_too_slow 429 (closes a change stream)
    ├── QueryError                      query_error       400  (+ sqlstate)
    ├── InternalError                   internal          500
    ├── OriginUnavailable               origin_unavailable 502
    │   ├── OriginOverloaded            origin_overloaded 503  (+ Retry-After)
    │   └── OriginDown                  origin_down       503  (+ Retry-After)
    ├── DatabaseUnavailable             database_unavailable 503
    ├── PoolTimeout                     pool_timeout      503  (+ Retry-After)
    ├── QueryTimeout                    query_timeout     504
    └── RedisUnavailable                redis_unavailable 503  (only in info.cacheError)

Codes and statuses are part of the public API: never renumber, only add. A class that
sets its own ``code`` registers it (a second class with the same code is refused at
import); subclasses that keep their parent's code (``BodyTimeout``) share its entry.
The same classes are raised by the client SDK when a server answers with an error
body, so application code can ``except QueryError`` whichever side failed.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "BadRequest",
    "CacheEdgeError",
    "CaptureUnavailable",
    "DatabaseUnavailable",
    "InternalError",
    "NotCacheable",
    "NotFound",
    "OriginDown",
    "OriginOverloaded",
    "OriginUnavailable",
    "PayloadTooLarge",
    "PoolTimeout",
    "QueryError",
    "QueryTimeout",
    "RateLimited",
    "RedisUnavailable",
    "ResponseTooLarge",
    "RetryLater",
    "StreamGap",
    "SubscriberTooSlow",
    "Unauthorized",
    "error_classes",
    "error_from_body",
]

# code -> the class that declared it; filled by CacheEdgeError.__init_subclass__.
_BY_CODE: dict[str, type[CacheEdgeError]] = {}


class CacheEdgeError(Exception):
    """Base of every error with a stable code, an HTTP status and a readable message."""

    code: ClassVar[str] = "internal"
    status: ClassVar[int] = 500
    retry_after: float | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "code" not in cls.__dict__:
            return  # keeps its parent's code (and entry)
        known = _BY_CODE.get(cls.code)
        if known is not None and _name(known) != _name(cls):  # (the same class reloaded is)
            raise TypeError(f"error code {cls.code!r} of {_name(cls)} is already {_name(known)}'s")
        _BY_CODE[cls.code] = cls

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        # Extra fields travel in the error body (sqlstate, statementIndex, field...).
        self.extra: dict[str, Any] = {k: v for k, v in extra.items() if v is not None}

    def to_body(self, request_id: str | None = None) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        err.update(self.extra)
        if request_id is not None:
            err["requestId"] = request_id
        return {"error": err}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class RetryLater(CacheEdgeError):
    """A failure expected to pass: answered with ``Retry-After`` (no code of its own)."""

    def __init__(self, message: str, retry_after: float = 1.0, **extra: Any) -> None:
        super().__init__(message, **extra)
        self.retry_after = retry_after


class BadRequest(CacheEdgeError):
    """The request is malformed: bad body, unknown field, wrong type, invalid strategy."""

    code = "bad_request"
    status = 400


class NotCacheable(BadRequest):
    """A statement with a cache strategy tried to write."""

    code = "not_cacheable"


class Unauthorized(CacheEdgeError):
    """Missing, malformed or unknown credentials."""

    code = "unauthorized"
    status = 401


class NotFound(CacheEdgeError):
    """No such resource (route, invalidation id)."""

    code = "not_found"
    status = 404


class CaptureUnavailable(CacheEdgeError):
    """The tenant's database cannot capture committed writes (automatic invalidation or
    change streams not enabled or not set up, wal_level not logical, missing privileges)."""

    code = "capture_unavailable"
    status = 409


class StreamGap(CacheEdgeError):
    """A change-stream cursor is older than the retained history: events would be missing."""

    code = "stream_gap"
    status = 410


class PayloadTooLarge(CacheEdgeError):
    """The request body exceeds the configured limit."""

    code = "payload_too_large"
    status = 413


class ResponseTooLarge(CacheEdgeError):
    """The encoded result exceeds the configured limit."""

    code = "response_too_large"
    status = 422


class RateLimited(RetryLater):
    """The API key exceeded its rate limit."""

    code = "rate_limited"
    status = 429


class SubscriberTooSlow(CacheEdgeError):
    """A change-stream subscriber fell so far behind that its buffer filled; it is cut off
    (reconnecting with its last cursor resumes without loss)."""

    code = "subscriber_too_slow"
    status = 429


class QueryError(CacheEdgeError):
    """PostgreSQL rejected the statement; carries the SQLSTATE."""

    code = "query_error"
    status = 400


class InternalError(CacheEdgeError):
    """A bug or an invariant broke; the message never carries internals."""

    code = "internal"
    status = 500


class OriginUnavailable(CacheEdgeError):
    """The node could not reach the origin, or the origin answered garbage."""

    code = "origin_unavailable"
    status = 502


class OriginOverloaded(OriginUnavailable, RetryLater):
    """Too many of this node's requests are already waiting for the origin: shed at once."""

    code = "origin_overloaded"
    status = 503


class OriginDown(OriginUnavailable, RetryLater):
    """The origin kept failing to answer; the node does not try it again until a probe
    gets through (Retry-After says when)."""

    code = "origin_down"
    status = 503


class DatabaseUnavailable(RetryLater):
    """The origin could not reach PostgreSQL."""

    code = "database_unavailable"
    status = 503


class PoolTimeout(RetryLater):
    """Timed out waiting to acquire a database connection from the pool."""

    code = "pool_timeout"
    status = 503


class QueryTimeout(CacheEdgeError):
    """The statement ran longer than the statement timeout."""

    code = "query_timeout"
    status = 504


class RedisUnavailable(CacheEdgeError):
    """The region's Redis failed, is too slow or its circuit breaker is open. The node
    never answers with it: it serves from the origin and reports it in ``info.cacheError``."""

    code = "redis_unavailable"
    status = 503


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def error_classes() -> dict[str, type[CacheEdgeError]]:
    """Every registered code and the class that declared it."""
    return dict(_BY_CODE)


def error_from_body(body: Any, status: int) -> CacheEdgeError:
    """Rebuild the typed error from an error body received over HTTP."""
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return OriginUnavailable(f"unexpected HTTP {status} without an error body")
    code = str(err.get("code", "internal"))
    message = str(err.get("message", ""))
    extra = {k: v for k, v in err.items() if k not in ("code", "message")}
    cls = _BY_CODE.get(code, InternalError)
    exc = cls(message, **extra)
    if code not in _BY_CODE:
        exc.extra["originalCode"] = code
    return exc
