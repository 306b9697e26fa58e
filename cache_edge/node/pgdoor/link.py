"""The node's end of the link to the origin that carries every PostgreSQL-door session.

One WebSocket per node process, opened on first use and signed once; if it drops, the
sessions on it end (their clients get SQLSTATE 08006, as when a server restarts) and the
next session opens a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable
from typing import Any, Protocol

import aiohttp

from cache_edge.common.signing import sign_headers
from cache_edge.pgwire.link import (
    CANCEL,
    CLOSE,
    DATA,
    DEFINE,
    OPEN,
    OPENED,
    PATH,
    QUERY,
    RESULT,
    WROTE,
    decode_frame,
)
from cache_edge.pgwire.link import encode_frame as _frame
from cache_edge.pgwire.messages import error_response
from cache_edge.server.logs import get_logger

__all__ = ["LinkDown", "LinkSession", "OriginLink"]

log = get_logger("cache_edge.node.pgdoor.link")

_MAX_FRAME = 64 << 20


class LinkDown(Exception):
    """The origin could not be reached (SQLSTATE 08006 for the client)."""


class LinkSession(Protocol):
    def on_data(self, data: bytes) -> None: ...

    def on_close(self, final: bytes) -> None: ...

    def on_fence(self, seq: int | None) -> None: ...

    def on_link_lost(self, final: bytes) -> None:
        """The link dropped: end the client's connection with ``final``, or keep it (an
        idle session can go on with a new origin session, and cached reads need none)."""
        ...


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
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._connecting: asyncio.Lock | None = None
        self._reader: asyncio.Task[None] | None = None
        self._sessions: dict[int, LinkSession] = {}
        self._opened: dict[int, asyncio.Future[Any]] = {}
        self._results: dict[int, asyncio.Future[Any]] = {}  # cacheable reads in flight
        self._next_request = 0
        self._next_sid = 0
        self._out: asyncio.Queue[bytes] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self.connected = False

    async def _write(self, ws: aiohttp.ClientWebSocketResponse, out: asyncio.Queue[bytes]) -> None:
        # One writer: frames of every session go out in order, one send at a time.
        while True:
            frame = await out.get()
            try:
                await ws.send_bytes(frame)
            except (ConnectionError, RuntimeError):
                await ws.close()
                return

    async def _connection(self) -> aiohttp.ClientWebSocketResponse:
        if self._ws is not None and not self._ws.closed:
            return self._ws
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._ws is not None and not self._ws.closed:
                return self._ws
            if self._http is None or self._http.closed:
                self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self._ssl))
            headers = sign_headers(self._secret(), "GET", PATH, "", b"")
            try:
                async with asyncio.timeout(self._connect_timeout):
                    self._ws = await self._http.ws_connect(
                        self._url, headers=headers, heartbeat=20.0, max_msg_size=_MAX_FRAME
                    )
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                self.connected = False
                raise LinkDown(f"cannot reach the origin: {exc.__class__.__name__}") from None
            self.connected = True
            self._reader = asyncio.create_task(self._read(self._ws), name="origin-link-reader")
            self._out = asyncio.Queue()
            self._writer = asyncio.create_task(
                self._write(self._ws, self._out), name="origin-link-writer"
            )
            log.info("origin_link_opened", url=self._url)
            return self._ws

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.BINARY:
                    continue
                try:
                    kind, sid, payload = decode_frame(msg.data)
                except ValueError:
                    log.warning("origin_link_bad_frame")
                    break
                if kind == DATA:
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
                elif kind == RESULT:
                    future = self._results.pop(sid, None)
                    if future is not None and not future.done():
                        future.set_result(payload)
                elif kind == OPENED:
                    future = self._opened.pop(sid, None)
                    if future is not None and not future.done():
                        future.set_result(payload)
        finally:
            self.connected = False
            log.warning("origin_link_closed", sessions=len(self._sessions))
            lost = error_response("08006", "the node lost its link to the origin", "FATAL")
            sessions, self._sessions = self._sessions, {}
            for session in sessions.values():
                session.on_link_lost(lost)
            for future in (*self._opened.values(), *self._results.values()):
                if not future.done():
                    future.set_exception(LinkDown("the link to the origin closed"))
            self._opened.clear()
            self._results.clear()

    async def open(
        self,
        session: LinkSession,
        tenant: str,
        settings: dict[str, str],
        key: tuple[int, int],
        describe: bool,
    ) -> tuple[int, Any]:
        """Register a session at the origin; with ``describe``, wait for its ParameterStatus."""
        await self._connection()
        self._next_sid += 1
        sid = self._next_sid
        payload = {"tenant": tenant, "settings": settings, "key": list(key), "describe": describe}
        answer: Any = None
        future: asyncio.Future[Any] | None = None
        if describe:
            future = asyncio.get_running_loop().create_future()
            self._opened[sid] = future
        self._sessions[sid] = session
        self._out.put_nowait(_frame(OPEN, sid, payload))
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
        if sid not in self._sessions:
            return False
        self._out.put_nowait(_frame(DATA, sid, data))
        return True

    def define(self, sid: int, parse: bytes) -> None:
        """Tell the origin's session about a Parse the node answered from cache."""
        if sid in self._sessions:
            self._out.put_nowait(_frame(DEFINE, sid, parse))

    async def read(self, payload: dict[str, Any], timeout: float) -> Any:
        """One cacheable read at the origin (origin.wire.reads): its answer map."""
        await self._connection()
        self._next_request += 1
        request = self._next_request
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._results[request] = future
        self._out.put_nowait(_frame(QUERY, request, payload))
        try:
            async with asyncio.timeout(timeout):
                return await future
        finally:
            self._results.pop(request, None)

    def close_session(self, sid: int) -> None:
        if self._sessions.pop(sid, None) is not None:
            self._out.put_nowait(_frame(CLOSE, sid, b""))

    async def cancel(self, pid: int, secret: int) -> None:
        try:
            await self._connection()
        except LinkDown:
            return
        self._out.put_nowait(_frame(CANCEL, 0, [pid, secret]))

    @property
    def sessions(self) -> int:
        return len(self._sessions)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._reader, 2.0)
        if self._http is not None:
            await self._http.close()
