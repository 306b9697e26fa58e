"""The regional node's HTTP face: thin aiohttp handlers over the QueryCache.

Handlers authenticate, decode, validate and encode; every decision about
caching lives in :mod:`cache_edge.node.read_path`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cache_edge.common.answer import QUERY_CORE, TRANSACTION_CORE, CoreKeys, iso_ms, read_answer
from cache_edge.common.protocol import parse_invalidate, parse_query_body, parse_transaction
from cache_edge.common.wire import (
    CONTENT_TYPES,
    WireFormat,
    decode_body,
    encode_body,
    request_format,
    response_format,
)
from cache_edge.node.applier import Applier
from cache_edge.node.auth import ApiKeys, Principal
from cache_edge.node.entry import result_json, result_msgpack
from cache_edge.node.metrics import NodeMetrics
from cache_edge.node.origin_client import OriginClient
from cache_edge.node.origin_guard import OriginGuard
from cache_edge.node.pgdoor.caching import WireOrigin
from cache_edge.node.pgdoor.door import PgDoor
from cache_edge.node.pgdoor.rules import RuleBook
from cache_edge.node.pgdoor.session import DoorCache
from cache_edge.node.purge_mirror import PurgeMirror
from cache_edge.node.ratelimit import RateLimiter
from cache_edge.node.read_path import Answer, QueryCache
from cache_edge.node.sqlhttp.door import SqlDoor
from cache_edge.node.stream_http import serve_stream
from cache_edge.node.streams import StreamHub
from cache_edge.node.tiers.memory import MemoryTier
from cache_edge.node.tiers.redis import RedisTier, TierUnavailable
from cache_edge.server.bodies import read_capped
from cache_edge.server.config import Settings
from cache_edge.server.http_errors import REQUEST_ID, ErrorBoundary
from cache_edge.server.httplog import quiet_client_errors
from cache_edge.server.logs import get_logger
from cache_edge.server.reload import ConfigWatcher, LiveSettings
from cache_edge.server.serving import ConnectionCap, Listener, raise_fd_limit, serve
from cache_edge.server.tls import client_context, reload_server_context, server_context

__all__ = ["create_node_app", "run_node"]

log = get_logger(__name__)

SETTINGS = web.AppKey("settings", Settings)
CACHE = web.AppKey("cache", QueryCache)
TIER = web.AppKey("tier", RedisTier)
ORIGIN = web.AppKey("origin", OriginClient)
KEYS = web.AppKey("keys", ApiKeys)
METRICS = web.AppKey("metrics", NodeMetrics)
APPLIER = web.AppKey("applier", Applier)
LIVE = web.AppKey("live", LiveSettings)  # the reloadable part of the settings, current
LIMITER = web.AppKey("limiter", RateLimiter)
TLS = web.AppKey("tls", ssl.SSLContext)  # the listener's context, when it speaks https
STREAMS = web.AppKey("streams", StreamHub)
CONNECTIONS = web.AppKey("connections", ConnectionCap)
DOOR = web.AppKey("door", PgDoor)  # the PostgreSQL door, when node.pg_listen is set
SQL = web.AppKey("sql", SqlDoor)  # the Neon-compatible door (POST /sql)

_FMT: web.RequestKey[WireFormat] = web.RequestKey("wire_format")  # the body's, once read


async def _authenticate(request: web.Request) -> Principal:
    """Who is calling (or Unauthorized), charged one token of its key's rate limit."""
    who = request.app[KEYS].authenticate(request.headers.get("Authorization"))
    limit = request.app[LIVE].current.rate_limit_for(who.tenant)
    await request.app[LIMITER].check(who, limit)
    return who


async def _read_raw(request: web.Request) -> bytes:
    settings = request.app[SETTINGS]
    request[_FMT] = request_format(request.headers.get("Content-Type"))
    return await read_capped(request, settings.limits.max_body_bytes, settings.node.body_timeout)


async def _read_body(request: web.Request) -> Any:
    return decode_body(await _read_raw(request), request[_FMT])


