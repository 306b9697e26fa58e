"""Per-tenant asyncpg pools: created lazily, bounded waiting, returned even when cancelled.

Waiting for a free connection and connecting are bounded separately: our own
semaphore (one permit per connection) decides who may take a connection and
gives up after ``pool_timeout`` with :class:`PoolTimeout`; asyncpg then never
waits for a slot, so its acquire only ever waits on connecting, bounded by
``connect_timeout``. After a database restart asyncpg finds its connections
closed and reconnects on the next acquire, so the pool recovers by itself.

Broken connections: a lease that ends in a connection failure (``is_connection_error``)
terminates its connection instead of releasing it. A session the server ended can look
open for a moment while asyncpg's protocol is still stuck on the error that ended it, and
asyncpg's own release would put it back for the next request to fail on.

Sessions: a released connection is reset (``RESET ALL``, advisory locks, cursors,
listeners: one round trip) unless the executor vouched that its request only read
(:meth:`OriginConnection.keep_session`). The executor runs reads in a read-only session
(``default_transaction_read_only``); everyone else acquires the connection switched back.

Fairness: every tenant has its own pool, so no tenant can take another's
connections; and at most ``max_concurrency`` of a tenant's requests may hold or
wait for one at a time. Beyond that a request fails at once with ``pool_timeout``
instead of queueing, so a tenant flooding slow queries gets fast refusals and
does not pile up requests (and the nodes' connections to the origin) behind it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace
from typing import Any

import asyncpg

from cache_edge.common.deadlines import Deadlines
from cache_edge.common.errors import DatabaseUnavailable, PoolTimeout
from cache_edge.common.wire import json_dumps
from cache_edge.server.config import OriginConfig, Settings, TenantConfig
from cache_edge.server.logs import get_logger
from origin.core.db_errors import is_connection_error

__all__ = ["OriginConnection", "PoolStats", "TenantPool", "TenantPools"]

log = get_logger("origin.core.pool")

_RELEASE_TIMEOUT = 5.0
_RESET_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class PoolStats:
    tenant: str
    size: int  # open connections
    idle: int  # open connections nobody holds
    in_use: int  # connections lent out right now
    waiting: int  # callers queued for a connection
    max_size: int


def _encode_json(value: Any) -> str:
    # wire.json_dumps also knows Decimal, bytes and timedelta, which msgpack callers may send.
    return json_dumps(value).decode()


async def _init_connection(conn: asyncpg.Connection) -> None:
    # json/jsonb come back as Python structures, not strings; builtin types need no round trip.
    for name in ("json", "jsonb"):
        await conn.set_type_codec(
            name, schema="pg_catalog", encoder=_encode_json, decoder=json.loads, format="text"
        )


class OriginConnection(asyncpg.Connection):  # type: ignore[misc]
    """asyncpg's connection plus two facts about its session that the pool acts on.

    Set through methods, because the pool lends a proxy that forwards calls, not assignments.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.session_kept = False  # this request only read: skip the reset on release
        self.session_read_only = False  # the executor switched its transactions to read-only

    def keep_session(self) -> None:
        self.session_kept = True

    def set_session_read_only(self, value: bool) -> None:
        self.session_read_only = value


async def _reset_session(conn: Any) -> None:
    """Called on release (asyncpg has already rolled back an open transaction)."""
    if getattr(conn, "session_kept", False):
        conn.session_kept = False
        return
    query = conn.get_reset_query()
    if query:
        await conn.execute(query)
    if isinstance(conn, OriginConnection):
        conn.session_read_only = False  # RESET ALL restored the database's default


