"""The node's end of the link to the origin: every PostgreSQL-door session, and the HTTP
door's queries and transactions (:meth:`OriginLink.call`).

One WebSocket per node process, opened on first use and signed once; if it drops, the
sessions on it end (their clients get SQLSTATE 08006, as when a server restarts), the
calls and reads in flight on it fail with :class:`LinkDown`, and the next use opens a new
one. When the node secret changes (a reload during a rotation) and no session lives on
the link, the next use opens a link proven with the new secret and the old one closes
once its calls are answered; a link that carries sessions stays until the origin drops
the old secret and closes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable
from typing import Any, Protocol

import aiohttp

from cache_edge.common.signing import SIGNATURE_HEADER, LinkSealer, link_key, sign_headers
from cache_edge.common.wire import packb
from cache_edge.pgwire.link import (
    CALL,
    CANCEL,
    CLOSE,
    DATA,
    DEFINE,
    OPEN,
    OPENED,
    PATH,
    QUERY,
    REPLY,
    RESULT,
    WROTE,
    batch,
    decode_frames,
)
from cache_edge.pgwire.link import encode_frame as _frame
from cache_edge.pgwire.messages import error_response
from cache_edge.server.logs import get_logger

__all__ = ["LinkDown", "LinkRefused", "LinkSession", "OriginLink"]

log = get_logger("cache_edge.node.pgdoor.link")

_MAX_FRAME = 64 << 20


class LinkDown(Exception):
    """The origin could not be reached (SQLSTATE 08006 for the client)."""


class LinkRefused(LinkDown):
    """The origin answered the link's opening with an HTTP error (401: the node secret)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class LinkSession(Protocol):
    def on_data(self, data: bytes) -> None: ...

    def on_close(self, final: bytes) -> None: ...

    def on_fence(self, seq: int | None) -> None: ...

    def on_link_lost(self, final: bytes) -> None:
        """The link dropped: end the client's connection with ``final``, or keep it (an
        idle session can go on with a new origin session, and cached reads need none)."""
        ...


class _Conn:
    """One open WebSocket and what rides on it."""

    __slots__ = ("out", "pending", "reader", "retired", "sealer", "secret", "writer", "ws")

    def __init__(
        self, ws: aiohttp.ClientWebSocketResponse, secret: str, sealer: LinkSealer
    ) -> None:
        self.ws = ws
        self.secret = secret  # the node secret its opening was signed with
        # Every message we send is sealed (common.signing): it must leave through send().
        self.sealer = sealer
        self.out: asyncio.Queue[bytes] = asyncio.Queue()
        self.pending: set[int] = set()  # calls and reads awaiting their answer here
        self.retired = False  # no new use: close once ``pending`` is empty
        self.reader: asyncio.Task[None] | None = None
        self.writer: asyncio.Task[None] | None = None

    async def send(self, message: bytes) -> None:
        # Sealed and written in one step (aiohttp writes an uncompressed frame before its
        # first await), so the seals' order is the order on the wire.
        await self.ws.send_bytes(self.sealer.seal(message))


