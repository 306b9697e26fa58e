"""The origin's aiohttp app: thin handlers over the executor, and ``run_origin`` for the CLI."""

from __future__ import annotations

import asyncio
import signal
import ssl
from collections.abc import AsyncIterator

from aiohttp import web

from cache_edge.config import Settings
from cache_edge.httplog import quiet_client_errors
from cache_edge.logs import configure_logging, get_logger
from cache_edge.protocol import parse_query, parse_transaction
from cache_edge.reload import ConfigWatcher, LiveSettings
from cache_edge.tls import reload_server_context, server_context
from cache_edge.wire import encode_body, json_dumps
from origin.executor import Executor
from origin.http import (
    LIVE,
    METRICS,
    REPLAY,
    SETTINGS,
    binary_response,
    middleware,
    read_signed,
)
from origin.metrics import OriginMetrics
from origin.pool import TenantPools
from origin.purges import Purges
from origin.replay import ReplayCache
from origin.results import encode_query_response, encode_transaction_response

__all__ = ["EXECUTOR", "POOLS", "create_origin_app", "run_origin"]

log = get_logger("origin.app")

POOLS = web.AppKey("pools", TenantPools)
EXECUTOR = web.AppKey("executor", Executor)
PURGES = web.AppKey("purges", Purges)
TLS = web.AppKey("tls", ssl.SSLContext)  # the listener's context, when it speaks https

_READY_TIMEOUT = 2.0


async def handle_query(request: web.Request) -> web.Response:
    signed = await read_signed(request)
    query = parse_query(signed.payload, request.app[SETTINGS].limits, origin=True)
    log.debug("query", tenant=signed.tenant, sql=query.statement.sql[:60])
    purge_log = request.app[PURGES].log_for(signed.tenant)

    async def watermark() -> int:
        return await purge_log.watermark(query.min_watermark)

    result = await request.app[EXECUTOR].query(
        signed.tenant, query, watermark if query.read_only else None
    )
    deps = result.dependencies
    if deps is not None and deps.warnings:
        request.app[METRICS].count_nondeterministic(signed.tenant)
    body = encode_query_response(
        result.result,
        result.produced_at,
        signed.fmt,
        result.watermark,
        deps.tables if deps else (),
        deps.warnings if deps else (),
    )
    return binary_response(body, signed.fmt)


async def handle_invalidate(request: web.Request) -> web.Response:
    signed = await read_signed(request)
    answer = await request.app[PURGES].record(signed.tenant, signed.payload)
    return binary_response(encode_body(answer, signed.fmt), signed.fmt)


async def handle_invalidation_status(request: web.Request) -> web.Response:
    signed = await read_signed(request)
    answer = await request.app[PURGES].status(signed.tenant, signed.payload)
    return binary_response(encode_body(answer, signed.fmt), signed.fmt)


async def handle_invalidation_poll(request: web.Request) -> web.Response:
    signed = await read_signed(request)
    answer = await request.app[PURGES].poll(signed.tenant, signed.payload)
    return binary_response(encode_body(answer, signed.fmt), signed.fmt)


async def handle_transaction(request: web.Request) -> web.Response:
    signed = await read_signed(request)
    tx = parse_transaction(signed.payload, request.app[SETTINGS].limits)
    result = await request.app[EXECUTOR].transaction(signed.tenant, tx)
    body = encode_transaction_response(result.results, result.produced_at, signed.fmt)
    return binary_response(body, signed.fmt)


async def handle_healthz(_request: web.Request) -> web.Response:
    return binary_response(json_dumps({"status": "ok"}), "json")


async def handle_readyz(request: web.Request) -> web.Response:
    pools = request.app[POOLS]
    tenants = [t.id for t in request.app[SETTINGS].tenants]
    answers = await asyncio.gather(*(pools.ping(t, _READY_TIMEOUT) for t in tenants))
    failed = [t for t, ok in zip(tenants, answers, strict=True) if not ok]
    if failed:
        return binary_response(json_dumps({"status": "unavailable", "failed": failed}), "json", 503)
    return binary_response(json_dumps({"status": "ok"}), "json")


