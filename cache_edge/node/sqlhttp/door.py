"""The Neon-compatible HTTP door: ``POST /sql`` runs PostgreSQL statements over HTTP.

Edge runtimes that cannot open a TCP connection send their queries here with the Neon
serverless driver (``neonConfig.fetchEndpoint``); drizzle, kysely and Prisma ride on it.

    one statement, cache hint or rule   the region's read path, the PostgreSQL door's
                                         entries and keys (:mod:`..pgdoor.caching`)
    one statement, otherwise            an origin session over the node's link:
                                         Parse Bind Describe Execute Sync, one frame
    a batch                              the same, in BEGIN ... COMMIT, one frame

Answers are PostgreSQL's own bytes turned into Neon's JSON (:mod:`.results`); the cache
status travels in ``X-Cache-Status`` and ``Age`` (the clients replace request headers
wholesale, but let a ``fetchFunction`` read response ones). After a write commits, the
answer waits (at most ``_WRITE_WAIT`` seconds) until this region has applied the purge that
covers it, so the caller's next read here, through any door, sees its write.

Errors keep Neon's shape (``message``, ``code`` = SQLSTATE, ``detail``...), with the node's
stable code in ``cacheEdgeCode``: 400 for what the caller can fix (a statement PostgreSQL
refused, a malformed body, bad credentials), 429 and 5xx for the rest, as elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import struct
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgpack
import orjson
import xxhash
from aiohttp import web

from cache_edge.common.answer import iso_ms
from cache_edge.common.errors import (
    BadRequest,
    CacheEdgeError,
    OriginUnavailable,
    QueryTimeout,
    Unauthorized,
)
from cache_edge.common.limits import Limits
from cache_edge.common.protocol import QueryRequest
from cache_edge.common.strategy import CacheStrategy
from cache_edge.common.wire import packb
from cache_edge.node.auth import ApiKeys, Principal
from cache_edge.node.pgdoor.caching import (
    DoorStatement,
    StatementFailed,
    Uncacheable,
    door_sqlstate,
)
from cache_edge.node.pgdoor.hints import Hinted, HintError, read_hints, strategy_from
from cache_edge.node.pgdoor.link import LinkDown, OriginLink
from cache_edge.node.pgdoor.session import DoorCache
from cache_edge.node.sqlhttp.request import SqlRequest, credentials, parse_sql_request
from cache_edge.node.sqlhttp.results import error_body, results_of
from cache_edge.pgwire.messages import WRITE_TAGS, cstring, message
from cache_edge.server.bodies import read_capped
from cache_edge.server.config import Settings
from cache_edge.server.http_errors import REQUEST_ID
from cache_edge.server.logs import get_logger

__all__ = ["SqlDoor"]

log = get_logger(__name__)

_PLANS = 4096  # request bodies remembered as plans (SqlDoor._plan)
_PLAN_BODY_MAX = 8192  # larger bodies are planned each time
_FLAG_HEADERS = (
    "Neon-Array-Mode",
    "Neon-Raw-Text-Output",
    "Neon-Batch-Isolation-Level",
    "Neon-Batch-Read-Only",
    "Neon-Batch-Deferrable",
)
_RENDERED_BYTES = 16 << 20  # rendered hits kept per process (RenderedResults)
_WRITE_WAIT = 3.0  # more than the origin's write_invalidation_wait (2 s by default)
_PG_KEY = len(packb("pg"))
_NO_TYPES = b"\x00\x00"
_SYNC = message(b"S")
_ROLLBACK = message(b"Q", cstring("ROLLBACK"))
_EXPOSED = (
    "X-Cache-Status, Age, X-Cache-Last-Modified, X-Cache-Region, X-Cache-Signature, "
    "X-Request-Id, X-Cache-Invalidation, X-Cache-Warning"
)
_ALLOWED_HEADERS = (
    "Neon-Connection-String, Neon-Raw-Text-Output, Neon-Array-Mode, "
    "Neon-Batch-Isolation-Level, Neon-Batch-Read-Only, Neon-Batch-Deferrable, "
    "Neon-Pool-Opt-In, Authorization, Content-Type"
)
_CORS = {"Access-Control-Allow-Origin": "*", "Access-Control-Expose-Headers": _EXPOSED}
# Our stable codes as SQLSTATEs: the PostgreSQL door's (pgdoor.caching.door_sqlstate), and
# these, which only an HTTP request can meet.
_HTTP_SQLSTATE = {
    "bad_request": "08P01",
    "unauthorized": "28P01",
    "payload_too_large": "54000",
    "rate_limited": "53400",
}


class _Failed(Exception):
    """PostgreSQL refused a statement: its ErrorResponse, answered as Neon's 400."""

    def __init__(self, error: bytes) -> None:
        super().__init__("statement failed")
        self.error = error