def _info(request: web.Request, answer: Answer, age: float) -> dict[str, Any]:
    """How the node obtained an answer (``info`` in every query and transaction answer)."""
    info: dict[str, Any] = {
        "cacheStatus": answer.status,
        "region": request.app[SETTINGS].node.region,
        "lastModified": iso_ms(answer.produced_at_ms),
        # To the millisecond; round(age, 3) gives the same and costs 4 times as much.
        "age": round(age * 1000) / 1000,
        "requestId": request[REQUEST_ID],
        "signature": answer.signature,
    }
    if answer.error:
        info["error"] = answer.error
    if answer.cache_error:
        info["cacheError"] = answer.cache_error
    if answer.warnings:
        info["warnings"] = list(answer.warnings)
    if answer.invalidation:
        info["invalidation"] = answer.invalidation
    return info


def _answer_response(
    request: web.Request,
    answer: Answer,
    core_keys: CoreKeys = QUERY_CORE,
    tenant: str | None = None,
) -> web.Response:
    """The origin's core, spliced as it is, and the node's ``info``.

    ``tenant``: the answer came from that tenant's cache, so a JSON answer takes the
    core's JSON members from the hot tier (made once per entry held there), and a hit
    does no per-row work in either format."""
    age = answer.age(time.time())
    info = _info(request, answer, age)
    fmt: WireFormat = response_format(request.headers.get("Accept"), request[_FMT])
    if fmt == "msgpack":
        body = result_msgpack(answer.core, info, core_keys)
    else:
        members = None
        if tenant is not None and answer.signature is not None:
            memory = request.app[CACHE].memory
            if memory is not None:
                members = memory.json_members(tenant, answer.signature, answer.core, core_keys)
        body = result_json(answer.core, info, core_keys, members)
    return web.Response(
        body=body,
        headers={
            "Content-Type": CONTENT_TYPES[fmt],
            "X-Cache-Status": answer.status,
            "Age": str(int(age)),
            "X-Request-Id": info["requestId"],
        },
    )


async def handle_query(request: web.Request) -> web.Response:
    started = time.perf_counter()
    tenant = (await _authenticate(request)).tenant
    body = await _read_raw(request)
    req = parse_query_body(body, request[_FMT], request.app[SETTINGS].limits)
    answer = await request.app[CACHE].query(tenant, req, request[REQUEST_ID])
    response = _answer_response(request, answer, tenant=tenant)
    metrics = request.app[METRICS]
    metrics.answered(answer.status, time.perf_counter() - started)
    if answer.cache_error:
        metrics.redis_errors.inc()
    return response


async def handle_transaction(request: web.Request) -> web.Response:
    tenant = (await _authenticate(request)).tenant
    tx = parse_transaction(await _read_body(request), request.app[SETTINGS].limits)
    result = await request.app[ORIGIN].transaction(
        tenant, tx.statements, tx.isolation, request[REQUEST_ID]
    )
    core, said = read_answer(result.body, TRANSACTION_CORE)
    inv = said.invalidation.to_wire() if said.invalidation is not None else None
    answer = Answer(core, "none", said.produced_at, invalidation=inv)
    request.app[METRICS].requests.labels("none").inc()
    return _answer_response(request, answer, TRANSACTION_CORE)


def _plain_response(request: web.Request, body: dict[str, Any], status: int = 200) -> web.Response:
    fmt = response_format(request.headers.get("Accept"), request.get(_FMT, "json"))
    return web.Response(
        status=status,
        body=encode_body(body, fmt),
        headers={"Content-Type": CONTENT_TYPES[fmt], "X-Request-Id": request[REQUEST_ID]},
    )


async def handle_invalidate(request: web.Request) -> web.Response:
    tenant = (await _authenticate(request)).tenant
    inv = parse_invalidate(await _read_body(request))
    result = await request.app[ORIGIN].invalidate(
        tenant, inv.tags, inv.purge_all, inv.wait, request[REQUEST_ID], tables=inv.tables
    )
    return _plain_response(request, result)


async def handle_invalidation_status(request: web.Request) -> web.Response:
    tenant = (await _authenticate(request)).tenant
    result = await request.app[ORIGIN].invalidation_status(
        tenant, request.match_info["id"], request[REQUEST_ID]
    )
    return _plain_response(request, result)


