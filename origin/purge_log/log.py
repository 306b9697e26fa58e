"""The durable, ordered purge log of one tenant, kept in that tenant's own database.

Several tenants may share one database: every row of the log and of the regions' progress
carries its tenant, and sequence numbers count per tenant. They are assigned under a
transaction-level advisory lock of that tenant, so they are gap-free and their order is
commit order: every purge of the tenant committed after an origin read its watermark
``W`` has a sequence number greater than ``W``. That property is what lets a region
decide, with integers alone, whether an entry predates a purge.

Rows written before purge logs were per tenant (``tenant = ''``) belong to every tenant
of the database: each tenant's log continues after them (docs/decisions.md).

The log has an identity, its **epoch**: a random id created with the schema, in the same
database (so a restored backup or a new database brings its own), joined with the
database's OID (so a database dropped and restored under the same name differs too).
Regions acknowledge what they have applied by polling with ``after = applied`` and the
epoch of the log their state came from; the acknowledgement is stored in the same
database, so any origin replica can answer "which regions have applied purge X", and it
is recorded only when it can be true of this log.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from cache_edge.server.logs import get_logger
from origin.core.change_signal import ChangeSignal

__all__ = ["CHANNEL", "SCHEMA_SQL", "Invalidation", "InvalidationLog", "Progress"]

log = get_logger("origin.purge_log.log")

# ``tenant = ''``: a row from before logs were per tenant, shared by every tenant of the
# database. The default keeps a not yet upgraded replica's purges conservative (they reach
# every tenant).
SCHEMA_SQL = """
CREATE SCHEMA IF NOT EXISTS cache_edge;
CREATE TABLE IF NOT EXISTS cache_edge.invalidations (
    tenant     text NOT NULL DEFAULT '',
    seq        bigint NOT NULL,
    id         uuid NOT NULL UNIQUE,
    tags       text[] NOT NULL,
    purge_all  boolean NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, seq)
);
CREATE TABLE IF NOT EXISTS cache_edge.region_progress (
    tenant      text NOT NULL,
    region      text NOT NULL,
    applied_seq bigint NOT NULL,
    seen_at     timestamptz NOT NULL,
    live_until  timestamptz,
    PRIMARY KEY (tenant, region)
);
CREATE TABLE IF NOT EXISTS cache_edge.purge_log_epoch (
    one   boolean PRIMARY KEY DEFAULT true CHECK (one),
    epoch text NOT NULL
);
"""
# Logs created by versions before per-tenant logs (docs/decisions.md): their purges stay,
# as rows of every tenant of the database; their region progress cannot be attributed to a
# tenant and is dropped (every live region acknowledges again with its next poll).
_MIGRATE_SQL = """
DO $migrate$
DECLARE
    pk text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute
                   WHERE attrelid = 'cache_edge.invalidations'::regclass
                   AND attname = 'tenant' AND NOT attisdropped) THEN
        SELECT conname INTO pk FROM pg_constraint
         WHERE conrelid = 'cache_edge.invalidations'::regclass AND contype = 'p';
        ALTER TABLE cache_edge.invalidations ADD COLUMN tenant text NOT NULL DEFAULT '';
        EXECUTE format('ALTER TABLE cache_edge.invalidations DROP CONSTRAINT %I', pk);
        ALTER TABLE cache_edge.invalidations ADD PRIMARY KEY (tenant, seq);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_attribute
                   WHERE attrelid = 'cache_edge.region_progress'::regclass
                   AND attname = 'tenant' AND NOT attisdropped) THEN
        SELECT conname INTO pk FROM pg_constraint
         WHERE conrelid = 'cache_edge.region_progress'::regclass AND contype = 'p';
        DELETE FROM cache_edge.region_progress;
        ALTER TABLE cache_edge.region_progress ADD COLUMN tenant text NOT NULL;
        ALTER TABLE cache_edge.region_progress ADD COLUMN IF NOT EXISTS live_until timestamptz;
        EXECUTE format('ALTER TABLE cache_edge.region_progress DROP CONSTRAINT %I', pk);
        ALTER TABLE cache_edge.region_progress ADD PRIMARY KEY (tenant, region);
    END IF;
