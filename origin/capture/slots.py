"""At start, warn about ``cache_edge_*`` replication slots that no configured tenant reads.

A logical slot keeps every WAL segment from its position on until someone reads it: one
left behind (a tenant removed from the config without ``remove-auto-invalidation``, or set
up and never opted in) fills the disk, and keeps PostgreSQL from starting if ``wal_level``
is lowered below ``logical``. The origin cannot know that nobody else reads it, so it says
so (``orphan_replication_slot``) and leaves dropping it to the operator.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import asyncpg

from cache_edge.server.config import Settings, TenantConfig
from cache_edge.server.logs import get_logger
from origin.capture.setup import cache_edge_slots, legacy_slot_name, slot_name
from origin.core.databases import by_database

__all__ = ["orphans", "warn_orphan_slots"]

log = get_logger("origin.capture.slots")

_CHECK_TIMEOUT = 10.0


def orphans(slots: Sequence[str], database: str, tenants: Sequence[TenantConfig]) -> list[str]:
    """The slots of ``database`` that none of its configured ``tenants`` reads."""
    captured = [t for t in tenants if t.captured]
    wanted: set[str] = set()
    if captured:
        wanted.add(slot_name(database))
        # An older version's per-tenant slot: the capture replaces it when it starts.
        wanted.update(legacy_slot_name(t.id, database) for t in captured)
    return [s for s in slots if s not in wanted]


async def _check(group: Sequence[TenantConfig], connect_timeout: float) -> None:
    # Its own short connection: looking must not open a tenant's pool before its first query.
    conn = await asyncpg.connect(group[0].database_url, timeout=connect_timeout)
    try:
        database = str(await conn.fetchval("SELECT current_database()"))
        slots = await cache_edge_slots(conn)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.close(), 2)
    for slot in orphans(slots, database, group):
        log.warning(
            "orphan_replication_slot",
            slot=slot,
            database=database,
            tenants=[t.id for t in group],
            hint="no configured tenant reads this slot and it keeps WAL for ever: run "
            "cache-edge origin remove-auto-invalidation --tenant <its tenant>, or "
            f"SELECT pg_drop_replication_slot('{slot}') in {database} if nothing else reads it",
        )


async def warn_orphan_slots(settings: Settings) -> None:
    """Look once in every configured database; a database that cannot be reached is skipped
    (queries will say so)."""
    for group in by_database(settings.tenants):
        try:
            await asyncio.wait_for(_check(group, settings.origin.connect_timeout), _CHECK_TIMEOUT)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.debug("orphan_slot_check_failed", tenant=group[0].id, error=f"{exc!r}"[:200])
