"""Per-tenant purge logs of this origin process, and the LISTEN that links its replicas."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from cache_edge.common.errors import BadRequest, NotFound
from cache_edge.common.protocol import MAX_WAIT, parse_invalidate, table_tag
from cache_edge.server.config import Settings
from cache_edge.server.logs import get_logger
from cache_edge.server.tasks import stop_tasks
from origin.core.db_errors import mapped
from origin.core.listener import listen_forever
from origin.core.pool import TenantPools
from origin.purge_log.log import CHANNEL, InvalidationLog

__all__ = ["Purges"]

log = get_logger("origin.purge_log.service")

_REGION_MAX = 64
_EPOCH_MAX = 128


class Purges:
    def __init__(self, settings: Settings, pools: TenantPools) -> None:
        self._settings = settings
        self._logs = {
            t.id: InvalidationLog(t.id, functools.partial(pools.acquire, t.id))
            for t in settings.tenants
        }
        self._listeners: list[asyncio.Task[None]] = []

    def log_for(self, tenant: str) -> InvalidationLog:
        return self._logs[tenant]

    @mapped
    async def record(self, tenant: str, payload: Any) -> dict[str, Any]:
        req = parse_invalidate(payload)
        purge_log = self._logs[tenant]
        tags = sorted({*req.tags, *(table_tag(t) for t in req.tables)})
        inv = await purge_log.record(tags, req.purge_all)
        log.info(
            "purge_recorded",
            tenant=tenant,
            seq=inv.seq,
            tags=len(tags),
            purge_all=req.purge_all,
        )
        progress = await purge_log.wait_applied(inv, req.wait)
        return progress.to_wire()

    @mapped
    async def status(self, tenant: str, payload: Any) -> dict[str, Any]:
        inv_id = payload.get("id") if isinstance(payload, dict) else None
        if not isinstance(inv_id, str):
            raise BadRequest("id must be an invalidation id", field="id")
        progress = await self._logs[tenant].progress(inv_id)
        if progress is None:
            raise NotFound(f"no invalidation {inv_id[:64]!r} for this tenant")
        return progress.to_wire()

    @mapped
    async def poll(self, tenant: str, payload: Any) -> dict[str, Any]:
        if not isinstance(payload, dict):
            raise BadRequest("the poll body must be an object")
        region, after, wait = payload.get("region"), payload.get("after"), payload.get("wait", 5)
        lease = payload.get("lease", 10)
        epoch = payload.get("epoch")
        if not isinstance(region, str) or not 0 < len(region) <= _REGION_MAX:
            raise BadRequest("region must be a region name", field="region")
        if isinstance(after, bool) or not isinstance(after, int) or after < -1:
            raise BadRequest("after must be an integer >= -1", field="after")
        if (
            isinstance(wait, bool)
            or not isinstance(wait, (int, float))
            or not 0 <= wait <= MAX_WAIT
        ):
            raise BadRequest("wait must be 0 to 30 seconds", field="wait")
        if isinstance(lease, bool) or not isinstance(lease, (int, float)) or not 0 < lease <= 3600:
            raise BadRequest("lease must be 0 to 3600 seconds", field="lease")
        if epoch is not None and (not isinstance(epoch, str) or len(epoch) > _EPOCH_MAX):
            raise BadRequest("epoch must be the epoch of a purge log", field="epoch")
        return await self._logs[tenant].poll(region, after, float(wait), float(lease), epoch=epoch)

    # ------------------------------------------------------------ replicas

    def start(self) -> None:
        for tenant in self._settings.tenants:
            purge_log = self._logs[tenant.id]
            self._listeners.append(
                asyncio.create_task(
                    listen_forever(tenant.database_url, CHANNEL, purge_log.notify_changed)
                )
            )

    def end_waits(self) -> None:
        for purge_log in self._logs.values():
            purge_log.close()

    async def stop(self) -> None:
        await stop_tasks(self._listeners)
