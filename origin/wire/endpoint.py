"""The origin's end of the node↔origin link (GET /v1/wire): PostgreSQL-door sessions, and
the queries and transactions of the HTTP door (CALL frames, run by :mod:`origin.core.calls`).

A node process opens one WebSocket, signed like any other origin call, and proven once:
every session and call it then carries is trusted to belong to the tenant the node
authenticated, as a signed /v1/query is. The open is refused if its signature was seen
before (replay), and a link whose secret the origin stops accepting (a config reload that
withdrew it) is closed at once. Frames are described in :mod:`cache_edge.pgwire.link`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import WSMsgType, web

from cache_edge.common.errors import CacheEdgeError, OriginUnavailable, Unauthorized
from cache_edge.common.request_ids import request_id
from cache_edge.common.signing import (
    SIGNATURE_HEADER,
    LinkOpener,
    SignatureError,
    link_key,
    signed_until,
    signing_secret,
)
from cache_edge.common.wire import packb
from cache_edge.pgwire.link import (
    CALL,
    CANCEL,
    CLOSE,
    DATA,
    DEFINE,
    OPEN,
    OPENED,
    QUERY,
    REPLY,
    RESULT,
    WROTE,
    batch,
    decode_frames,
    encode_frame,
)
from cache_edge.pgwire.messages import error_response
from cache_edge.server.config import Settings
from cache_edge.server.logs import get_logger
from origin.core.dependencies import Dependencies
from origin.core.metrics import OriginMetrics
from origin.core.replay import ReplayCache
from origin.wire.pool import WirePools
from origin.wire.reads import ReadRequest, WireReads
from origin.wire.server import ServerError
from origin.wire.session import SessionEvents, WireSession, apply_sql, settings_key, sqlstate_for

__all__ = ["WireEndpoint"]

log = get_logger("origin.wire.endpoint")

_MAX_FRAME = 64 << 20

# (path, tenant, body, request id) -> (status, answer bytes, request id)
Answer = Callable[[str, str, Any, Any], Awaitable[tuple[int, bytes, str]]]


class WireEndpoint:
    """Accepts links from nodes and runs their sessions on the tenants' wire pools."""

    def __init__(
        self,
        settings: Callable[[], Settings],
        replay: ReplayCache,
        fence: Callable[[str], Awaitable[int | None]] | None = None,
        metrics: OriginMetrics | None = None,
    ) -> None:
        self._settings = settings
        self._replay = replay
        self.fence = fence
        self._metrics = metrics
        self.pools = WirePools(settings().origin)
        self._by_key: dict[tuple[int, int], WireSession] = {}
        self._links: set[_Link] = set()
        if metrics is not None:
            metrics.watch_wire_pools(self.pools.stats)
        self.reads: WireReads | None = None
        self.calls: Answer | None = None
        self._closing = False

    def serve_calls(self, answer: Answer) -> None:
        """Answer the nodes' queries and transactions (CALL frames) with ``answer``."""
        self.calls = answer

    def revoke(self, secrets: tuple[str, ...] | list[str]) -> None:
        """Close every link proven with a secret no longer in ``secrets`` (a reload)."""
        for link in list(self._links):
            if link.secret not in secrets:
                log.warning("wire_link_secret_withdrawn")
                task = asyncio.create_task(link.close())
                link.tasks.add(task)
                task.add_done_callback(link.tasks.discard)

    def serve_reads(
        self,
        watermark: Callable[[str, int], Awaitable[int]],
        dependencies: Callable[[str, str, int], Awaitable[Dependencies]],
        tags: Callable[[str, Dependencies], tuple[tuple[str, ...], tuple[str, ...]]],
    ) -> None:
        """Run the nodes' cacheable reads (origin.wire.reads) with the origin's purge log,
        plan reader and implicit tags."""
        self.reads = WireReads(
            self.pools, lambda t: self._settings().tenant(t), watermark, dependencies, tags
        )

    def sessions(self) -> int:
        return sum(len(link.sessions) for link in self._links)

    def events_for(
        self,
        send: Callable[[int, bytes], None],
        ended: Callable[[int, bytes], None],
        wrote: Callable[[str, int], None],
    ) -> SessionEvents:
        metrics = self._metrics
        if metrics is None:
            return SessionEvents(send, ended, wrote)
        return SessionEvents(
            send,
            ended,
            wrote,
            pinned=lambda tenant: metrics.wire_pinned.labels(tenant).inc(),
            leased=lambda tenant: metrics.wire_transactions.labels(tenant).inc(),
            failed=lambda tenant, state: metrics.wire_errors.labels(tenant, state).inc(),
        )

    async def handle(self, request: web.Request) -> web.StreamResponse:
        settings = self._settings()
        window = settings.origin.signature_window
        try:
            secret = signing_secret(
                settings.node_secrets, request.method, request.path, request.headers, b"", window
            )
        except SignatureError as exc:
            raise Unauthorized(str(exc)) from None
        if not self._replay.first_use(
            request.headers[SIGNATURE_HEADER], signed_until(request.headers, window)
        ):
            raise Unauthorized("node signature already used: replayed request")
        ws = web.WebSocketResponse(max_msg_size=_MAX_FRAME, heartbeat=20.0, compress=False)
        await ws.prepare(request)
        opener = LinkOpener(link_key(secret, request.headers[SIGNATURE_HEADER]))
        link = _Link(self, ws, secret, opener)
        self._links.add(link)
        log.info("wire_link_opened", peer=request.remote)
        try:
            await link.run()
        finally:
            self._links.discard(link)
            await link.close_all()
            log.info("wire_link_closed", peer=request.remote, sessions=len(link.sessions))
        return ws

    async def close(self, drain: float = 10.0) -> None:
        """Answer the calls in flight (new ones are refused meanwhile), then close."""
        self._closing = True
        calls = [task for link in self._links for task in link.calls]
        if calls:
            await asyncio.wait(calls, timeout=drain)
        for link in list(self._links):
            await link.ws.close()
        self.pools.close()


