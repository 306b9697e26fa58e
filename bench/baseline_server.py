"""The hit scenario's baselines: bare aiohttp handlers on uvloop, like the node.

``--mode fixed`` answers every POST with the same bytes (the node's own hit answer);
``--mode redis`` does one redis-py (hiredis) GET per request and answers its value.
``--mode fixed-lowlevel`` answers like ``fixed`` from aiohttp's low-level ``web.Server``:
no Application, router or middleware, the leanest path inside aiohttp (what a node
built on it could save is the difference with ``fixed``). All read the request body, as
the node must. Run: ``python -m bench.baseline_server``.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

__all__ = ["create_app", "main"]

BODY = web.AppKey("body", bytes)
CONTENT_TYPE = web.AppKey("content_type", str)


async def handle_fixed(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=request.app[BODY], headers={"Content-Type": request.app[CONTENT_TYPE]})


async def handle_healthz(_request: web.Request) -> web.Response:
    return web.Response(text="ok")


def create_app(args: argparse.Namespace) -> web.Application:
    app = web.Application()
    app[CONTENT_TYPE] = args.content_type
    app.router.add_get("/healthz", handle_healthz)
    if args.mode == "fixed":
        app[BODY] = Path(args.body_file).read_bytes()
        app.router.add_post(args.path, handle_fixed)
        return app

    import redis.asyncio as aioredis

    # The node's Redis tier uses the same pool kind and size (cache_edge.node.tiers.redis).
    pool = aioredis.BlockingConnectionPool.from_url(
        args.redis_url, max_connections=100, timeout=0.5, socket_timeout=0.5
    )
    client = aioredis.Redis(connection_pool=pool)
    key = args.key

    async def handle_redis(request: web.Request) -> web.Response:
        await request.read()
        value = await client.get(key)
        return web.Response(body=value or b"", headers={"Content-Type": args.content_type})

    async def lifetime(_app: web.Application) -> AsyncIterator[None]:
        yield
        await client.aclose()

    app.cleanup_ctx.append(lifetime)
    app.router.add_post(args.path, handle_redis)
    return app


async def serve_lowlevel(args: argparse.Namespace, body: bytes) -> None:
    """The fixed body from aiohttp's low-level server: one handler, no Application."""
    headers = {"Content-Type": args.content_type}

    async def handle(request: web.BaseRequest) -> web.Response:
        if request.method == "GET":  # /healthz, for the harness
            return web.Response(text="ok")
        await request.read()
        return web.Response(body=body, headers=headers)

    server = web.Server(handle, access_log=None)
    await asyncio.get_running_loop().create_server(server, "127.0.0.1", args.port)
    await asyncio.Event().wait()  # until the harness stops the process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mode", choices=("fixed", "fixed-lowlevel", "redis"), required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/v1/query")
    parser.add_argument("--body-file", help="fixed mode: the bytes to answer")
    parser.add_argument("--redis-url", help="redis mode: where the value is")
    parser.add_argument("--key", help="redis mode: the key to GET")
    parser.add_argument("--content-type", default="application/msgpack")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - the node falls back the same way
        pass
    if args.mode == "fixed-lowlevel":
        asyncio.run(serve_lowlevel(args, Path(args.body_file).read_bytes()))
        return
    web.run_app(create_app(args), host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