async def handle_metrics(request: web.Request) -> web.Response:
    body, content_type = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": content_type})


async def _pools_lifetime(app: web.Application) -> AsyncIterator[None]:
    app[PURGES].start()
    watcher = _watch_config(app)
    yield
    if watcher is not None:
        await watcher.stop()
    await app[PURGES].stop()
    await app[POOLS].close()


def _watch_config(app: web.Application) -> ConfigWatcher | None:
    """Reload node secrets, tenants' max_concurrency and the TLS certificate without a restart.

    The node secrets need no callback: every request reads them from LIVE.
    """
    live = app[LIVE]

    def apply(settings: Settings) -> None:
        app[POOLS].update(settings)
        reload_server_context(app.get(TLS), settings.origin.tls_cert, settings.origin.tls_key)

    live.subscribe(apply)
    if live.current.source is None:
        return None
    watcher = ConfigWatcher(live)
    watcher.start()
    return watcher


def create_origin_app(settings: Settings) -> web.Application:
    """Build the app; database pools are created lazily on a tenant's first query."""
    # client_max_size backs up our own streaming cap in http.read_signed.
    app = web.Application(
        middlewares=[middleware], client_max_size=settings.limits.max_body_bytes + 1
    )
    pools = TenantPools(settings)
    metrics = OriginMetrics(pools.stats)
    app[SETTINGS] = settings
    app[LIVE] = LiveSettings(settings)
    app[REPLAY] = ReplayCache()
    app[POOLS] = pools
    app[METRICS] = metrics
    app[EXECUTOR] = Executor(pools, settings.origin, on_coalesced=metrics.count_coalesced)
    app[PURGES] = Purges(settings, pools)
    tls = server_context(settings.origin.tls_cert, settings.origin.tls_key)
    if tls is not None:
        app[TLS] = tls
    app.cleanup_ctx.append(_pools_lifetime)
    app.router.add_post("/v1/query", handle_query)
    app.router.add_post("/v1/transaction", handle_transaction)
    app.router.add_post("/v1/invalidations", handle_invalidate)
    app.router.add_post("/v1/invalidations/status", handle_invalidation_status)
    app.router.add_post("/v1/invalidations/poll", handle_invalidation_poll)
    app.router.add_get("/healthz", handle_healthz)
    app.router.add_get("/readyz", handle_readyz)
    app.router.add_get("/metrics", handle_metrics)
    return app


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM/SIGINT (or ``stop``), then drain in-flight requests and close pools."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    app = create_origin_app(settings)
    runner = web.AppRunner(
        app,
        access_log=None,
        shutdown_timeout=settings.origin.shutdown_timeout,
        # Also the deadline for a new connection's first request headers (slowloris).
        keepalive_timeout=settings.origin.keepalive_timeout,
    )
    await runner.setup()
    try:
        listen = settings.origin.listen
        reuse = settings.origin.reuse_port or None
        site = web.TCPSite(
            runner,
            listen.host,
            listen.port,
            reuse_port=reuse,
            ssl_context=app.get(TLS),
            backlog=settings.origin.backlog,  # aiohttp's 128 overflows in a connection storm
        )
        await site.start()
        log.info("origin_listening", listen=str(listen), tenants=len(settings.tenants))
        await stop.wait()
        log.info("origin_stopping")
    finally:
        await runner.cleanup()


def run_origin(settings: Settings) -> None:
    """Entry point of ``cache-edge origin``: logging, uvloop, serve until SIGTERM."""
    configure_logging(settings.log_level, settings.log_format, service="cache-edge-origin")
    quiet_client_errors()
    try:
        import uvloop
    except ImportError:  # uvloop is optional (not on Windows)
        asyncio.run(serve(settings))
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(settings))