END
$migrate$;
"""
# The log's identity as regions see it: the stored random id and the database's OID.
_EPOCH = (
    "(SELECT epoch FROM cache_edge.purge_log_epoch) || '.' || "
    "(SELECT oid::text FROM pg_database WHERE datname = current_database())"
)
# Newest and oldest seq of a tenant's log ($1): its own rows and the shared older ones, each
# read from the primary key's end (an IN list would read every row of the tenant).
_BOUNDS = (
    "SELECT coalesce((SELECT max(seq) FROM (SELECT max(seq) AS seq FROM cache_edge.invalidations"
    " WHERE tenant = $1 UNION ALL SELECT max(seq) FROM cache_edge.invalidations"
    " WHERE tenant = '') m), 0) AS latest,"
    " coalesce((SELECT min(seq) FROM (SELECT min(seq) AS seq FROM cache_edge.invalidations"
    " WHERE tenant = $1 UNION ALL SELECT min(seq) FROM cache_edge.invalidations"
    " WHERE tenant = '') m), 0) AS oldest,"
    f" {_EPOCH} AS epoch"
)
_COLUMNS = "seq, id, tags, purge_all"
_AFTER = (
    f"(SELECT {_COLUMNS} FROM cache_edge.invalidations WHERE tenant = $1 AND seq > $2"
    " ORDER BY seq LIMIT $3) UNION ALL"
    f" (SELECT {_COLUMNS} FROM cache_edge.invalidations WHERE tenant = '' AND seq > $2"
    " ORDER BY seq LIMIT $3) ORDER BY seq LIMIT $3"
)
# Serialises schema changes of a database (an arbitrary but fixed advisory lock key) and,
# with the tenant's hash as second key, the purges of one tenant.
_LOCK_KEY = 0x63616368  # "cach"
CHANNEL = "cache_edge_invalidations"

Acquire = Callable[[], AbstractAsyncContextManager[asyncpg.Connection]]


@dataclass(frozen=True, slots=True)
class Invalidation:
    seq: int
    id: str
    tags: list[str]
    purge_all: bool
    epoch: str = ""

    def to_wire(self) -> dict[str, Any]:
        return {"seq": self.seq, "id": self.id, "tags": self.tags, "all": self.purge_all}


@dataclass(frozen=True, slots=True)
class Progress:
    invalidation_id: str
    seq: int
    applied: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    epoch: str = ""

    def to_wire(self) -> dict[str, Any]:
        return {
            "invalidationId": self.invalidation_id,
            "seq": self.seq,
            "appliedRegions": self.applied,
            "pendingRegions": self.pending,
            "epoch": self.epoch,
        }


class InvalidationLog:
    def __init__(
        self,
        tenant: str,
        acquire: Acquire,
        *,
        retention_seconds: float = 7 * 86400,
    ) -> None:
        self.tenant = tenant
        self._acquire = acquire
        self._retention = retention_seconds
        self._schema_ready = False
        self._changed = ChangeSignal()
        self._watermark = 0
        self._watermark_at = 0.0
        self._epoch = ""  # of the log the watermark was read from
        self._ahead: set[str] = set()  # regions already warned about (applied > latest)

    async def _ensure_schema(self, conn: asyncpg.Connection) -> None:
        if not self._schema_ready:
            # Concurrent CREATE ... IF NOT EXISTS can still collide; serialise it too.
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
                await conn.execute(SCHEMA_SQL)
                await conn.execute(_MIGRATE_SQL)
                await conn.execute(
                    "INSERT INTO cache_edge.purge_log_epoch (epoch) VALUES ($1) "
                    "ON CONFLICT DO NOTHING",
                    uuid.uuid4().hex,
                )
            self._schema_ready = True

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection to a database whose log schema exists."""
        async with self._acquire() as conn:
            await self._ensure_schema(conn)
            try:
                yield conn
            except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
                # The database was replaced under us: create the schema again next time.
                self._schema_ready = False
                raise

    def close(self) -> None:
        """The origin is stopping: end every long-poll and wait now (callers retry)."""
        self._changed.close()

    def notify_changed(self) -> None:
        """Wake long-polls and waiters (on a local change, or NOTIFY from a replica)."""
        self._changed.fire()

    def _saw(self, epoch: str, latest: int) -> None:
        """Remember the newest seq known committed, per log: a watermark read from another
        log (the database was replaced) would make entries look newer than they are."""
        if epoch != self._epoch:
            self._epoch = epoch
            self._watermark = latest
        else:
            self._watermark = max(self._watermark, latest)

    async def watermark(self, at_least: int = 0) -> int:
        """The latest purge sequence known committed.

        A stale (lower) value is always safe: it only makes entries look older than
        they are. It is refreshed at least once a second, on every local purge, and
        whenever a caller needs a newer one than we know (``at_least``).
        """
        stale = time.monotonic() - self._watermark_at > 1.0
        if stale or at_least > self._watermark:
            async with self._connection() as conn:
                bounds = await conn.fetchrow(_BOUNDS, self.tenant)
            assert bounds is not None
            self._saw(str(bounds["epoch"]), int(bounds["latest"]))
            self._watermark_at = time.monotonic()
        return self._watermark

    async def record(self, tags: list[str], purge_all: bool) -> Invalidation:
        inv_id = str(uuid.uuid4())
        async with self._connection() as conn, conn.transaction():
            # One tenant's purges are serialised; other tenants' go on in parallel.
            await conn.execute(
                "SELECT pg_advisory_xact_lock($1, hashtext($2))", _LOCK_KEY, self.tenant
            )
            bounds = await conn.fetchrow(_BOUNDS, self.tenant)
            assert bounds is not None
            seq = int(bounds["latest"]) + 1
            await conn.execute(
                "INSERT INTO cache_edge.invalidations (tenant, seq, id, tags, purge_all) "
                "VALUES ($1, $2, $3, $4, $5)",
                self.tenant,
                seq,
                uuid.UUID(inv_id),
                tags,
                purge_all,
            )
            await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, self.tenant)
            await conn.execute(
                "DELETE FROM cache_edge.invalidations WHERE tenant IN ($1, '') "
                "AND created_at < now() - make_interval(secs => $2) AND seq < $3",
                self.tenant,
                self._retention,
                seq,
            )
        epoch = str(bounds["epoch"])
        self._saw(epoch, seq)
        self.notify_changed()
        return Invalidation(seq, inv_id, tags, purge_all, epoch)

    async def latest(self) -> Invalidation | None:
        """The newest purge recorded (any replica), or None if there was none."""
        async with self._connection() as conn:
            row = await conn.fetchrow(
                f"SELECT {_COLUMNS}, {_EPOCH} AS epoch FROM cache_edge.invalidations "
                "WHERE tenant IN ($1, '') ORDER BY seq DESC LIMIT 1",
                self.tenant,
            )
        if row is None:
            return None
        return Invalidation(
            int(row["seq"]), str(row["id"]), list(row["tags"]), row["purge_all"], row["epoch"]
        )

    async def poll(
        self,
        region: str,
        after: int,
        wait: float,
        lease: float,
        limit: int = 1000,
        *,
        epoch: str | None = None,
    ) -> dict[str, Any]:
        """Acknowledge ``after`` for ``region`` and return purges with seq > after.

        Waits up to ``wait`` seconds for a new purge when there is none yet.
        ``after = -1`` means "I know nothing": only ``latest`` matters then.
        ``lease`` is how long the region keeps vouching for its entries without
        another poll: it is *live* (a purge waits for it) exactly that long.

        The acknowledgement is recorded only if it can be about this log: ``epoch`` (the
        log the region's state came from) is this log's, and ``after`` is not past its
        newest purge. A region without an epoch (a node from before epochs) is taken at
        its word within those bounds. Otherwise the answer is the same, but nothing is
        recorded: the region applies what it needs (or resyncs) and acknowledges after.
        """
        deadline = time.monotonic() + wait
        acked = False
        while True:
            changed = self._changed.take()
            async with self._connection() as conn:
                bounds = await conn.fetchrow(_BOUNDS, self.tenant)
                assert bounds is not None
                latest, oldest = int(bounds["latest"]), int(bounds["oldest"])
                log_epoch = str(bounds["epoch"])
                if not acked and after >= 0:
                    acked = True
                    if self._acknowledgeable(region, after, latest, epoch, log_epoch):
                        await conn.execute(
                            "INSERT INTO cache_edge.region_progress "
                            "(tenant, region, applied_seq, seen_at, live_until) "
                            "VALUES ($1, $2, $3, now(), now() + make_interval(secs => $4)) "
                            "ON CONFLICT (tenant, region) DO UPDATE SET applied_seq = "
                            "GREATEST(cache_edge.region_progress.applied_seq, $3), "
                            "seen_at = now(), live_until = EXCLUDED.live_until",
                            self.tenant,
                            region,
                            after,
                            lease,
                        )
                        await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, self.tenant)
                        self.notify_changed()
                rows = []
                if after >= 0:
                    rows = await conn.fetch(_AFTER, self.tenant, after, limit)
            if rows or after < 0 or latest != after or time.monotonic() >= deadline:
                break  # news, or a region ahead of this log (it must find out now)
            if self._changed.closed or (epoch is not None and epoch != log_epoch):
                break  # a region on another log must not wait either
            # NOTIFY wakes us early; the timeout makes correctness independent of it.
            await ChangeSignal.wait(changed, min(1.0, deadline - time.monotonic()))
        self._saw(log_epoch, latest)
        items = [
            Invalidation(int(r["seq"]), str(r["id"]), list(r["tags"]), bool(r["purge_all"]))
            for r in rows
        ]
        return {
            "latest": latest,
            "oldest": oldest,
            "items": [i.to_wire() for i in items],
            "epoch": log_epoch,
        }

    def _acknowledgeable(
        self, region: str, after: int, latest: int, epoch: str | None, log_epoch: str
    ) -> bool:
        if epoch is not None and epoch != log_epoch:
            return False  # the region's state belongs to another log
        if after > latest:
            # Applied purges this log never had: the state is another log's (an older
            # node, or a database restored to before them). Recording it would report
            # this log's next purges applied before the region has seen them.
            if region not in self._ahead:
                self._ahead.add(region)
                log.warning(
                    "region_ahead_of_purge_log",
                    tenant=self.tenant,
                    region=region,
                    applied=after,
                    latest=latest,
                )
            return False
        self._ahead.discard(region)
        return True

    async def progress(self, invalidation_id: str) -> Progress | None:
        try:
            key = uuid.UUID(invalidation_id)
        except ValueError:
            return None
        async with self._connection() as conn:
            row = await conn.fetchrow(
                f"SELECT seq, {_EPOCH} AS epoch FROM cache_edge.invalidations "
                "WHERE id = $1 AND tenant IN ($2, '')",
                key,
                self.tenant,
            )
            if row is None:
                return None
            regions = await conn.fetch(
                "SELECT region, applied_seq FROM cache_edge.region_progress "
                "WHERE tenant = $1 AND live_until > now() ORDER BY region",
                self.tenant,
            )
        seq = int(row["seq"])
        applied = [r["region"] for r in regions if r["applied_seq"] >= seq]
        pending = [r["region"] for r in regions if r["applied_seq"] < seq]
        return Progress(invalidation_id, seq, applied, pending, str(row["epoch"]))

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
