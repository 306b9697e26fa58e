"""The origin's aiohttp app: thin handlers over the executor, and ``run_origin`` for the CLI."""

from __future__ import annotations

import asyncio
import functools
import signal
import ssl
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from cache_edge.common.answer import OriginAnswer, WriteInvalidation
from cache_edge.common.errors import CaptureUnavailable
from cache_edge.common.protocol import (
    ANY_TABLE_TAG,
    parse_changes_poll,
    parse_query,
    parse_transaction,
    table_tag,
)
from cache_edge.common.wire import WireFormat, encode_body, json_dumps
from cache_edge.pgwire.link import PATH as WIRE_PATH
from cache_edge.server.config import Settings
from cache_edge.server.httplog import quiet_client_errors
from cache_edge.server.logs import configure_logging, get_logger
from cache_edge.server.reload import ConfigWatcher, LiveSettings
from cache_edge.server.tasks import stop_tasks
from cache_edge.server.tls import reload_server_context, server_context
from origin.capture.change_log import CHANGES_CHANNEL, ChangeLog
from origin.capture.pgoutput import parse_lsn
from origin.capture.reader import Capture, CaptureSink
from origin.capture.slots import warn_orphan_slots
from origin.core.calls import Calls
from origin.core.databases import by_database
from origin.core.db_errors import translated
from origin.core.dependencies import Dependencies
from origin.core.executor import Executor
from origin.core.http import (
    LIVE,
    METRICS,
    REPLAY,
    SETTINGS,
    binary_response,
    error_boundary,
    read_signed,
)
from origin.core.listener import listen_forever
from origin.core.metrics import OriginMetrics
from origin.core.pool import TenantPools
from origin.core.replay import ReplayCache
from origin.core.results import encode_query_response, encode_transaction_response
from origin.purge_log.service import Purges
from origin.purge_log.table_purges import TablePurges
from origin.wire.endpoint import WireEndpoint

__all__ = ["EXECUTOR", "POOLS", "create_origin_app", "run_origin"]

log = get_logger("origin.core.app")

POOLS = web.AppKey("pools", TenantPools)
EXECUTOR = web.AppKey("executor", Executor)
PURGES = web.AppKey("purges", Purges)
CAPTURES = web.AppKey("captures", dict[str, Capture])
CHANGES = web.AppKey("changes", dict[str, ChangeLog])
TLS = web.AppKey("tls", ssl.SSLContext)  # the listener's context, when it speaks https
WIRE = web.AppKey("wire", WireEndpoint)  # the PostgreSQL door's sessions (origin.wire)

_READY_TIMEOUT = 2.0


async def handle_query(request: web.Request) -> web.Response:
    signed = await read_signed(request)
    body = await run_query(request.app, signed.tenant, signed.payload, signed.fmt)
    return binary_response(body, signed.fmt)


async def run_query(app: web.Application, tenant: str, payload: Any, fmt: WireFormat) -> bytes:
    """One statement for a tenant the caller proved: its answer body (HTTP or the link)."""
    query = parse_query(payload, app[SETTINGS].limits, origin=True)
    log.debug("query", tenant=tenant, sql=query.statement.sql[:60])
    purge_log = app[PURGES].log_for(tenant)

    async def watermark() -> int:
        return await purge_log.watermark(query.min_watermark)

    result = await app[EXECUTOR].query(tenant, query, watermark if query.read_only else None)
    deps = result.dependencies
    if deps is not None and deps.warnings:
        app[METRICS].count_nondeterministic(tenant)
    capture = app[CAPTURES].get(tenant)
    tables = deps.tables if deps else ()
    tags, warnings = _implicit_tags(capture, tenant, deps)
    invalidation = None
    if capture is not None:
        if query.read_only and capture.state == "not_set_up":
            warnings = (*warnings, _NOT_SET_UP)
        if not query.read_only and capture.invalidates(tenant):
            invalidation = await _write_invalidation(app, tenant, capture)
    answer = OriginAnswer(
        result.produced_at,
        watermark=result.watermark,
        tables=tables,
        warnings=warnings,
        invalidation=invalidation,
        tags=tags,
    )
    return encode_query_response(result.result, answer, fmt)