async def handle_stream(request: web.Request) -> web.StreamResponse:
    tenant = (await _authenticate(request)).tenant
    return await serve_stream(request, request.app[STREAMS], tenant, request.app[SETTINGS].node)


async def handle_healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "region": request.app[SETTINGS].node.region})


async def handle_readyz(request: web.Request) -> web.Response:
    redis_ok = await request.app[TIER].ping()
    origin_ok = await request.app[ORIGIN].ping()
    ready = redis_ok and origin_ok
    body = {"ready": ready, "redis": redis_ok, "origin": origin_ok}
    if DOOR in request.app:
        door = request.app[DOOR]
        body["postgres"] = door.listening
        ready = ready and door.listening
        body["ready"] = ready
    return web.json_response(body, status=200 if ready else 503)


async def handle_metrics(request: web.Request) -> web.Response:
    metrics = request.app[METRICS]
    stats = request.app[CACHE].stats
    metrics.origin_calls.set(stats.origin_calls)
    metrics.coalesced.labels("process").set(stats.coalesced_local)
    metrics.coalesced.labels("region").set(stats.coalesced_region)
    metrics.refreshes.set(stats.refreshes)
    metrics.memory_hits.set(stats.memory_hits)
    metrics.unchecked.labels("no_sync_lease").set(stats.unvouched_fills)
    metrics.unchecked.labels("late_joiner").set(stats.unchecked_refetches)
    metrics.resyncs.set(request.app[APPLIER].resyncs)
    if STREAMS in request.app:
        hub = request.app[STREAMS]
        for tenant, (subscribers, received) in hub.stats().items():
            metrics.stream_subscribers.labels(tenant).set(subscribers)
            metrics.stream_events.labels(tenant).set(received)
        metrics.stream_dropped.set(hub.dropped)
    if DOOR in request.app:
        door = request.app[DOOR]
        metrics.pg_connections.set(door.stats.connections)
        metrics.pg_accepted.set(door.stats.accepted)
        metrics.pg_logins_failed.set(door.stats.logins_failed)
        metrics.pg_cancels.set(door.stats.cancels)
        metrics.pg_link_up.set(1 if door.link_up else 0)
    memory = request.app[CACHE].memory
    if memory is not None:
        metrics.memory_bytes.set(memory.used_bytes)
        metrics.memory_entries.set(len(memory))
    return web.Response(
        body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    node = settings.node
    tier = RedisTier(
        node.redis_url,
        timeout=node.redis_timeout,
        max_connections=node.redis_max_connections,
        retry_after=node.redis_retry_after,
        cluster=node.redis_cluster,
    )
    origin = OriginClient(
        node.origin_url,
        settings.node_secret,
        timeout=node.origin_timeout,
        connect_timeout=node.origin_connect_timeout,
        max_connections=node.origin_max_connections,
        ssl_context=client_context(node.origin_ca),
        guard=OriginGuard(
            max_waiting=node.origin_max_waiting,
            failures=node.origin_breaker_failures,
            probe_interval=node.origin_probe_interval,
        ),
    )
    limiter = RateLimiter(
        node.redis_url,
        timeout=node.redis_timeout,
        retry_after=node.redis_retry_after,
        cluster=node.redis_cluster,
    )
    app[TIER] = tier
    app[ORIGIN] = origin
    app[LIMITER] = limiter
    # Every Redis client is set up before the node serves (issue 13, H), within a bound:
    # Redis is an accelerator, so a node whose Redis is down starts and falls back.
    budget = max(1.0, 4 * node.redis_timeout)
    redis_ready = await _ready(asyncio.gather(tier.connect(), limiter.connect()), budget)
    memory = MemoryTier(node.memory_cache_mb * 1024 * 1024)
    mirror = PurgeMirror(node.region, uuid.uuid4().hex[:12], tier, memory)
    if node.memory_cache_mb:
        mirror.start()
        redis_ready = redis_ready and await mirror.subscribed(budget)
    if not redis_ready:
        log.warning("redis_not_ready", region=node.region, waited=budget)
    app[CACHE] = QueryCache(node, tier, origin, memory=memory, mirror=mirror)
    door_tiers = (tier, memory, mirror)
    applier = Applier(
        node.region,
        [t.id for t in settings.tenants],
        tier,
        origin,
        sync_grace=node.sync_grace,
        memory_lease=node.memory_lease,
    )
    app[APPLIER] = applier
    applier.start()
    if redis_ready:
        # Until the region's purge state is in sync, misses are answered but not stored
        # (nothing could vouch for them later): serve from a synced state from the start.
        wait = min(node.sync_grace, 3.0)
        if not await _synced(tier, [t.id for t in settings.tenants], wait):
            log.warning("purge_state_not_synced", region=node.region, waited=wait)
    app[STREAMS] = StreamHub(origin, buffer=node.stream_buffer, ring=node.stream_ring)
    watcher = _watch_config(app, origin)
    door = await _open_wire_doors(app, *door_tiers)
    log.info("node_started", region=node.region, listen=str(node.listen))
    yield
    if door is not None:
        await door.stop()
    if watcher is not None:
        await watcher.stop()
    await applier.stop()
    await mirror.stop()
    await app[CACHE].drain()
    await origin.close()
    await limiter.close()
    await tier.close()


async def _open_wire_doors(
    app: web.Application, tier: RedisTier, memory: MemoryTier, mirror: PurgeMirror
) -> PgDoor | None:
    """The doors that speak PostgreSQL's own bytes over the link to the origin: ``/sql``
    always, the PostgreSQL listener when node.pg_listen is set. The link opens on first use."""
    settings = app[SETTINGS]
    node = settings.node
    live = app[LIVE]
    link = app[ORIGIN].link  # the process's one link, shared with the HTTP door's calls
    metrics = app[METRICS]
    # The door's reads share the region's tiers and purge state with the HTTP door; its
    # entries are keyed apart ("pg" statements), since their bytes differ.
    cache = DoorCache(
        QueryCache(
            node,
            tier,
            WireOrigin(link, node.origin_timeout),
            memory=memory,
            mirror=mirror,
        ),
        rules=RuleBook(lambda t: live.current.tenant(t), link, node.origin_timeout),
        observe=lambda tenant, status: metrics.door_answer("postgres", tenant, status),
        unmodelled=lambda tenant: metrics.pg_unmodelled.labels(tenant).inc(),
    )
    limiter = app[LIMITER]

    async def admit(who: Principal) -> None:
        await limiter.check(who, live.current.rate_limit_for(who.tenant))

    sql_cache = dataclasses.replace(
        cache,
        observe=lambda tenant, status: metrics.door_answer("sql", tenant, status),
    )
    app[SQL] = SqlDoor(
        lambda: live.current,
        app[KEYS],
        admit,
        link,
        sql_cache,
        _region_applied(tier, mirror),
        on_error=lambda code: metrics.errors.labels(code).inc(),
    )
    address = node.pg_listen_address
    if address is None:
        return None
    door = PgDoor(lambda: live.current, app[KEYS], link, app.get(TLS), cache)
    await door.start(address.host, address.port, node.reuse_port, node.backlog)
    app[DOOR] = door
    return door


def _region_applied(tier: RedisTier, mirror: PurgeMirror) -> Callable[[str, int], Awaitable[bool]]:
    """Has this region applied a tenant's purge ``seq`` wherever it serves from: Redis, and
    this process's memory tier? (A tier that serves nothing of the tenant counts as done.)"""

    async def applied(tenant: str, seq: int) -> bool:
        in_memory = mirror.applied(tenant)
        if in_memory is not None and in_memory < seq:
            return False
        try:
            progress = await tier.progress(tenant)
        except TierUnavailable:
            return True
        return progress.applied is None or progress.applied >= seq

    return applied


async def handle_sql(request: web.Request) -> web.Response:
    return await request.app[SQL].handle(request)


async def handle_sql_preflight(request: web.Request) -> web.Response:
    return await request.app[SQL].preflight(request)


async def _synced(tier: RedisTier, tenants: list[str], timeout: float) -> bool:
    """Has some applier of the region (this process's or another's) synced every tenant?"""
    deadline = asyncio.get_running_loop().time() + timeout
    pending = list(tenants)
    while pending:
        try:
            lease = await tier.get(tier.keys.sync(pending[0], 0))  # every shard has one
        except TierUnavailable:
            return False
        if lease is not None:
            pending.pop(0)
            continue
        if asyncio.get_running_loop().time() >= deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def _ready(setup: Awaitable[tuple[bool, ...]], timeout: float) -> bool:
    try:
        return all(await asyncio.wait_for(setup, timeout))
    except TimeoutError:
        return False


async def _end_streams(app: web.Application) -> None:
    # Before the graceful drain: open streams would otherwise hold it for its whole timeout.
    if STREAMS in app:
        await app[STREAMS].close()


def _watch_config(app: web.Application, origin: OriginClient) -> ConfigWatcher | None:
    """Reload API keys, node secrets, rate limits and the TLS certificate without a restart."""
    live = app[LIVE]

    def apply(settings: Settings) -> None:
        app[KEYS].replace(settings.tenants)
        origin.set_secret(settings.node_secret)
        reload_server_context(app.get(TLS), settings.node.tls_cert, settings.node.tls_key)

    live.subscribe(apply)
    if live.current.source is None:
        return None  # built in code (tests), not from a file: nothing to reload from
    watcher = ConfigWatcher(live)
    watcher.start()
    return watcher


def create_node_app(settings: Settings) -> web.Application:
    connections = ConnectionCap(settings.node.max_connections)
    metrics = NodeMetrics(settings.node.region)
    errors = ErrorBoundary(
        "node",
        count=lambda code: metrics.errors.labels(code).inc(),
        max_body_bytes=settings.limits.max_body_bytes,
    )
    app = web.Application(
        middlewares=[errors.middleware],
        client_max_size=settings.limits.max_body_bytes,
    )
    app[CONNECTIONS] = connections
    app[SETTINGS] = settings
    app[LIVE] = LiveSettings(settings)
    app[KEYS] = ApiKeys(settings.tenants)
    app[METRICS] = metrics
    tls = server_context(settings.node.tls_cert, settings.node.tls_key)
    if tls is not None:
        app[TLS] = tls
    app.cleanup_ctx.append(_resources)
    app.on_shutdown.append(_end_streams)
    app.router.add_post("/v1/query", handle_query)
    app.router.add_post("/v1/transaction", handle_transaction)
    app.router.add_post("/v1/invalidate", handle_invalidate)
    app.router.add_get("/v1/invalidations/{id}", handle_invalidation_status)
    app.router.add_get("/v1/stream", handle_stream)
    app.router.add_post("/sql", handle_sql)
    app.router.add_route("OPTIONS", "/sql", handle_sql_preflight)
    app.router.add_get("/healthz", handle_healthz)
    app.router.add_get("/readyz", handle_readyz)
    app.router.add_get("/metrics", handle_metrics)
    return app


def run_node(settings: Settings) -> None:
    from cache_edge.server.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format, service="cache-edge-node")
    quiet_client_errors()
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is optional on exotic platforms
        pass
    node = settings.node
    app = create_node_app(settings)
    cap = app[CONNECTIONS]
    before, soft, hard = raise_fd_limit()
    # Room for the node's own sockets and files: Redis and origin pools, long-polls, logs.
    reserve = node.redis_max_connections * 2 + node.origin_max_connections + 256
    cap.limit = max(1, min(node.max_connections, soft - reserve))
    log.info("fd_limit", soft_before=before, soft=soft, hard=hard, max_connections=cap.limit)
    if cap.limit < node.max_connections:
        log.warning(
            "max_connections_lowered",
            configured=node.max_connections,
            max_connections=cap.limit,
            reason=f"file-descriptor limit {soft} (hard {hard})",
        )
    listen = Listener(
        host=node.listen.host,
        port=node.listen.port,
        ssl_context=app.get(TLS),
        # aiohttp's default (128) overflows when a thousand clients connect at once.
        backlog=node.backlog,
        reuse_port=node.reuse_port,
        keepalive_timeout=node.keepalive_timeout,
        shutdown_timeout=node.shutdown_timeout,
    )
    serve(app, cap, listen)