class OriginLink:
    def __init__(
        self,
        origin_url: str,
        secret: Callable[[], str],
        connect_timeout: float,
        ssl_context: ssl.SSLContext | bool = True,
    ) -> None:
        self._url = origin_url.rstrip("/") + PATH
        self._secret = secret
        self._connect_timeout = connect_timeout
        self._ssl = ssl_context
        self._http: aiohttp.ClientSession | None = None
        self._conn: _Conn | None = None
        self._retired: set[_Conn] = set()
        self._connecting: asyncio.Lock | None = None
        self._attempts = 0  # connection attempts made
        self._failure: LinkDown | None = None  # how the last attempt failed, if it did
        self._sessions: dict[int, LinkSession] = {}
        self._opened: dict[int, asyncio.Future[Any]] = {}
        self._results: dict[int, asyncio.Future[Any]] = {}  # reads and calls in flight
        self._next_request = 0
        self._next_sid = 0
        self.connected = False

    async def _write(self, conn: _Conn) -> None:
        # One writer: frames of every session go out in order, one send at a time, and
        # what queued up meanwhile goes out together in the next (pgwire.link.batch).
        ws, out = conn.ws, conn.out

        def more() -> bytes | None:
            return None if out.empty() else out.get_nowait()

        while True:
            frame = batch(await out.get(), more)
            try:
                await conn.send(frame)
            except (ConnectionError, RuntimeError):
                await ws.close()
                return

    async def _connection(self) -> _Conn:
        conn = self._conn
        if conn is not None and not conn.ws.closed:
            if conn.secret == self._secret() or self._sessions:
                return conn
            self._retire(conn)  # the node secret changed: prove a new link with it
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        attempt = self._attempts
        async with self._connecting:
            conn = self._conn
            if conn is not None and not conn.ws.closed and not conn.retired:
                return conn
            failure = self._failure
            if failure is not None and self._attempts != attempt:
                # An attempt made while we waited failed: fail with it, do not queue up
                # one more connect timeout per waiting caller.
                raise _again(failure)
            self._attempts += 1
            try:
                conn = await self._open()
            except LinkDown as exc:
                self._failure = exc
                self.connected = False
                raise
            self._failure = None
            self._conn = conn
            self.connected = True
            conn.reader = asyncio.create_task(self._read(conn), name="origin-link-reader")
            conn.writer = asyncio.create_task(self._write(conn), name="origin-link-writer")
            log.info("origin_link_opened", url=self._url)
            return conn

    async def _open(self) -> _Conn:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self._ssl))
        secret = self._secret()
        headers = sign_headers(secret, "GET", PATH, "", b"")
        try:
            async with asyncio.timeout(self._connect_timeout):
                ws = await self._http.ws_connect(
                    self._url, headers=headers, heartbeat=20.0, max_msg_size=_MAX_FRAME
                )
        except aiohttp.WSServerHandshakeError as exc:
            # 401: the origin does not accept this node's secret (node_secret on both ends).
            log.warning("origin_link_refused", status=exc.status, url=self._url)
            raise LinkRefused(
                f"the origin refused the link (HTTP {exc.status})", exc.status
            ) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            detail = f"{type(exc).__name__}: {exc}"
            log.warning("origin_unreachable", error=detail, path=PATH)
            raise LinkDown(f"cannot reach the origin ({type(exc).__name__})") from None
        return _Conn(ws, secret, LinkSealer(link_key(secret, headers[SIGNATURE_HEADER])))

    def _retire(self, conn: _Conn) -> None:
        if conn.retired:
            return
        conn.retired = True
        self._retired.add(conn)
        if not conn.pending:
            asyncio.get_running_loop().create_task(conn.ws.close())

    def _answered(self, conn: _Conn, request: int, payload: Any) -> None:
        conn.pending.discard(request)
        future = self._results.pop(request, None)
        if future is not None and not future.done():
            future.set_result(payload)
        if conn.retired and not conn.pending:
            asyncio.get_running_loop().create_task(conn.ws.close())

    async def _read(self, conn: _Conn) -> None:
        ws = conn.ws
        try:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.BINARY:
                    continue
                try:
                    frames = decode_frames(msg.data)
                except ValueError:
                    log.warning("origin_link_bad_frame")
                    break
                for kind, sid, payload in frames:
                    self._dispatch(conn, kind, sid, payload)
        finally:
            with contextlib.suppress(Exception):
                await ws.close()
            if conn.writer is not None:
                conn.writer.cancel()
            self._retired.discard(conn)
            for request in conn.pending:
                future = self._results.pop(request, None)
                if future is not None and not future.done():
                    future.set_exception(LinkDown("the origin closed the link during the call"))
            conn.pending.clear()
            if conn is self._conn:
                self._lost(conn)

    def _dispatch(self, conn: _Conn, kind: int, sid: int, payload: Any) -> None:
        if kind in (REPLY, RESULT):
            self._answered(conn, sid, payload)
        elif kind == DATA:
            session = self._sessions.get(sid)
            if session is not None:
                session.on_data(payload)
        elif kind == CLOSE:
            gone = self._sessions.pop(sid, None)
            if gone is not None:
                gone.on_close(payload or b"")
        elif kind == WROTE:
            session = self._sessions.get(sid)
            if session is not None:
                session.on_fence(payload if isinstance(payload, int) else None)
        elif kind == OPENED:
            future = self._opened.pop(sid, None)
            if future is not None and not future.done():
                future.set_result(payload)

    def _lost(self, conn: _Conn) -> None:
        """The current link closed: end (or let go of) the sessions it carried."""
        self.connected = False
        log.warning("origin_link_closed", sessions=len(self._sessions))
        lost = error_response("08006", "the node lost its link to the origin", "FATAL")
        sessions, self._sessions = self._sessions, {}
        for session in sessions.values():
            session.on_link_lost(lost)
        for future in self._opened.values():
            if not future.done():
                future.set_exception(LinkDown("the link to the origin closed"))
        self._opened.clear()

    async def open(
        self,
        session: LinkSession,
        tenant: str,
        settings: dict[str, str],
        key: tuple[int, int],
        describe: bool,
    ) -> tuple[int, Any]:
        """Register a session at the origin; with ``describe``, wait for its ParameterStatus."""
        conn = await self._connection()
        self._next_sid += 1
        sid = self._next_sid
        payload = {"tenant": tenant, "settings": settings, "key": list(key), "describe": describe}
        answer: Any = None
        future: asyncio.Future[Any] | None = None
        if describe:
            future = asyncio.get_running_loop().create_future()
            self._opened[sid] = future
        self._sessions[sid] = session
        conn.out.put_nowait(_frame(OPEN, sid, payload))
        try:
            if future is not None:
                answer = await future
        except BaseException:
            self._sessions.pop(sid, None)
            self._opened.pop(sid, None)
            raise
        return sid, answer

    def send(self, sid: int, data: bytes) -> bool:
        """Queue a session's messages; False if its session (or the link) is gone."""
        if sid not in self._sessions or self._conn is None:
            return False
        self._conn.out.put_nowait(_frame(DATA, sid, data))
        return True

    def define(self, sid: int, parse: bytes) -> None:
        """Tell the origin's session about a Parse the node answered from cache."""
        if sid in self._sessions and self._conn is not None:
            self._conn.out.put_nowait(_frame(DEFINE, sid, parse))

    async def _ask(self, kind: int, payload: Any) -> Any:
        """Send one request frame and wait for its answer (RESULT or REPLY)."""
        conn = self._conn
        if conn is None or conn.retired or conn.ws.closed or conn.secret != self._secret():
            conn = await self._connection()
        self._next_request += 1
        request = self._next_request
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._results[request] = future
        conn.pending.add(request)
        frame = _frame(kind, request, payload)
        try:
            if len(conn.pending) == 1 and conn.out.empty():
                # Nothing else in flight: send it now, without a hop through the writer
                # (under load the writer batches instead). Answers need no order.
                try:
                    await conn.send(frame)
                except (ConnectionError, RuntimeError):
                    raise LinkDown("the link to the origin closed") from None
            else:
                conn.out.put_nowait(frame)
            return await future
        finally:
            if self._results.pop(request, None) is not None:
                conn.pending.discard(request)  # timed out or cancelled: forget it
                if conn.retired and not conn.pending:
                    asyncio.get_running_loop().create_task(conn.ws.close())

    async def read(self, payload: dict[str, Any], timeout: float) -> Any:
        """One cacheable read at the origin (origin.wire.reads): its answer map."""
        async with asyncio.timeout(timeout):
            return await self._ask(QUERY, payload)

    async def call(
        self, path: str, tenant: str, body: dict[str, Any], request_id: str
    ) -> tuple[int, bytes, str]:
        """What ``POST path`` would answer (``/v1/query``, ``/v1/transaction``): status,
        body bytes and the origin's request id. Raises LinkDown; the caller times it."""
        # The body travels as the HTTP door's own msgpack (cache_edge.common.wire), so
        # parameters keep their exact PostgreSQL types (Decimal, UUID, dates...), which the
        # link's plain msgpack framing cannot carry.
        payload = {"path": path, "tenant": tenant, "requestId": request_id, "body": packb(body)}
        answer = await self._ask(CALL, payload)
        try:
            status, data, rid = answer
            return int(status), bytes(data), str(rid)
        except (TypeError, ValueError):
            raise LinkDown("the origin sent a malformed answer") from None

    def close_session(self, sid: int) -> None:
        if self._sessions.pop(sid, None) is not None and self._conn is not None:
            self._conn.out.put_nowait(_frame(CLOSE, sid, b""))

    async def cancel(self, pid: int, secret: int) -> None:
        try:
            conn = await self._connection()
        except LinkDown:
            return
        conn.out.put_nowait(_frame(CANCEL, 0, [pid, secret]))

    @property
    def sessions(self) -> int:
        return len(self._sessions)

    async def close(self) -> None:
        conns = [c for c in (self._conn, *self._retired) if c is not None]
        for conn in conns:
            if conn.writer is not None:
                conn.writer.cancel()
            await conn.ws.close()
        for conn in conns:
            if conn.reader is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(conn.reader, 2.0)
        if self._http is not None:
            await self._http.close()


def _again(failure: LinkDown) -> LinkDown:
    if isinstance(failure, LinkRefused):
        return LinkRefused(str(failure), failure.status)
    return LinkDown(str(failure))