def _bind(params: tuple[str | None, ...]) -> bytes:
    """A Bind body after the portal and statement names: text in, text out."""
    parts = [struct.pack("!hh", 0, len(params))]
    for value in params:
        if value is None:
            parts.append(b"\xff\xff\xff\xff")
        else:
            encoded = value.encode()
            parts.append(struct.pack("!i", len(encoded)) + encoded)
    parts.append(b"\x00\x00")
    return b"".join(parts)


def _flight(sql: str, params: tuple[str | None, ...]) -> bytes:
    """Parse, Bind, Describe portal and Execute of one statement (unnamed)."""
    return (
        message(b"P", b"\x00" + sql.encode() + b"\x00" + _NO_TYPES)
        + message(b"B", b"\x00\x00" + _bind(params))
        + message(b"D", b"P\x00")
        + message(b"E", b"\x00\x00\x00\x00\x00")
    )


class _Run:
    """One origin session for one request: collects PostgreSQL's answer up to the
    ``readies``-th ReadyForQuery, and the fence of a write it committed. Each message is
    looked at once, as it arrives: the first ErrorResponse and whether a statement wrote
    are known when the answer is."""

    def __init__(self, readies: int) -> None:
        loop = asyncio.get_running_loop()
        self.data = bytearray()
        self.done: asyncio.Future[None] = loop.create_future()
        self.fenced: asyncio.Future[int | None] = loop.create_future()
        self._readies = readies
        self._pos = 0
        self.status = b"I"
        self.error = b""  # the first ErrorResponse
        self.wrote = False  # a statement completed with a tag that writes

    def on_data(self, data: bytes) -> None:
        self.data += data
        self._scan()

    def _scan(self) -> None:
        buf = self.data
        while self._pos + 5 <= len(buf):
            pos = self._pos
            length = int.from_bytes(buf[pos + 1 : pos + 5], "big")
            if pos + 1 + length > len(buf):
                break
            kind = buf[pos]
            if kind == 0x5A:  # 'Z'
                self.status = bytes(buf[pos + 5 : pos + 6])
                self._readies -= 1
                if self._readies == 0 and not self.done.done():
                    self.done.set_result(None)
            elif kind == 0x45 and not self.error:  # 'E'
                self.error = bytes(buf[pos : pos + 1 + length])
            elif kind == 0x43 and not self.wrote:  # 'C'
                self.wrote = bytes(buf[pos + 5 : pos + length]).split(b" ", 1)[0] in WRITE_TAGS
            self._pos = pos + 1 + length

    def on_close(self, final: bytes) -> None:
        self.data += final
        self._scan()
        if not self.done.done():
            self.done.set_result(None)
        if not self.fenced.done():
            self.fenced.set_result(None)

    def on_fence(self, seq: int | None) -> None:
        if not self.fenced.done():
            self.fenced.set_result(seq)

    def on_link_lost(self, final: bytes) -> None:
        if not self.done.done():
            self.done.set_exception(LinkDown("the link to the origin closed"))
        if not self.fenced.done():
            self.fenced.set_result(None)