class TenantPool:
    """One tenant's connections; the asyncpg pool is created on first use."""

    def __init__(
        self,
        tenant: TenantConfig,
        origin: OriginConfig,
        create_pool: Callable[..., Any] = asyncpg.create_pool,
    ) -> None:
        self.tenant = tenant
        # The config object self.tenant was taken from: a reload hands back the very same
        # object for a tenant it did not change (live_settings), so configure() skips it.
        self._configured_from = tenant
        self.max_size = tenant.pool_max_size or origin.pool_max_size
        min_size = (
            tenant.pool_min_size if tenant.pool_min_size is not None else origin.pool_min_size
        )
        self.min_size = min(min_size, self.max_size)
        self._origin = origin
        self.max_concurrency = tenant.max_concurrency or origin.max_concurrency
        self._create_pool = create_pool
        self._pool: Any = None
        self._init_lock = asyncio.Lock()
        self._slots = asyncio.Semaphore(self.max_size)
        self._in_use = 0
        self._waiting = 0
        # Swept deadlines, not a timer per request (cache_edge.common.deadlines).
        self._slot_deadlines = Deadlines(origin.pool_timeout)
        self._connect_deadlines = Deadlines(origin.connect_timeout + 1.0)

    def stats(self) -> PoolStats:
        pool = self._pool
        size = pool.get_size() if pool is not None else 0
        idle = pool.get_idle_size() if pool is not None else 0
        return PoolStats(self.tenant.id, size, idle, self._in_use, self._waiting, self.max_size)

    async def _get_pool(self) -> Any:
        if self._pool is not None:
            return self._pool
        async with self._init_lock:
            if self._pool is None:
                pool = self._create_pool(
                    self.tenant.database_url,
                    min_size=self.min_size,
                    max_size=self.max_size,
                    timeout=self._origin.connect_timeout,  # per connection attempt
                    init=_init_connection,
                    reset=_reset_session,
                    connection_class=OriginConnection,
                    server_settings={
                        "application_name": "cache-edge-origin",
                        "statement_timeout": str(int(self._origin.statement_timeout * 1000)),
                    },
                )
                try:
                    await asyncio.wait_for(pool, self._origin.connect_timeout + 1.0)
                except BaseException:
                    # A failed start is not cached: the next request tries again.
                    pool.terminate()
                    raise
                self._pool = pool
                log.info("pool_created", tenant=self.tenant.id, database=self.tenant.safe_dsn)
        return self._pool

    def configure(self, tenant: TenantConfig, max_concurrency: int) -> None:
        """Take a reloaded tenant config (its database URL and pool size stay as started)."""
        if tenant is not self._configured_from:  # else unchanged: no copy (10,000 tenants)
            self.tenant = replace(tenant, database_url=self.tenant.database_url)
            self._configured_from = tenant
        self.max_concurrency = max_concurrency

    async def _wait_for_slot(self) -> None:
        if self._in_use + self._waiting >= self.max_concurrency:
            raise PoolTimeout(
                f"this tenant already has {self.max_concurrency} requests in flight at the "
                "origin (max_concurrency); retry shortly",
                retry_after=1.0,
            )
        if not self._slots.locked():
            await self._slots.acquire()  # a permit is free: no waiting, no timer
            return
        self._waiting += 1
        task = self._slot_deadlines.enter()
        try:
            await self._slots.acquire()
        except asyncio.CancelledError:
            if self._slot_deadlines.expired(task):
                raise PoolTimeout(
                    f"no database connection became free within {self._origin.pool_timeout} s "
                    f"(pool of {self.max_size}); retry shortly",
                    retry_after=1.0,
                ) from None
            raise
        finally:
            self._slot_deadlines.leave(task)
            self._waiting -= 1

    def acquire(
        self, *, read_only_session: bool = False
    ) -> AbstractAsyncContextManager[asyncpg.Connection]:
        """A connection; its session as the database configures it unless the caller (the
        executor) accepts one whose transactions are read-only by default."""
        return _Lease(self, read_only_session)

    async def _lend(self, read_only_session: bool) -> tuple[Any, asyncpg.Connection]:
        await self._wait_for_slot()
        try:
            pool = await self._get_pool()
            # We hold a permit, so a pool slot is free: this waits only on (re)connecting.
            task = self._connect_deadlines.enter()
            try:
                conn = await pool.acquire()
            except asyncio.CancelledError:
                if self._connect_deadlines.expired(task):
                    raise DatabaseUnavailable(
                        "could not connect to the database within "
                        f"{self._origin.connect_timeout} s",
                        retry_after=1.0,
                    ) from None
                raise
            finally:
                self._connect_deadlines.leave(task)
        except BaseException:
            self._slots.release()
            raise
        self._in_use += 1
        if not read_only_session and getattr(conn, "session_read_only", False) is True:
            try:
                await conn.execute("RESET default_transaction_read_only", timeout=_RESET_TIMEOUT)
                conn.set_session_read_only(False)
            except BaseException as exc:
                await self._return(pool, conn, exc)
                raise
        return pool, conn

    async def _return(
        self, pool: Any, conn: asyncpg.Connection, failure: BaseException | None = None
    ) -> None:
        self._in_use -= 1
        if failure is not None and _broke_connection(failure):
            log.warning(
                "connection_discarded",
                tenant=self.tenant.id,
                error=type(failure).__name__,
                detail=str(failure)[:200],
            )
            # Terminated, the connection leaves the pool for good (asyncpg's release is then
            # a no-op and its slot reconnects on next use).
            try:
                conn.terminate()
            except Exception as exc:
                log.debug("terminate_failed", tenant=self.tenant.id, error=type(exc).__name__)
        try:
            # asyncpg shields the release itself: a cancelled request cannot leak the
            # connection (its permit then comes back while the release finishes).
            await pool.release(conn, timeout=_RELEASE_TIMEOUT)
        except Exception as exc:
            # asyncpg already terminated the connection; its slot reconnects on next use.
            log.warning("pool_release_failed", tenant=self.tenant.id, error=type(exc).__name__)
        finally:
            self._slots.release()

    async def close(self, timeout: float = 10.0) -> None:
        self._slot_deadlines.close()
        self._connect_deadlines.close()
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), timeout)
        except Exception:
            pool.terminate()


