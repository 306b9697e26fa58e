"""serving.ConnectionCap on a real aiohttp server over loopback sockets: which connection
makes room at the cap, and that requests pay nothing for it.

tests/integration/test_floods.py holds thousands of real connections against a node.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from aiohttp.web_protocol import RequestHandler

from cache_edge.server.http_errors import ErrorBoundary
from cache_edge.server.serving import ConnectionCap

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def serving(cap: ConnectionCap, handler: Handler) -> AsyncIterator[int]:
    server = web.Server(handler)
    loop = asyncio.get_running_loop()
    listener = await loop.create_server(cap.protocol_factory(server), "127.0.0.1", 0)
    try:
        yield listener.sockets[0].getsockname()[1]
    finally:
        listener.close()
        await server.shutdown(0.1)


async def request(port: int, conn: tuple[Any, Any] | None = None) -> tuple[Any, Any, bytes]:
    """One keep-alive GET; returns the connection (reader, writer) and the status line."""
    reader, writer = conn or await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    status = await asyncio.wait_for(reader.readline(), 5)
    while (await reader.readline()) not in (b"\r\n", b""):
        pass
    await reader.readexactly(2)  # the body: "ok"
    return reader, writer, status


async def closed(reader: Any) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), 2) == b""
    except ConnectionError:
        return True
    except TimeoutError:
        return False  # still open


async def ok(_request: web.BaseRequest) -> web.Response:
    return web.Response(text="ok")


async def test_aiohttp_still_has_what_the_cap_reads() -> None:
    """The cap reads aiohttp's private bookkeeping; say so loudly if aiohttp changes it."""
    server = web.Server(ok)
    assert isinstance(server._connections, dict), "aiohttp's web.Server._connections changed"
    slots = set(getattr(RequestHandler, "__slots__", ())) | set(vars(RequestHandler))
    for name in ("_request_in_progress", "_next_keepalive_close_time", "force_close"):
        assert name in slots, f"aiohttp's RequestHandler.{name} is gone: update ConnectionCap"


async def test_under_the_cap_every_connection_is_served() -> None:
    cap = ConnectionCap(3)
    async with serving(cap, ok) as port:
        conns = [await request(port) for _ in range(3)]
        assert all(status.startswith(b"HTTP/1.1 200") for _, _, status in conns)
        assert cap.open == 3 and cap.evicted == cap.refused == 0
        for _, writer, _ in conns:
            writer.close()


async def test_at_the_cap_the_longest_idle_connection_makes_room() -> None:
    cap = ConnectionCap(3)
    async with serving(cap, ok) as port:
        a = await request(port)
        b = await request(port)
        c = await request(port)
        await asyncio.sleep(0.01)
        b = await request(port, (b[0], b[1]))  # b and then c were active after a
        c = await request(port, (c[0], c[1]))
        d = await request(port)  # the fourth: a, idle longest, makes room
        assert d[2].startswith(b"HTTP/1.1 200")
        assert await closed(a[0])
        assert (await request(port, (b[0], b[1])))[2].startswith(b"HTTP/1.1 200")
        assert cap.evicted == 1 and cap.refused == 0
        for conn in (b, c, d):
            conn[1].close()


async def test_busy_connections_are_never_closed_and_a_newcomer_is_refused() -> None:
    release = asyncio.Event()

    async def slow(_request: web.BaseRequest) -> web.Response:
        await release.wait()
        return web.Response(text="ok")

    cap = ConnectionCap(2)
    async with serving(cap, slow) as port:
        busy = [asyncio.create_task(request(port)) for _ in range(2)]
        await asyncio.sleep(0.2)  # both requests are in progress
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await closed(reader), "a newcomer at the cap with every connection busy"
        writer.close()
        release.set()
        for task in busy:
            _, w, status = await task
            assert status.startswith(b"HTTP/1.1 200")
            w.close()
        assert cap.refused == 1 and cap.evicted == 0


@pytest.mark.parametrize(("size", "kept"), [(100_000, False), (1_000, True)])
async def test_a_large_answer_is_not_kept_by_an_idle_connection(size: int, kept: bool) -> None:
    boundary = ErrorBoundary("test", count=lambda _code: None, max_body_bytes=1 << 20)
    body = b"x" * size

    async def handler(_request: web.Request) -> web.Response:
        return web.Response(body=body)

    async def one() -> web.StreamResponse:
        return await boundary.middleware(make_mocked_request("GET", "/"), handler)

    task = asyncio.create_task(one())
    response = await task
    await asyncio.sleep(0)  # the task's done callbacks run
    assert isinstance(response, web.Response)
    assert (response.body is not None) is kept
