"""serving.ConnectionCap: which connection makes room at the cap, and what an idle one keeps.

Fake transports and a fake aiohttp protocol; tests/integration/test_floods.py holds
real sockets against a real node.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from cache_edge.server.serving import ConnectionCap


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    def close(self) -> None:
        self.closed = True


class FakeHandler:
    """Stands in for aiohttp's RequestHandler."""

    def __init__(self) -> None:
        self.transport: FakeTransport | None = None
        self.received: list[bytes] = []
        self.lost = False

    def connection_made(self, transport: FakeTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True

    def force_close(self) -> None:
        assert self.transport is not None
        self.transport.close()


def connect(cap: ConnectionCap) -> tuple[Any, FakeHandler, FakeTransport]:
    handlers: list[FakeHandler] = []

    def make() -> FakeHandler:
        handlers.append(FakeHandler())
        return handlers[-1]

    proto = cap.protocol_factory(make)()
    transport = FakeTransport()
    proto.connection_made(transport)
    return proto, handlers[0], transport


def test_under_the_cap_every_connection_is_handed_to_aiohttp() -> None:
    cap = ConnectionCap(3)
    conns = [connect(cap) for _ in range(3)]
    assert cap.open == 3
    assert all(h.transport is t and not t.closed for _, h, t in conns)


def test_at_the_cap_the_longest_idle_connection_makes_room() -> None:
    cap = ConnectionCap(3)
    first, second, third = (connect(cap) for _ in range(3))
    first[0].data_received(b"GET / HTTP/1.1\r\n\r\n")  # activity: now the most recent
    fourth = connect(cap)
    assert second[2].closed  # idle longest
    assert not first[2].closed and not third[2].closed and not fourth[2].closed
    assert first[1].received == [b"GET / HTTP/1.1\r\n\r\n"]
    assert cap.open == 3 and cap.evicted == 1
    second[0].connection_lost(None)  # the close completes
    assert second[1].lost and cap.open == 3


def test_busy_connections_are_never_closed_for_room_and_a_newcomer_is_refused() -> None:
    cap = ConnectionCap(2)
    a, b = connect(cap), connect(cap)
    a[0].busy = b[0].busy = 1  # both answering a request
    proto, handler, transport = connect(cap)
    assert transport.closed and handler.transport is None  # aiohttp never saw it
    assert not a[2].closed and not b[2].closed
    assert cap.refused == 1 and cap.open == 2
    proto.data_received(b"late bytes")  # ignored, not forwarded
    proto.connection_lost(None)
    assert handler.received == [] and not handler.lost
    b[0].busy = 0
    connect(cap)
    assert b[2].closed and not a[2].closed


async def test_the_middleware_marks_a_request_busy_until_sent_and_drops_the_body() -> None:
    cap = ConnectionCap(2)
    proto, _, transport = connect(cap)
    seen: list[int] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(proto.busy)
        return web.Response(body=b"x" * 100_000)

    async def one_request() -> web.StreamResponse:
        # aiohttp runs each request in a task that ends once the response is written.
        request = make_mocked_request("GET", "/", transport=transport)
        return await cap.middleware(request, handler)

    response = await asyncio.create_task(one_request())
    await asyncio.sleep(0)  # done callbacks run
    assert seen == [1] and proto.busy == 0
    assert isinstance(response, web.Response) and response.body is None