class _Lease:
    """``async with pool.acquire() as conn``: a class, not a generator, as it runs per query."""

    __slots__ = ("_conn", "_owner", "_pool", "_read_only_session")

    def __init__(self, owner: TenantPool, read_only_session: bool) -> None:
        self._owner = owner
        self._read_only_session = read_only_session
        self._pool: Any = None
        self._conn: Any = None

    async def __aenter__(self) -> asyncpg.Connection:
        self._pool, self._conn = await self._owner._lend(self._read_only_session)
        return self._conn

    async def __aexit__(
        self, exc_type: object, exc: BaseException | None, traceback: object
    ) -> None:
        await self._owner._return(self._pool, self._conn, exc)


def _broke_connection(exc: BaseException) -> bool:
    """Whether ``exc``, or a failure it was mapped from, means the connection is unusable."""
    seen: BaseException | None = exc
    while seen is not None:
        if is_connection_error(seen):
            return True
        seen = seen.__cause__
    return False


class TenantPools:
    """All tenants' pools, keyed by tenant id; only configured tenants exist."""

    def __init__(self, settings: Settings, create_pool: Callable[..., Any] = asyncpg.create_pool):
        self._pools = {t.id: TenantPool(t, settings.origin, create_pool) for t in settings.tenants}

    def __contains__(self, tenant_id: object) -> bool:
        return tenant_id in self._pools

    def update(self, settings: Settings) -> None:
        """Apply a config reload: tenants' max_concurrency (new tenants wait for a restart)."""
        for tenant in settings.tenants:
            pool = self._pools.get(tenant.id)
            if pool is not None:
                pool.configure(tenant, settings.max_concurrency_for(tenant))

    def acquire(
        self, tenant_id: str, *, read_only_session: bool = False
    ) -> AbstractAsyncContextManager[asyncpg.Connection]:
        """``async with pools.acquire(tenant) as conn``; raises PoolTimeout when exhausted."""
        return self._pools[tenant_id].acquire(read_only_session=read_only_session)

    def stats(self) -> list[PoolStats]:
        return [p.stats() for p in self._pools.values()]

    async def ping(self, tenant_id: str, timeout: float = 2.0) -> bool:
        """True when the tenant's database answers ``SELECT 1`` within ``timeout``."""
        try:
            async with asyncio.timeout(timeout), self.acquire(tenant_id) as conn:
                return bool(await conn.fetchval("SELECT 1") == 1)
        except Exception as exc:
            log.warning("readiness_failed", tenant=tenant_id, error=type(exc).__name__)
            return False

    async def close(self) -> None:
        await asyncio.gather(*(p.close() for p in self._pools.values()))