def _implicit_tags(
    capture: Capture | None, tenant: str, deps: Dependencies | None
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The tags a read's entries carry for automatic invalidation, and its warnings."""
    warnings = deps.warnings if deps else ()
    if capture is None or not capture.invalidates(tenant) or deps is None:
        return (), warnings
    # Implicit tags only where writes purge them; elsewhere they would cost every hit.
    if not deps.known:
        return (ANY_TABLE_TAG,), warnings  # invalidated by any write, rather than by none
    return tuple(table_tag(t) for t in deps.tables), warnings


_NOT_SET_UP = (
    "automatic invalidation is enabled for this tenant but not set up: writes will not "
    "purge this result (run cache-edge origin setup-auto-invalidation)"
)


async def _write_invalidation(
    app: web.Application, tenant: str, capture: Capture
) -> WriteInvalidation:
    """After a write through the origin committed: wait until the capture has turned it into
    a purge, and name the newest purge (it covers the write), so the caller can wait for
    every region. Never before commit: the WAL position is read after COMMIT returned."""
    with translated():
        async with app[POOLS].acquire(tenant) as conn:
            lsn = parse_lsn(await conn.fetchval("SELECT pg_current_wal_lsn()::text"))
        recorded = await capture.wait_processed(lsn, app[SETTINGS].origin.write_invalidation_wait)
        latest = await app[PURGES].log_for(tenant).latest()
    if latest is None:
        return WriteInvalidation(recorded)
    return WriteInvalidation(recorded, latest.id, latest.seq, latest.epoch)


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


async def handle_changes_poll(request: web.Request) -> web.Response:
    """Change-stream history after a cursor, long-polled by nodes (docs/change-streams.md)."""
    signed = await read_signed(request)
    changes = request.app[CHANGES].get(signed.tenant)
    capture = request.app[CAPTURES].get(signed.tenant)
    if changes is None or capture is None:
        raise CaptureUnavailable(
            "change streams are not enabled for this tenant (change_streams = true in its "
            "[[tenants]] entry, after cache-edge origin setup-auto-invalidation)"
        )
    if capture.state == "not_set_up":
        raise CaptureUnavailable(
            "change streams are enabled but not set up for this tenant: run "
            f"cache-edge origin setup-auto-invalidation --tenant {signed.tenant}"
        )
    poll = parse_changes_poll(signed.payload)
    with translated():
        answer = await changes.poll(poll.after, poll.tables, poll.ops, poll.wait, poll.limit)
    return binary_response(encode_body(answer, signed.fmt), signed.fmt)


async def handle_transaction(request: web.Request) -> web.Response:
    signed = await read_signed(request)
    body = await run_transaction(request.app, signed.tenant, signed.payload, signed.fmt)
    return binary_response(body, signed.fmt)


async def run_transaction(
    app: web.Application, tenant: str, payload: Any, fmt: WireFormat
) -> bytes:
    """One transaction for a tenant the caller proved: its answer body (HTTP or the link)."""
    tx = parse_transaction(payload, app[SETTINGS].limits)
    result = await app[EXECUTOR].transaction(tenant, tx)
    capture = app[CAPTURES].get(tenant)
    invalidation = None
    if capture is not None and capture.invalidates(tenant):
        invalidation = await _write_invalidation(app, tenant, capture)
    answer = OriginAnswer(result.produced_at, invalidation=invalidation)
    return encode_transaction_response(result.results, answer, fmt)


async def handle_healthz(_request: web.Request) -> web.Response:
    return binary_response(json_dumps({"status": "ok"}), "json")


async def handle_readyz(request: web.Request) -> web.Response:
    pools = request.app[POOLS]
    tenants = [t.id for t in request.app[SETTINGS].tenants]
    answers = await asyncio.gather(*(pools.ping(t, _READY_TIMEOUT) for t in tenants))
    failed = [t for t, ok in zip(tenants, answers, strict=True) if not ok]
    # The WAL capture's state is reported, not judged: a replica on standby is healthy, and
    # one whose capture is failing still serves queries (the metrics and logs say more).
    captures = {t: c.state for t, c in request.app[CAPTURES].items()}
    extra = {"capture": captures} if captures else {}
    if failed:
        body = {"status": "unavailable", "failed": failed, **extra}
        return binary_response(json_dumps(body), "json", 503)
    return binary_response(json_dumps({"status": "ok", **extra}), "json")


async def handle_metrics(request: web.Request) -> web.Response:
    body, content_type = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": content_type})


def _unique(captures: dict[str, Capture]) -> list[Capture]:
    """Each database's capture once (tenants of one database share it)."""
    return list({id(c): c for c in captures.values()}.values())


async def _pools_lifetime(app: web.Application) -> AsyncIterator[None]:
    app[PURGES].start()
    for capture in _unique(app[CAPTURES]):
        capture.start()
    settings = app[SETTINGS]
    listeners = [
        asyncio.create_task(
            listen_forever(
                settings.tenant(tenant).database_url,  # type: ignore[union-attr]
                CHANGES_CHANNEL,
                changes.notify_changed,
            )
        )
        for tenant, changes in app[CHANGES].items()
    ]
    listeners.append(asyncio.create_task(warn_orphan_slots(settings)))
    watcher = _watch_config(app)
    yield
    if watcher is not None:
        await watcher.stop()
    for capture in _unique(app[CAPTURES]):
        await capture.stop()
    await stop_tasks(listeners)
    await app[PURGES].stop()
    await app[POOLS].close()


async def _close_wire(app: web.Application) -> None:
    await app[WIRE].close(drain=app[SETTINGS].origin.shutdown_timeout)


async def _end_waits(app: web.Application) -> None:
    # Long-polls wait for seconds by design; a stopping origin answers them now, so the
    # graceful drain finishes at once instead of after the longest poll.
    app[PURGES].end_waits()
    for changes in app[CHANGES].values():
        changes.close()


def _captures(settings: Settings, app: web.Application) -> dict[str, Capture]:
    """The WAL capture of each opted-in tenant (automatic invalidation or streams): one per
    database, shared by every opted-in tenant of it, each with its own sinks."""
    out: dict[str, Capture] = {}
    metrics = app[METRICS]
    for group in by_database(settings.tenants):
        tenants = [t for t in group if t.captured]
        if not tenants:
            continue
        sinks: list[CaptureSink] = []
        for tenant in tenants:
            if tenant.auto_invalidation:
                sinks.append(
                    TablePurges(
                        tenant.id,
                        app[PURGES].log_for(tenant.id),
                        app[EXECUTOR].forget_dependencies,
                        metrics.capture_lag.labels(tenant.id).observe,
                    )
                )
            if tenant.change_streams:
                sinks.append(app[CHANGES][tenant.id])
        capture = Capture(
            tenants,
            settings.origin,
            sinks,
            want_rows=any(t.change_streams for t in tenants),
            invalidating=[t.id for t in tenants if t.auto_invalidation],
            acquire=functools.partial(app[POOLS].acquire, tenants[0].id),
        )
        out.update((t.id, capture) for t in tenants)
    return out


def _change_logs(settings: Settings, pools: TenantPools) -> dict[str, ChangeLog]:
    return {
        t.id: ChangeLog(
            t.id, functools.partial(pools.acquire, t.id), retention=settings.origin.stream_retention
        )
        for t in settings.tenants
        if t.change_streams
    }


def _watch_config(app: web.Application) -> ConfigWatcher | None:
    """Reload node secrets, tenants' max_concurrency and the TLS certificate without a restart.

    The node secrets need no callback: every request reads them from LIVE.
    """
    live = app[LIVE]

    def apply(settings: Settings) -> None:
        app[POOLS].update(settings)
        app[WIRE].revoke(settings.node_secrets)  # links proven with a withdrawn secret
        reload_server_context(app.get(TLS), settings.origin.tls_cert, settings.origin.tls_key)

    live.subscribe(apply)
    if live.current.source is None:
        return None
    watcher = ConfigWatcher(live)
    watcher.start()
    return watcher


def create_origin_app(settings: Settings) -> web.Application:
    """Build the app; database pools are created lazily on a tenant's first query."""
    pools = TenantPools(settings)
    captures: dict[str, Capture] = {}
    metrics = OriginMetrics(
        pools.stats, lambda: [status for c in _unique(captures) for status in c.status()]
    )
    # client_max_size backs up our own streaming cap in http.read_signed.
    app = web.Application(
        middlewares=[error_boundary(settings, metrics).middleware],
        client_max_size=settings.limits.max_body_bytes + 1,
    )
    app[SETTINGS] = settings
    app[LIVE] = LiveSettings(settings)
    app[REPLAY] = ReplayCache()
    app[POOLS] = pools
    app[METRICS] = metrics
    app[EXECUTOR] = Executor(pools, settings.origin, on_coalesced=metrics.count_coalesced)
    app[PURGES] = Purges(settings, pools)
    app[CHANGES] = _change_logs(settings, pools)
    captures.update(_captures(settings, app))
    app[CAPTURES] = captures
    tls = server_context(settings.origin.tls_cert, settings.origin.tls_key)
    if tls is not None:
        app[TLS] = tls
    live = app[LIVE]

    async def fence(tenant: str) -> int | None:
        """A write through the PostgreSQL door committed: wake the WAL capture now, and
        name the purge that covers the write (as /v1/query does), for the node's reads."""
        capture = captures.get(tenant)
        if capture is None or not capture.invalidates(tenant):
            return 0
        capture.wake()
        invalidation = await _write_invalidation(app, tenant, capture)
        if not invalidation.recorded:
            return None
        return invalidation.seq or 0

    app[WIRE] = WireEndpoint(lambda: live.current, app[REPLAY], fence, metrics)

    async def watermark(tenant: str, at_least: int) -> int:
        with translated():
            return await app[PURGES].log_for(tenant).watermark(at_least)

    def door_tags(tenant: str, deps: Dependencies) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return _implicit_tags(captures.get(tenant), tenant, deps)

    app[WIRE].serve_reads(watermark, app[EXECUTOR].statement_dependencies, door_tags)
    calls = Calls(
        lambda: live.current,
        {
            "/v1/query": ("query", functools.partial(run_query, app)),
            "/v1/transaction": ("transaction", functools.partial(run_transaction, app)),
        },
        metrics,
    )
    app[WIRE].serve_calls(calls.answer)
    app.on_shutdown.append(_close_wire)
    app.cleanup_ctx.append(_pools_lifetime)
    app.on_shutdown.append(_end_waits)
    app.router.add_post("/v1/query", handle_query)
    app.router.add_post("/v1/transaction", handle_transaction)
    app.router.add_post("/v1/invalidations", handle_invalidate)
    app.router.add_post("/v1/invalidations/status", handle_invalidation_status)
    app.router.add_post("/v1/invalidations/poll", handle_invalidation_poll)
    app.router.add_post("/v1/changes/poll", handle_changes_poll)
    app.router.add_get(WIRE_PATH, app[WIRE].handle)
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
