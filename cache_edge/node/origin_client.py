"""A regional node's calls to the origin: queries and transactions over the node's link,
everything else as signed keep-alive HTTP.

Queries and transactions (the calls every miss waits on) travel over the process's one
WebSocket link to the origin (:mod:`cache_edge.node.pgdoor.link`, shared with the
PostgreSQL door), which was signed once when it opened: no signature, nonce, headers or
HTTP parsing per request. Purges, their status and the long-polls stay signed HTTP
requests. Every network failure is translated here, in one place, into
OriginUnavailable (a link that could not open or closed under a call included); an error
body from the origin becomes the same typed error the origin raised, whichever way it
came. The origin's capacity is shared fairly among tenants
(:mod:`cache_edge.common.fairshare`: at most ``max_connections`` calls in flight): one
tenant's flood of slow queries cannot queue another tenant's requests behind it. The
calls clients wait on are bounded, and fail fast while the origin is down
(:mod:`cache_edge.node.origin_guard`). With an https origin URL the origin's certificate
is verified.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any

import aiohttp

from cache_edge.common.answer import QUERY_CORE, CoreKeys
from cache_edge.common.deadlines import Deadlines
from cache_edge.common.errors import (
    CacheEdgeError,
    OriginUnavailable,
    Unauthorized,
    error_from_body,
)
from cache_edge.common.fairshare import FairShare
from cache_edge.common.protocol import Statement
from cache_edge.common.signing import sign_headers
from cache_edge.common.wire import MSGPACK_TYPE, packb, unpackb
from cache_edge.node.origin_guard import OriginGuard
from cache_edge.node.pgdoor.link import LinkDown, LinkRefused, OriginLink
from cache_edge.server.logs import get_logger

__all__ = ["OriginClient", "OriginResult"]

log = get_logger(__name__)


class OriginResult:
    """A raw msgpack answer from the origin and its request id."""

    __slots__ = ("body", "core_keys", "request_id")

    def __init__(self, body: bytes, request_id: str, core_keys: CoreKeys = QUERY_CORE) -> None:
        self.body = body
        self.request_id = request_id
        self.core_keys = core_keys  # what the answer's core is (PG_CORE: the PostgreSQL door)


class OriginClient:
    def __init__(
        self,
        base_url: str,
        secret: str,
        *,
        timeout: float,
        connect_timeout: float,
        max_connections: int,
        ssl_context: ssl.SSLContext | bool = True,
        guard: OriginGuard,
        link: OriginLink | None = None,
    ) -> None:
        self._base = base_url.rstrip("/")
        self.guard = guard
        self._secret = secret
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=connect_timeout)
        self._ssl = ssl_context
        self._share = FairShare(max_connections)
        self._deadlines = Deadlines(timeout)
        self._session: aiohttp.ClientSession | None = None
        # The process's link to the origin (the PostgreSQL door uses it too).
        self.link = link or OriginLink(base_url, lambda: self._secret, connect_timeout, ssl_context)

    def set_secret(self, secret: str) -> None:
        """Sign from now on with ``secret`` (a config reload rotated it)."""
        self._secret = secret

    def _client(self) -> aiohttp.ClientSession:
        # Created lazily so it binds to the running loop.
        if self._session is None or self._session.closed:
            # No limit here: the fair share bounds requests to max_connections, and the
            # purge long-polls outside it are one per tenant. A connector limit would
            # queue everyone FIFO again, behind whichever tenant floods.
            connector = aiohttp.TCPConnector(
                limit=0, keepalive_timeout=60, ttl_dns_cache=60, ssl=self._ssl
            )
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, raise_for_status=False
            )
        return self._session

    async def close(self) -> None:
        self._deadlines.close()
        if self._session is not None:
            await self._session.close()
        await self.link.close()

    async def query(
        self,
        tenant: str,
        stmt: Statement,
        *,
        read_only: bool,
        request_id: str,
        min_watermark: int = 0,
    ) -> OriginResult:
        body: dict[str, Any] = {"sql": stmt.sql, "params": stmt.params, "readOnly": read_only}
        if min_watermark:
            body["minWatermark"] = min_watermark
        with self.guard.admit():
            return await self._call("/v1/query", tenant, body, request_id)

    async def invalidate(
        self,
        tenant: str,
        tags: list[str],
        purge_all: bool,
        wait: float,
        request_id: str,
        tables: list[str] | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"tags": tags, "all": purge_all, "wait": wait}
        if tables:
            body["tables"] = tables
        result = await self._post("/v1/invalidations", tenant, body, request_id)
        return dict(unpackb(result.body))

    async def invalidation_status(
        self, tenant: str, invalidation_id: str, request_id: str
    ) -> dict[str, Any]:
        body = {"id": invalidation_id}
        result = await self._post("/v1/invalidations/status", tenant, body, request_id)
        return dict(unpackb(result.body))

    async def poll_invalidations(
        self,
        tenant: str,
        region: str,
        after: int,
        wait: float,
        lease: float,
        *,
        epoch: str | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"region": region, "after": after, "wait": wait, "lease": lease}
        if epoch is not None:
            # The origin records our progress only against the purge log it came from.
            body["epoch"] = epoch
        # Long-polls wait for seconds by design: they must not hold a tenant's fair share.
        result = await self._post("/v1/invalidations/poll", tenant, body, "applier", fair=False)
        return dict(unpackb(result.body))

    async def transaction(
        self, tenant: str, statements: list[Statement], isolation: str, request_id: str
    ) -> OriginResult:
        body = {
            "statements": [{"sql": s.sql, "params": s.params} for s in statements],
            "isolationLevel": isolation,
        }
        with self.guard.admit():
            return await self._call("/v1/transaction", tenant, body, request_id)

    async def ping(self, timeout: float = 2.0) -> bool:
        try:
            async with self._client().get(
                self._base + "/healthz", timeout=aiohttp.ClientTimeout(total=timeout)
            ) as resp:
                return resp.status == 200
        except (TimeoutError, aiohttp.ClientError, OSError):
            return False

    async def poll_changes(
        self,
        tenant: str,
        after: str | None,
        *,
        tables: list[str] | None = None,
        ops: list[str] | None = None,
        wait: float = 0.0,
        limit: int = 1000,
        request_id: str = "stream",
    ) -> dict[str, Any]:
        """Change-stream events after ``after`` (None: just the current position)."""
        body: dict[str, Any] = {"after": after, "wait": wait, "limit": limit}
        if tables is not None:
            body["tables"] = tables
        if ops is not None:
            body["ops"] = ops
        result = await self._post("/v1/changes/poll", tenant, body, request_id, fair=False)
        return dict(unpackb(result.body))

    async def _call(
        self, path: str, tenant: str, body: dict[str, Any], request_id: str
    ) -> OriginResult:
        """A query or transaction over the link, under the fair share and the timeout."""
        # One deadline for waiting our turn and for the call itself (swept, not a timer
        # per call: cache_edge.common.deadlines).
        task = self._deadlines.enter()
        try:
            async with self._share.slot(tenant):
                status, raw, origin_rid = await self.link.call(path, tenant, body, request_id)
        except asyncio.CancelledError:
            if self._deadlines.expired(task):
                raise OriginUnavailable(
                    f"the origin did not answer within {self._deadlines.seconds:.0f} s"
                ) from None
            raise
        except LinkRefused as exc:
            if exc.status == 401:
                # As a refused signed request is: the operator's node_secret is wrong.
                raise Unauthorized(
                    "invalid node signature: check node_secret on node and origin"
                ) from None
            raise OriginUnavailable(f"cannot reach the origin (HTTP {exc.status})") from None
        except LinkDown as exc:
            # The detail (host names, certificate problems) went to the operator's log.
            raise OriginUnavailable(str(exc)) from None
        finally:
            self._deadlines.leave(task)
        if status == 200:
            return OriginResult(raw, origin_rid)
        try:
            answer = unpackb(raw)
        except CacheEdgeError:
            answer = None
        raise error_from_body(answer, status)

    async def _post(
        self, path: str, tenant: str, payload: dict[str, Any], request_id: str, fair: bool = True
    ) -> OriginResult:
        if not fair:
            return await self._send(path, tenant, payload, request_id, fair)
        # Calls clients wait on: bounded, and failed fast while the origin is down.
        with self.guard.admit():
            return await self._send(path, tenant, payload, request_id, fair)

    async def _send(
        self, path: str, tenant: str, payload: dict[str, Any], request_id: str, fair: bool
    ) -> OriginResult:
        data = packb(payload)
        turn = self._share.slot(tenant) if fair else contextlib.nullcontext()
        try:
            # One deadline for waiting our turn and for the request itself.
            async with asyncio.timeout(self._timeout.total), turn:
                # Signed once it may go: the signature's time window starts now.
                headers = sign_headers(self._secret, "POST", path, tenant, data)
                headers["Content-Type"] = MSGPACK_TYPE
                headers["Accept"] = MSGPACK_TYPE
                headers["X-Request-Id"] = request_id
                async with self._client().post(
                    self._base + path, data=data, headers=headers
                ) as resp:
                    raw = await resp.read()
                    status = resp.status
                    origin_rid = resp.headers.get("X-Request-Id", request_id)
        except TimeoutError:
            raise OriginUnavailable(
                f"the origin did not answer within {self._timeout.total:.0f} s"
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            # The detail (host names, certificate problems) is for the operator's log;
            # API clients learn only that the origin is unreachable.
            log.warning("origin_unreachable", error=f"{type(exc).__name__}: {exc}", path=path)
            raise OriginUnavailable(f"cannot reach the origin ({type(exc).__name__})") from None
        if status == 200:
            return OriginResult(raw, origin_rid)
        try:
            body = unpackb(raw)
        except CacheEdgeError:
            body = None
        raise error_from_body(body, status)
