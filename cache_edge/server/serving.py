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
* **Idle connections hold no large answer.** aiohttp keeps the last request and response
  of a keep-alive connection referenced until the next request arrives, body included:
  a connection that received a 1 MB result and then idles would hold 1 MB. The HTTP
  error boundary every request passes through (``http_errors.py``) drops a large body
  once the response is sent.

Idle memory per connection is then about what aiohttp and the event loop need (9 KB
measured, docs/decisions.md); ``keepalive_timeout`` closes idle connections anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from cache_edge.server.logs import get_logger

__all__ = ["ConnectionCap", "Listener", "raise_fd_limit", "serve"]

log = get_logger(__name__)

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


class _Refused(asyncio.Protocol):
    """A connection turned away at the cap: closed as soon as it is made."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class ConnectionCap:
    """At most ``limit`` open connections; at the cap the longest-idle one makes room.

    It reads aiohttp's own bookkeeping (the server's connection table, each handler's
    "request in progress" flag and keep-alive deadline) only when a connection arrives at
    the cap, so requests pay nothing for it (a per-request wrapper cost ~10 us per hit).
    tests/unit/server/test_serving.py fails loudly if aiohttp renames what it reads.
    """

    def __init__(self, limit: int, clock: Callable[[], float] = time.monotonic) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self._clock = clock
        self.evicted = 0  # idle connections closed to make room
        self.refused = 0  # new connections closed because every one was busy
        self._logged = -_LOG_EVERY
        self._server: Any = None

    @property
    def open(self) -> int:
        return len(self._server._connections) if self._server is not None else 0

    def protocol_factory(self, server: Any) -> Callable[[], asyncio.Protocol]:
        """Wrap the server's protocol factory (aiohttp's ``web.Server``)."""
        self._server = server

        def make() -> asyncio.Protocol:
            if len(server._connections) >= self.limit and not self._make_room(server):
                return _Refused()
            return server()  # type: ignore[no-any-return]

        return make

    def _make_room(self, server: Any) -> bool:
        # Idle: no request in progress. Longest idle: the earliest keep-alive deadline.
        idle = [h for h in server._connections if not h._request_in_progress]
        if not idle:
            self.refused += 1
            self._warn()
            return False
        victim = min(idle, key=lambda h: h._next_keepalive_close_time)
        self.evicted += 1
        self._warn()
        victim.force_close()
        server._connections.pop(victim, None)  # its connection_lost comes a turn later
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
        # A header up to 64 KiB reaches the handler (aiohttp's own limit is 8 KiB), so an
        # oversized one (a huge Neon-Connection-String) gets the door's own clear error.
        max_field_size=65536,
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
