"""A fake cache node on loopback, in its own thread, for SDK tests without PostgreSQL or Redis.

It speaks the node's public API shape: it echoes parameters back as a row, answers the
same query ``miss`` then ``ttl``, and turns a few magic SQL strings into failures.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from cache_edge.common.errors import QueryError, RateLimited, Unauthorized
from cache_edge.common.wire import (
    CONTENT_TYPES,
    decode_body,
    encode_body,
    request_format,
    response_format,
)

API_KEY = "ce_unit_test_key"
INFO = {
    "region": "test-region",
    "lastModified": "2024-05-01T12:00:00.250Z",
    "age": 1.5,
    "requestId": "req-1",
    "signature": "ab" * 16,
}


@dataclass
class Seen:
    """What the fake node received, for assertions."""

    headers: list[dict[str, str]] = field(default_factory=list)
    bodies: list[Any] = field(default_factory=list)
    peers: set[Any] = field(default_factory=set)
    cached: set[str] = field(default_factory=set)


def _pg_type(value: Any) -> str:
    return {bool: "bool", int: "int8", str: "text", float: "float8"}.get(type(value), "unknown")


def _answer(request: web.Request, obj: Any, status: int = 200, **headers: str) -> web.Response:
    fmt = response_format(request.headers.get("Accept"), "json")
    return web.Response(
        body=encode_body(obj, fmt),
        status=status,
        headers={"Content-Type": CONTENT_TYPES[fmt], **headers},
    )


def make_app(seen: Seen) -> web.Application:
    async def receive(request: web.Request) -> Any:
        seen.headers.append(dict(request.headers))
        seen.peers.add(request.transport.get_extra_info("peername") if request.transport else None)
        body = decode_body(
            await request.read(), request_format(request.headers.get("Content-Type"))
        )
        seen.bodies.append(body)
        if request.headers.get("Authorization") != f"Bearer {API_KEY}":
            raise Unauthorized("unknown API key")
        return body

    async def query(request: web.Request) -> web.Response:
        try:
            body = await receive(request)
            sql = body["sql"]
            if sql == "missing table":
                raise QueryError('relation "nope" does not exist', sqlstate="42P01")
            if sql == "rate limited":
                raise RateLimited("slow down", retry_after=2.0)
        except (QueryError, Unauthorized, RateLimited) as exc:
            headers = {"Retry-After": "7"} if exc.retry_after else {}
            return _answer(request, exc.to_body("req-err"), exc.status, **headers)
        if sql == "html":
            return web.Response(text="<h1>Bad Gateway</h1>", status=502, content_type="text/html")
        if sql == "slow":
            await asyncio.sleep(2)
        params = body.get("params", [])
        key = repr((sql, params))
        status = "none"
        if body.get("cacheStrategy"):
            status = "ttl" if key in seen.cached else "miss"
            seen.cached.add(key)
        columns = [{"name": f"c{i}", "type": _pg_type(p)} for i, p in enumerate(params)]
        return _answer(
            request,
            {
                "columns": columns,
                "rows": [params] if params else [],
                "rowCount": 1 if params else 3,
                "info": {**INFO, "cacheStatus": status},
            },
        )

    async def transaction(request: web.Request) -> web.Response:
        body = await receive(request)
        results = [
            {
                "columns": [{"name": "n", "type": "int8"}],
                "rows": [[len(s["params"])]],
                "rowCount": 1,
            }
            for s in body["statements"]
        ]
        return _answer(request, {"results": results, "info": {**INFO, "cacheStatus": "none"}})

    async def invalidate(request: web.Request) -> web.Response:
        await receive(request)
        return _answer(
            request,
            {"invalidationId": "inv-7", "appliedRegions": ["a", "b"], "pendingRegions": ["c"]},
        )

    app = web.Application()
    app.router.add_post("/v1/query", query)
    app.router.add_post("/v1/transaction", transaction)
    app.router.add_post("/v1/invalidate", invalidate)
    return app


@contextmanager
def running_fake_node() -> Iterator[tuple[str, Seen]]:
    """Serve the fake node on a free loopback port in a background thread."""
    seen = Seen()
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(make_app(seen))
    started = threading.Event()
    url: list[str] = []

    async def start() -> None:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        url.append(f"http://127.0.0.1:{port}")
        started.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    started.wait(10)
    try:
        yield url[0], seen
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