@dataclass(frozen=True, slots=True)
class _Plan:
    """What a request body means, worked out once per body and flags (``SqlDoor._plan``)."""

    req: SqlRequest
    hinted: Hinted | None = None  # one statement: its hints and hint-free text
    stmt: DoorStatement | None = None  # one statement: its cacheable form, keyed
    strategy: CacheStrategy | None = None  # from its hint; None: the tenant's rules decide
    warning: str = ""  # a hint that could not be read: runs uncached, says why


def _plan_of(req: SqlRequest) -> _Plan:
    if req.batch:
        return _Plan(req)
    query = req.queries[0]
    hinted = read_hints(query.sql)
    if hinted.error:
        return _Plan(req, hinted, warning=f"{hinted.error}; the statement ran uncached")
    run_parse = hinted.run_sql.encode() + b"\x00" + _NO_TYPES
    stmt = DoorStatement.of(hinted.key_sql, run_parse, _NO_TYPES, _bind(query.params))
    if not hinted.fields:
        return _Plan(req, hinted, stmt)
    try:
        strategy = strategy_from(hinted.fields)
    except HintError as exc:
        return _Plan(req, hinted, warning=f"{exc}; the statement ran uncached")
    return _Plan(req, hinted, stmt, strategy)


class RenderedResults:
    """Cached answers as Neon JSON, made once per entry and answer mode: a hit then does
    no per-row work. Keyed by a 128-bit hash of the cached bytes (a few ns per KiB), so an
    entry refetched with other rows can never be answered with the old JSON; least
    recently used first out, within ``budget`` bytes."""

    def __init__(self, budget: int) -> None:
        self._budget = budget
        self._used = 0
        self._items: OrderedDict[tuple[int, bool, bool], bytes] = OrderedDict()

    def get(self, core: bytes, array_mode: bool, raw_text: bool) -> bytes:
        key = (xxhash.xxh3_128_intdigest(core), array_mode, raw_text)
        found = self._items.get(key)
        if found is not None:
            self._items.move_to_end(key)
            return found
        results, error = results_of(msgpack.unpackb(core[_PG_KEY:]), array_mode, raw_text)
        if error or not results:
            raise _Failed(error)
        rendered = orjson.dumps(results[0])
        if len(rendered) <= self._budget // 8:
            self._items[key] = rendered
            self._used += len(rendered)
            while self._used > self._budget:
                _, dropped = self._items.popitem(last=False)
                self._used -= len(dropped)
        return rendered


