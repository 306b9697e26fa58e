"""Per-tenant pools of raw database connections for the PostgreSQL door.

Bounded like the HTTP path's pools (:mod:`origin.core.pool`): at most ``pool_max_size``
connections per tenant, a wait for one bounded by ``pool_timeout``, and at most
``max_concurrency`` sessions waiting at once. The two kinds of pool are separate (asyncpg
cannot lend its connections as raw sockets), so a tenant's database may see up to twice
``pool_max_size`` connections from one origin process; docs/postgres-protocol.md says so.

Idle connections are kept LIFO, so a quiet tenant's spare connections age out at the
bottom of the stack and a busy one reuses its warmest connection.
"""

from __future__ import annotations

import asyncio
import re
import time

from cache_edge.common.errors import DatabaseUnavailable, PoolTimeout
from cache_edge.server.config import OriginConfig, TenantConfig
from cache_edge.server.logs import get_logger
from origin.core.pool import PoolStats
from origin.wire.server import DatabaseTarget, ServerConnection, ServerError, send_cancel

__all__ = ["WirePool", "WirePools"]

log = get_logger("origin.wire.pool")

_IDLE_LIFETIME = 300.0  # an idle connection older than this is closed rather than lent


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "min": 60_000.0, "h": 3_600_000.0, "d": 86_400_000.0}
_DURATION = re.compile(r"^\s*'?\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*'?\s*$", re.IGNORECASE)


def _millis(value: str) -> float | None:
    """A PostgreSQL time setting in milliseconds (unit-less means ms), None if unreadable."""
    match = _DURATION.match(value)
    if match is None:
        return None
    unit = match.group(2).lower() or "ms"
    factor = _UNITS.get(unit)
    return None if factor is None else float(match.group(1)) * factor


class WirePool:
    """One tenant's raw connections."""

    def __init__(self, tenant: TenantConfig, origin: OriginConfig) -> None:
        self.tenant = tenant
        self.origin = origin
        self.target = DatabaseTarget.from_url(tenant.database_url)
        self.max_size = tenant.pool_max_size or origin.pool_max_size
        self.max_concurrency = tenant.max_concurrency or origin.max_concurrency
        self._slots = asyncio.Semaphore(self.max_size)
        self._idle: list[tuple[float, ServerConnection]] = []
        self._size = 0
        self._in_use = 0
        self._waiting = 0
        self._ceilings = {
            "statement_timeout": int(origin.statement_timeout * 1000),
            "idle_in_transaction_session_timeout": int(origin.idle_in_transaction_timeout * 1000),
        }
        # Enforced limits go in the startup packet, so RESET ALL returns to them; nothing
        # else does, so a client sees PostgreSQL's defaults (application_name too).
        self._startup = {
            "statement_timeout": str(int(origin.statement_timeout * 1000)),
            "idle_in_transaction_session_timeout": str(
                int(origin.idle_in_transaction_timeout * 1000)
            ),
        }

    def stats(self) -> PoolStats:
        return PoolStats(
            self.tenant.id, self._size, len(self._idle), self._in_use, self._waiting, self.max_size
        )

    async def acquire(self) -> ServerConnection:
        if self._waiting >= self.max_concurrency:
            raise PoolTimeout(
                f"tenant {self.tenant.id} already has {self._waiting} sessions waiting for a "
                "database connection (max_concurrency)"
            )
        self._waiting += 1
        try:
            async with asyncio.timeout(self.origin.pool_timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise PoolTimeout(
                f"no database connection became free within {self.origin.pool_timeout} s "
                f"(pool_timeout; pool_max_size {self.max_size})"
            ) from None
        finally:
            self._waiting -= 1
        try:
            conn = await self._take()
        except BaseException:
            self._slots.release()
            raise
        self._in_use += 1
        return conn

    async def _take(self) -> ServerConnection:
        now = time.monotonic()
        while self._idle:
            since, conn = self._idle.pop()
            if conn.closed or conn.has_unread or now - since > _IDLE_LIFETIME:
                self._discard(conn)
                continue
            return conn
        try:
            conn = await ServerConnection.connect(
                self.target, self._startup, self.origin.connect_timeout
            )
        except ServerError as exc:
            raise DatabaseUnavailable(
                f"could not log in to the tenant's database: {exc} (SQLSTATE {exc.sqlstate})"
            ) from None
        except (OSError, TimeoutError) as exc:
            raise DatabaseUnavailable(
                f"could not connect to the database within {self.origin.connect_timeout} s: "
                f"{exc.__class__.__name__}"
            ) from None
        self._size += 1
        return conn

    def clamped(self, settings: dict[str, str]) -> dict[str, str]:
        """A session's settings with the origin's timeouts as ceilings: a client may lower
        statement_timeout or idle_in_transaction_session_timeout, never lift or disable
        them (0 means no limit in PostgreSQL)."""
        out = dict(settings)
        for name, ceiling in self._ceilings.items():
            value = out.get(name)
            if value is None:
                continue
            millis = _millis(value)
            if millis is not None and (millis == 0 or millis > ceiling):
                out[name] = str(ceiling)
        return out

    def release(self, conn: ServerConnection, reusable: bool) -> None:
        """Give a connection back; one that is not reusable (mid-transaction, broken, or
        holding session features) is closed instead."""
        self._in_use -= 1
        self._slots.release()
        if reusable and not conn.closed:
            self._idle.append((time.monotonic(), conn))
        else:
            self._discard(conn)

    def _discard(self, conn: ServerConnection) -> None:
        self._size -= 1
        conn.close()

    async def cancel(self, conn: ServerConnection) -> None:
        await send_cancel(self.target, conn.pid, conn.secret, self.origin.connect_timeout)

    def close(self) -> None:
        while self._idle:
            self._discard(self._idle.pop()[1])


class WirePools:
    """Every tenant's wire pool, created on a tenant's first session."""

    def __init__(self, origin: OriginConfig) -> None:
        self.origin = origin
        self._pools: dict[str, WirePool] = {}

    def get(self, tenant: TenantConfig) -> WirePool:
        pool = self._pools.get(tenant.id)
        if pool is None or pool.tenant.database_url != tenant.database_url:
            if pool is not None:
                pool.close()
            pool = self._pools[tenant.id] = WirePool(tenant, self.origin)
        return pool

    def stats(self) -> list[PoolStats]:
        return [p.stats() for p in self._pools.values()]

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        log.debug("wire_pools_closed", pools=len(self._pools))