class _Link:
    def __init__(
        self, endpoint: WireEndpoint, ws: web.WebSocketResponse, secret: str, opener: LinkOpener
    ) -> None:
        self.endpoint = endpoint
        self.ws = ws
        self.secret = secret  # the node secret that proved this link
        self.opener = opener  # checks the seal of every message the node sends
        self.sessions: dict[int, WireSession] = {}
        self._keys: dict[int, tuple[int, int]] = {}
        self._out: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._opening: set[asyncio.Task[None]] = set()
        self.tasks = self._opening
        self.calls: set[asyncio.Task[None]] = set()  # CALLs being answered
        self._events = endpoint.events_for(
            lambda sid, data: self._out.put_nowait(encode_frame(DATA, sid, data)),
            self._ended,
            self._wrote,
        )

    def _wrote(self, tenant: str, sid: int) -> None:
        """A session committed a write: tell its node which purge covers it, once known."""
        task = asyncio.create_task(self._fence(tenant, sid))
        self._opening.add(task)
        task.add_done_callback(self._opening.discard)

    async def _fence(self, tenant: str, sid: int) -> None:
        fence = self.endpoint.fence
        seq: int | None = 0
        if fence is not None:
            try:
                seq = await fence(tenant)
            except Exception:
                log.exception("wire_fence_failed", tenant=tenant)
                seq = None
        self._out.put_nowait(encode_frame(WROTE, sid, seq))

    def _ended(self, sid: int, final: bytes) -> None:
        self.sessions.pop(sid, None)
        key = self._keys.pop(sid, None)
        if key is not None:
            self.endpoint._by_key.pop(key, None)
        self._out.put_nowait(encode_frame(CLOSE, sid, final))

    async def run(self) -> None:
        writer = asyncio.create_task(self._write())
        try:
            async for msg in self.ws:
                if msg.type != WSMsgType.BINARY:
                    if msg.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                        break
                    continue
                try:
                    frames = decode_frames(self.opener.open(msg.data))
                except SignatureError:
                    # Not from the node that opened the link: someone on the path.
                    log.warning("wire_link_bad_seal")
                    break
                except ValueError as exc:
                    log.warning("wire_link_bad_frame", error=str(exc))
                    break
                for kind, sid, payload in frames:
                    try:
                        await self._dispatch(kind, sid, payload)
                    except Exception:
                        log.exception("wire_link_dispatch_failed", kind=kind)
        finally:
            self._out.put_nowait(None)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer, 1.0)
            writer.cancel()

    async def _write(self) -> None:
        # What queued up while a send was in progress goes out together in the next.
        out, stop = self._out, False

        def more() -> bytes | None:
            nonlocal stop
            if stop or out.empty():
                return None
            frame = out.get_nowait()
            stop = frame is None
            return frame

        while not stop:
            first = await out.get()
            if first is None:
                return
            try:
                await self.ws.send_bytes(batch(first, more))
            except (ConnectionError, RuntimeError):
                return

    async def _dispatch(self, kind: int, sid: int, payload: Any) -> None:
        if kind == CALL:
            task = asyncio.create_task(self._call(sid, payload))
            self.calls.add(task)
            task.add_done_callback(self.calls.discard)
        elif kind == DATA:
            session = self.sessions.get(sid)
            if session is not None and isinstance(payload, bytes):
                session.feed(payload)
        elif kind == OPEN and isinstance(payload, dict):
            if payload.get("describe"):
                # Waits for a database connection: off the link's reader, which serves all.
                task = asyncio.create_task(self._open(sid, payload))
                self._opening.add(task)
                task.add_done_callback(self._opening.discard)
            else:
                await self._open(sid, payload)
        elif kind == CLOSE:
            session = self.sessions.get(sid)
            if session is not None:
                session.close()
        elif kind == DEFINE:
            session = self.sessions.get(sid)
            if session is not None and isinstance(payload, bytes):
                session.define(payload)
        elif kind == QUERY:
            task = asyncio.create_task(self._query(sid, payload))
            self._opening.add(task)
            task.add_done_callback(self._opening.discard)
        elif kind == CANCEL and isinstance(payload, list) and len(payload) == 2:
            target = self.endpoint._by_key.get((int(payload[0]), int(payload[1])))
            if target is not None:
                task = asyncio.create_task(target.cancel_query())
                self._opening.add(task)
                task.add_done_callback(self._opening.discard)

    async def _call(self, call: int, payload: Any) -> None:
        """One query or transaction of the node's HTTP door, answered as HTTP would."""
        calls = self.endpoint.calls
        if not isinstance(payload, dict):
            payload = {}
        rid = payload.get("requestId")
        if self.endpoint._closing or calls is None:
            error = OriginUnavailable("the origin is shutting down")
            rid = request_id(rid if isinstance(rid, str) else None)
            answer = (error.status, packb(error.to_body(rid)), rid)
        else:
            path, tenant = payload.get("path"), payload.get("tenant")
            answer = await calls(str(path), str(tenant), payload.get("body"), rid)
        frame = encode_frame(REPLY, call, list(answer))
        if len(self.calls) == 1 and self._out.empty():
            # The only call in flight: answer now, without a hop through the writer
            # (under load the writer batches instead).
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.ws.send_bytes(frame)
        else:
            self._out.put_nowait(frame)

    async def _query(self, request: int, payload: Any) -> None:
        reads = self.endpoint.reads
        try:
            req = ReadRequest.from_wire(payload)
        except (KeyError, TypeError, ValueError) as exc:
            answer: dict[str, Any] = {"error": error_response("08P01", f"bad QUERY: {exc}")}
        else:
            if reads is None:
                answer = {"uncacheable": "this origin does not run cached reads"}
            elif isinstance(payload, dict) and payload.get("classify"):
                answer = await reads.classify(req)
            else:
                answer = await reads.run(req)
        self._out.put_nowait(encode_frame(RESULT, request, answer))

    async def _open(self, sid: int, payload: dict[str, Any]) -> None:
        settings = self.endpoint._settings()
        tenant = settings.tenant(str(payload.get("tenant", "")))
        raw = payload.get("settings") or {}
        client_settings = {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
        if tenant is None:
            error = error_response("28000", "unknown tenant", "FATAL")
            self._out.put_nowait(encode_frame(OPENED, sid, {"error": error}))
            return
        pool = self.endpoint.pools.get(tenant)
        if payload.get("describe"):
            answer = await _describe(pool, client_settings)
            self._out.put_nowait(encode_frame(OPENED, sid, answer))
            if "error" in answer:
                return
        session = WireSession(
            sid,
            tenant.id,
            pool,
            client_settings,
            self._events,
            settings.origin.max_prepared_statements,
        )
        self.sessions[sid] = session
        key = payload.get("key")
        if isinstance(key, list) and len(key) == 2:
            self._keys[sid] = (int(key[0]), int(key[1]))
            self.endpoint._by_key[self._keys[sid]] = session

    async def close(self) -> None:
        await self.ws.close()

    async def close_all(self) -> None:
        sessions = list(self.sessions.values())
        for session in sessions:
            session.close()
        for session in sessions:
            with contextlib.suppress(Exception):
                await session.wait_closed()


async def _describe(pool: Any, client_settings: dict[str, str]) -> dict[str, Any]:
    """The ParameterStatus a new session with these startup settings gets (the node caches
    it per tenant and settings, so only a new combination costs a round trip)."""
    try:
        conn = await pool.acquire()
    except CacheEdgeError as exc:
        return {"error": error_response(sqlstate_for(exc), str(exc), "FATAL")}
    reusable = True
    try:
        try:
            settings = pool.clamped(client_settings)
            await conn.run(apply_sql(settings))
            conn.state_key = settings_key(settings)
        except ServerError as exc:
            conn.state_key = ""
            fields = exc.fields
            return {
                "error": error_response(
                    fields.get("C", "22023"), fields.get("M", str(exc)), "FATAL"
                )
            }
        return {"status": [[k, v] for k, v in conn.parameters.items()]}
    except (ConnectionError, OSError) as exc:
        reusable = False
        return {"error": error_response("08006", f"database connection lost: {exc}", "FATAL")}
    finally:
        pool.release(conn, reusable)
