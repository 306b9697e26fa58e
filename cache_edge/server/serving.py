"""Package serving runs an aiohttp application on one listening socket with a cap on
open connections, and keeps an idle connection small.

What aiohttp's ``run_app`` does not do, and a node facing the internet needs:

* **A connection cap** (``node.max_connections``, kept under the process's
  file-descriptor limit, whose soft value is first raised to the hard one). At the cap
  a new connection makes room by closing the connection that has been idle longest (no
  request in progress: a keep-alive connection between requests, or one that has not
  sent a whole request yet), as nginx does when it runs out of ``worker_connections``;
  clients reopen idle keep-alive connections anyway. Busy connections are never
  closed for room: if every connection is busy, the newcomer is closed at once. So a
  flood of idle connections cannot lock others out, and open sockets stay bounded
  instead of running into ``EMFILE``.
* **Idle connections hold no answer.** aiohttp keeps the last request and response of
  a keep-alive connection referenced until the next request arrives, body included: a
  connection that received a 1 MB result and then idles would hold 1 MB. The
  middleware here drops the body once the response is sent.

Idle memory per connection is then about what aiohttp and the event loop need (9 KB
measured, docs/decisions.md); ``keepalive_timeout`` closes idle connections anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from cache_edge.server.logs import get_logger

__all__ = ["ConnectionCap", "Listener", "raise_fd_limit", "serve"]

log = get_logger(__name__)

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_LOG_EVERY = 10.0  # seconds between two "at the cap" warnings


def raise_fd_limit() -> tuple[int, int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard one: (soft before, soft now, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    before = soft
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return before, soft, hard


class _Tracked(asyncio.Protocol):
    """Wraps aiohttp's protocol for one connection: counts it, orders it by activity."""

    __slots__ = ("_cap", "_inner", "_transport", "busy")

    def __init__(self, cap: ConnectionCap, inner: Any) -> None:
        self._cap = cap
        self._inner = inner  # aiohttp's RequestHandler
        self._transport: asyncio.BaseTransport | None = None
        self.busy = 0  # requests in progress (their response not yet sent)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._cap._admit(self, transport):
            transport.close()
            return
        self._transport = transport
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is None:
            return  # refused: aiohttp never saw it
        self._cap._conns.pop(self._transport, None)
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._transport is not None:
            self._cap._conns.move_to_end(self._transport)
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self._transport is None:
            return None
        return self._inner.eof_received()  # type: ignore[no-any-return]

    def pause_writing(self) -> None:
        if self._transport is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._transport is not None:
            self._inner.resume_writing()

    def close_idle(self) -> None:
        self._inner.force_close()

    def request_done(self, _task: object) -> None:
        self.busy -= 1
        if self._transport is not None and self._transport in self._cap._conns:
            self._cap._conns.move_to_end(self._transport)  # activity: last to be closed


class ConnectionCap:
    """At most ``limit`` open connections; at the cap the longest-idle one makes room."""

    def __init__(self, limit: int, clock: Callable[[], float] = time.monotonic) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self._clock = clock
        # Open connections, least recently active first.
        self._conns: OrderedDict[asyncio.BaseTransport, _Tracked] = OrderedDict()
        self.evicted = 0  # idle connections closed to make room
        self.refused = 0  # new connections closed because every one was busy
        self._logged = -_LOG_EVERY

    @property
    def open(self) -> int:
        return len(self._conns)

    def protocol_factory(self, make: Callable[[], Any]) -> Callable[[], asyncio.Protocol]:
        """Wrap the server's protocol factory (aiohttp's ``web.Server``)."""
        return lambda: _Tracked(self, make())

    def _admit(self, conn: _Tracked, transport: asyncio.BaseTransport) -> bool:
        if len(self._conns) >= self.limit:
            victim = next((c for c in self._conns.values() if c.busy == 0), None)
            if victim is None:
                self.refused += 1
                self._warn()
                return False
            self.evicted += 1
            self._warn()
            victim.close_idle()  # its connection_lost removes it, on the next loop turn
            if victim._transport is not None:
                self._conns.pop(victim._transport, None)
        self._conns[transport] = conn
        return True

    def _warn(self) -> None:
        now = self._clock()
        if now - self._logged >= _LOG_EVERY:
            self._logged = now
            log.warning(
                "connections_at_cap",
                max_connections=self.limit,
                idle_closed=self.evicted,
                refused=self.refused,
            )

    @web.middleware
    async def middleware(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        """Mark the connection busy until its response is sent, then drop the body.

        Outermost middleware: it must see the response every other one produced.
        """
        task = asyncio.current_task()
        conn = self._conns.get(request.transport) if request.transport is not None else None
        if conn is not None:
            conn.busy += 1
            if task is not None:
                task.add_done_callback(conn.request_done)
            else:  # pragma: no cover - a handler always runs in a task
                conn.busy -= 1
        response = await handler(request)
        if task is not None and type(response) is web.Response:
            # aiohttp's task for this request ends once the response is written.
            task.add_done_callback(lambda _t: _drop_body(response))
        return response


def _drop_body(response: web.Response) -> None:
    response.body = None


@dataclass(frozen=True, slots=True)
class Listener:
    """Where and how to listen: the socket options a server's settings decide."""

    host: str
    port: int
    ssl_context: ssl.SSLContext | None
    backlog: int
    reuse_port: bool
    keepalive_timeout: float
    shutdown_timeout: float


def serve(app: web.Application, cap: ConnectionCap, listen: Listener) -> None:
    """Run ``app`` until SIGTERM or SIGINT, then shut down gracefully (as ``run_app``)."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    main = loop.create_task(_serve(app, cap, listen))
    try:
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        try:
            if not main.done():
                main.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    loop.run_until_complete(main)
        finally:
            rest = asyncio.all_tasks(loop)
            for task in rest:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()


async def _serve(app: web.Application, cap: ConnectionCap, listen: Listener) -> None:
    runner = web.AppRunner(
        app,
        handle_signals=True,
        access_log=None,
        # Also the deadline for a new connection's first request headers (slowloris).
        keepalive_timeout=listen.keepalive_timeout,
        shutdown_timeout=listen.shutdown_timeout,
    )
    await runner.setup()
    listener: asyncio.Server | None = None
    try:
        server = runner.server
        assert server is not None
        listener = await asyncio.get_running_loop().create_server(
            cap.protocol_factory(server),
            listen.host,
            listen.port,
            ssl=listen.ssl_context,
            backlog=listen.backlog,
            reuse_port=listen.reuse_port or None,
        )
        await asyncio.Event().wait()  # until a signal ends the loop
    finally:
        if listener is not None:
            listener.close()  # stop accepting; the runner then drains the connections
        await runner.cleanup()