class SqlDoor:
    def __init__(
        self,
        settings: Callable[[], Settings],
        keys: ApiKeys,
        admit: Callable[[Principal], Awaitable[None]],
        link: OriginLink,
        cache: DoorCache,
        applied: Callable[[str, int], Awaitable[bool]],
        on_error: Callable[[str], None] = lambda code: None,
    ) -> None:
        self._settings = settings
        self._keys = keys
        self._admit = admit  # the rate limit
        self._link = link
        self._cache = cache
        self._applied = applied  # has this region applied purge seq N of a tenant?
        self._rendered = RenderedResults(_RENDERED_BYTES)
        self._plans: dict[tuple[bytes | str | None, ...], _Plan] = {}
        self._on_error = on_error  # counts error answers by stable code, as the boundary does

    # ------------------------------------------------------------ HTTP

    async def preflight(self, request: web.Request) -> web.Response:
        return web.Response(
            status=204,
            headers={
                **_CORS,
                "Access-Control-Allow-Methods": "POST, OPTIONS",
                "Access-Control-Allow-Headers": _ALLOWED_HEADERS,
                "Access-Control-Max-Age": "86400",
            },
        )

    async def handle(self, request: web.Request) -> web.Response:
        settings = self._settings()
        headers = {
            **_CORS,
            "X-Request-Id": request[REQUEST_ID],
            "X-Cache-Region": settings.node.region,
        }
        try:
            tenant = await self._login(request)
            body = await read_capped(
                request, settings.limits.max_body_bytes, settings.node.body_timeout
            )
            plan = self._plan(body, request.headers, settings.limits)
            answer = await self._answer(tenant, plan, headers)
        except _Failed as failed:
            self._on_error("query_error")
            return self._error(400, error_body(failed.error), headers)
        except CacheEdgeError as exc:
            self._on_error(exc.code)
            if exc.status >= 500:
                log.warning("sql_door_error", code=exc.code, error=exc.message)
            return self._our_error(exc, headers, request[REQUEST_ID])
        headers["Content-Type"] = "application/json"
        return web.Response(body=answer, headers=headers)

    def _plan(self, body: bytes, headers: Mapping[str, str], limits: Limits) -> _Plan:
        """The request's plan; a body seen before (the same statement, the same values) is
        not parsed, hint-read or keyed again."""
        key = (body, *(headers.get(h) for h in _FLAG_HEADERS))
        found = self._plans.get(key)
        if found is not None:
            return found
        plan = _plan_of(parse_sql_request(body, headers, limits))
        if len(body) <= _PLAN_BODY_MAX:
            self._plans[key] = plan
            if len(self._plans) > _PLANS:
                del self._plans[next(iter(self._plans))]
        return plan

    def _error(self, status: int, body: dict[str, Any], headers: dict[str, str]) -> web.Response:
        body.setdefault("severity", "ERROR")
        return web.Response(
            status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
        )

    def _our_error(
        self, exc: CacheEdgeError, headers: dict[str, str], request_id: str
    ) -> web.Response:
        status = exc.status if exc.status >= 429 else 400  # Neon's clients read 400 bodies
        body: dict[str, Any] = {
            "message": exc.message,
            "code": exc.extra.get("sqlstate")
            or _HTTP_SQLSTATE.get(exc.code)
            or door_sqlstate(exc.code),
            "cacheEdgeCode": exc.code,
            "requestId": request_id,
        }
        if exc.retry_after is not None:
            headers["Retry-After"] = str(max(1, round(exc.retry_after)))
        return self._error(status, body, headers)

    async def _login(self, request: web.Request) -> str:
        creds = credentials(request.headers)
        try:
            who = self._keys.authenticate("Bearer " + creds.key)
        except Unauthorized:
            raise Unauthorized("password authentication failed: invalid API key") from None
        if who.tenant != creds.tenant:  # the same words: nothing says which part was wrong
            raise Unauthorized("password authentication failed: invalid API key")
        tenant = self._settings().tenant(who.tenant)
        if tenant is None:
            raise Unauthorized("password authentication failed: invalid API key")
        if creds.database is not None and creds.database != tenant.database_name:
            raise BadRequest(f'database "{creds.database}" does not exist', sqlstate="3D000")
        await self._admit(who)
        return who.tenant

    # ------------------------------------------------------------ running

    async def _answer(self, tenant: str, plan: _Plan, headers: dict[str, str]) -> bytes:
        """The answer's JSON body."""
        req = plan.req
        if plan.hinted is not None:
            query = req.queries[0]
            cached = await self._cached(tenant, plan, headers)
            if cached is not None:
                return cached
            sql = plan.hinted.run_sql
            self._cache.observe(tenant, "none")
            data = await self._run(tenant, _flight(sql, query.params) + _SYNC, 1, headers)
            return orjson.dumps(results_of(bytes(data), req.array_mode, req.raw_text)[0][0])
        self._cache.observe(tenant, "none")
        begin = _flight(req.begin(), ())
        body = b"".join(_flight(read_hints(q.sql).run_sql, q.params) for q in req.queries)
        data = await self._run(
            tenant, begin + body + _flight("COMMIT", ()) + _SYNC + _ROLLBACK, 2, headers
        )
        results = results_of(bytes(data), req.array_mode, req.raw_text)[0]
        return orjson.dumps({"results": results[1 : 1 + len(req.queries)]})

    async def _run(
        self, tenant: str, flight: bytes, readies: int, headers: dict[str, str]
    ) -> bytearray:
        """Run ``flight`` in an origin session of its own; PostgreSQL's answer bytes, or
        _Failed with its first ErrorResponse."""
        run = _Run(readies)
        key = (secrets.randbits(31) or 1, secrets.randbits(32))
        timeout = self._settings().node.origin_timeout
        sid = 0
        try:
            sid, _ = await self._link.open(run, tenant, {}, key, False)
            self._link.send(sid, flight)
            async with asyncio.timeout(timeout):
                await run.done
            if not run.error and run.status == b"I" and run.wrote:
                await self._wait_covered(tenant, run, headers)
        except LinkDown as exc:
            raise OriginUnavailable(f"the node cannot reach the origin: {exc}") from None
        except TimeoutError:
            if sid:
                with contextlib.suppress(LinkDown):
                    await self._link.cancel(*key)
            raise QueryTimeout(f"no answer from the origin within {timeout} s") from None
        finally:
            if sid:
                self._link.close_session(sid)
        if run.error:
            raise _Failed(run.error)
        return run.data

    async def _wait_covered(self, tenant: str, run: _Run, headers: dict[str, str]) -> None:
        """Read your writes across requests: wait until this region applied the purge
        that covers the write (``X-Cache-Invalidation`` says whether it did in time)."""
        deadline = asyncio.get_running_loop().time() + _WRITE_WAIT
        try:
            async with asyncio.timeout(_WRITE_WAIT):
                seq = await run.fenced
        except TimeoutError:
            seq = None
        if seq is None:
            headers["X-Cache-Invalidation"] = "unknown"
            return
        while not await self._applied(tenant, seq):
            if asyncio.get_running_loop().time() >= deadline:
                headers["X-Cache-Invalidation"] = "pending"
                return
            await asyncio.sleep(0.01)
        headers["X-Cache-Invalidation"] = "applied"

    async def _cached(self, tenant: str, plan: _Plan, headers: dict[str, str]) -> bytes | None:
        """The answer from the region's read path, or None when the statement is not
        cached (no hint and no rule, a write, or a result the cache cannot hold)."""
        hinted, stmt = plan.hinted, plan.stmt
        if plan.warning:
            headers["X-Cache-Warning"] = plan.warning
        if hinted is None or stmt is None:
            return None
        door = self._cache
        strategy = plan.strategy
        if strategy is None:
            if door.rules is None:
                return None
            strategy = door.rules.strategy(tenant, stmt.key_sql, stmt.run_parse, stmt.bind)
            if strategy is None:
                return None
        if not strategy.cached:
            return None
        try:
            answer = await door.cache.query(
                tenant, QueryRequest(stmt, strategy), headers["X-Request-Id"]
            )
        except Uncacheable:
            return None
        except StatementFailed as failed:
            if not failed.read_only:
                raise _Failed(failed.error) from None
            if plan.strategy is None and door.rules is not None:
                door.rules.writes(tenant, hinted.key_sql)
                return None  # a rule never refuses a write: it runs uncached
            raise BadRequest(
                "cache hints apply to reads: this statement writes; remove the cache hint",
                sqlstate="25006",
            ) from None
        door.observe(tenant, answer.status)
        headers["X-Cache-Status"] = answer.status
        headers["Age"] = str(int(answer.age(time.time())))
        if answer.produced_at_ms:
            headers["X-Cache-Last-Modified"] = iso_ms(answer.produced_at_ms)
        if answer.signature:
            headers["X-Cache-Signature"] = answer.signature
        return self._rendered.get(answer.core, plan.req.array_mode, plan.req.raw_text)
