"""The durable, ordered purge log of one tenant, kept in that tenant's own database.

Sequence numbers are assigned under a transaction-level advisory lock, so they are
gap-free and their order is commit order: every purge committed after an origin
read its watermark ``W`` has a sequence number greater than ``W``. That property is
what lets a region decide, with integers alone, whether an entry predates a purge.

Regions acknowledge what they have applied by polling with ``after = applied``;
the acknowledgement is stored in the same database, so any origin replica can
answer "which regions have applied purge X".
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from origin.signal import ChangeSignal

__all__ = ["CHANNEL", "SCHEMA_SQL", "Invalidation", "InvalidationLog", "Progress"]

SCHEMA_SQL = """
CREATE SCHEMA IF NOT EXISTS cache_edge;
CREATE TABLE IF NOT EXISTS cache_edge.invalidations (
    seq        bigint PRIMARY KEY,
    id         uuid NOT NULL UNIQUE,
    tags       text[] NOT NULL,
    purge_all  boolean NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS cache_edge.region_progress (
    region      text PRIMARY KEY,
    applied_seq bigint NOT NULL,
    seen_at     timestamptz NOT NULL
);
ALTER TABLE cache_edge.region_progress ADD COLUMN IF NOT EXISTS live_until timestamptz;
"""
# Serialises purges of one database (an arbitrary but fixed advisory lock key).
_LOCK_KEY = 0x63616368  # "cach"
CHANNEL = "cache_edge_invalidations"

Acquire = Callable[[], AbstractAsyncContextManager[asyncpg.Connection]]


@dataclass(frozen=True, slots=True)
class Invalidation:
    seq: int
    id: str
    tags: list[str]
    purge_all: bool

    def to_wire(self) -> dict[str, Any]:
        return {"seq": self.seq, "id": self.id, "tags": self.tags, "all": self.purge_all}


@dataclass(frozen=True, slots=True)
class Progress:
    invalidation_id: str
    seq: int
    applied: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)

    def to_wire(self) -> dict[str, Any]:
        return {
            "invalidationId": self.invalidation_id,
            "seq": self.seq,
            "appliedRegions": self.applied,
            "pendingRegions": self.pending,
        }


class InvalidationLog:
    def __init__(
        self,
        acquire: Acquire,
        *,
        retention_seconds: float = 7 * 86400,
    ) -> None:
        self._acquire = acquire
        self._retention = retention_seconds
        self._schema_ready = False
        self._changed = ChangeSignal()
        self._watermark = 0
        self._watermark_at = 0.0

    async def _ensure_schema(self, conn: asyncpg.Connection) -> None:
        if not self._schema_ready:
            # Concurrent CREATE ... IF NOT EXISTS can still collide; serialise it too.
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
                await conn.execute(SCHEMA_SQL)
            self._schema_ready = True

    def close(self) -> None:
        """The origin is stopping: end every long-poll and wait now (callers retry)."""
        self._changed.close()

    def notify_changed(self) -> None:
        """Wake long-polls and waiters (on a local change, or NOTIFY from a replica)."""
        self._changed.fire()

    async def watermark(self, at_least: int = 0) -> int:
        """The latest purge sequence known committed.

        A stale (lower) value is always safe: it only makes entries look older than
        they are. It is refreshed at least once a second, on every local purge, and
        whenever a caller needs a newer one than we know (``at_least``).
        """
        stale = time.monotonic() - self._watermark_at > 1.0
        if stale or at_least > self._watermark:
            async with self._acquire() as conn:
                await self._ensure_schema(conn)
                latest = await conn.fetchval(
                    "SELECT coalesce(max(seq), 0) FROM cache_edge.invalidations"
                )
            self._watermark = max(self._watermark, int(latest))
            self._watermark_at = time.monotonic()
        return self._watermark

    async def record(self, tags: list[str], purge_all: bool) -> Invalidation:
        inv_id = str(uuid.uuid4())
        async with self._acquire() as conn:
            await self._ensure_schema(conn)
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
                seq = await conn.fetchval(
                    "INSERT INTO cache_edge.invalidations (seq, id, tags, purge_all) "
                    "SELECT coalesce(max(seq), 0) + 1, $1, $2, $3 FROM cache_edge.invalidations "
                    "RETURNING seq",
                    uuid.UUID(inv_id),
                    tags,
                    purge_all,
                )
                await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, str(seq))
                await conn.execute(
                    "DELETE FROM cache_edge.invalidations "
                    "WHERE created_at < now() - make_interval(secs => $1) AND seq < $2",
                    self._retention,
                    seq,
                )
        self._watermark = max(self._watermark, int(seq))
        self.notify_changed()
        return Invalidation(int(seq), inv_id, tags, purge_all)

    async def latest(self) -> Invalidation | None:
        """The newest purge recorded (any replica), or None if there was none."""
        async with self._acquire() as conn:
            await self._ensure_schema(conn)
            row = await conn.fetchrow(
                "SELECT seq, id, tags, purge_all FROM cache_edge.invalidations "
                "ORDER BY seq DESC LIMIT 1"
            )
        if row is None:
            return None
        return Invalidation(int(row["seq"]), str(row["id"]), list(row["tags"]), row["purge_all"])

    async def poll(
        self, region: str, after: int, wait: float, lease: float, limit: int = 1000
    ) -> dict[str, Any]:
        """Acknowledge ``after`` for ``region`` and return purges with seq > after.

        Waits up to ``wait`` seconds for a new purge when there is none yet.
        ``after = -1`` means "I know nothing": only ``latest`` matters then.
        ``lease`` is how long the region keeps vouching for its entries without
        another poll: it is *live* (a purge waits for it) exactly that long.
        """
        deadline = time.monotonic() + wait
        acked = False
        while True:
            changed = self._changed.take()
            async with self._acquire() as conn:
                await self._ensure_schema(conn)
                if not acked and after >= 0:
                    await conn.execute(
                        "INSERT INTO cache_edge.region_progress "
                        "(region, applied_seq, seen_at, live_until) "
                        "VALUES ($1, $2, now(), now() + make_interval(secs => $3)) "
                        "ON CONFLICT (region) DO UPDATE SET "
                        "applied_seq = GREATEST(cache_edge.region_progress.applied_seq, $2), "
                        "seen_at = now(), live_until = EXCLUDED.live_until",
                        region,
                        after,
                        lease,
                    )
                    await conn.execute("SELECT pg_notify($1, 'progress')", CHANNEL)
                    acked = True
                    self.notify_changed()
                bounds = await conn.fetchrow(
                    "SELECT coalesce(max(seq), 0) AS latest, coalesce(min(seq), 0) AS oldest "
                    "FROM cache_edge.invalidations"
                )
                rows = []
                if after >= 0:
                    rows = await conn.fetch(
                        "SELECT seq, id, tags, purge_all FROM cache_edge.invalidations "
                        "WHERE seq > $1 ORDER BY seq LIMIT $2",
                        after,
                        limit,
                    )
            latest, oldest = int(bounds["latest"]), int(bounds["oldest"])
            if rows or after < 0 or latest > after or time.monotonic() >= deadline:
                break
            if self._changed.closed:
                break
            # NOTIFY wakes us early; the timeout makes correctness independent of it.
            await ChangeSignal.wait(changed, min(1.0, deadline - time.monotonic()))
        items = [
            Invalidation(int(r["seq"]), str(r["id"]), list(r["tags"]), bool(r["purge_all"]))
            for r in rows
        ]
        return {
            "latest": latest,
            "oldest": oldest,
            "items": [i.to_wire() for i in items],
        }

    async def progress(self, invalidation_id: str) -> Progress | None:
        try:
            key = uuid.UUID(invalidation_id)
        except ValueError:
            return None
        async with self._acquire() as conn:
            await self._ensure_schema(conn)
            seq = await conn.fetchval("SELECT seq FROM cache_edge.invalidations WHERE id = $1", key)
            if seq is None:
                return None
            regions = await conn.fetch(
                "SELECT region, applied_seq FROM cache_edge.region_progress "
                "WHERE live_until > now() ORDER BY region"
            )
        applied = [r["region"] for r in regions if r["applied_seq"] >= seq]
        pending = [r["region"] for r in regions if r["applied_seq"] < seq]
        return Progress(invalidation_id, int(seq), applied, pending)

    async def wait_applied(self, inv: Invalidation, wait: float) -> Progress:
        """Wait until every live region applied ``inv`` or ``wait`` seconds passed."""
        deadline = time.monotonic() + wait
        while True:
            changed = self._changed.take()
            progress = await self.progress(inv.id)
            assert progress is not None
            if not progress.pending or time.monotonic() >= deadline or self._changed.closed:
                return progress
            # NOTIFY from a replica wakes us; the slice bounds the wait without it.
            await ChangeSignal.wait(changed, min(0.1, deadline - time.monotonic()))
