"""The change-stream history of one tenant: captured row changes, kept for a while.

The capture hands every batch of committed changes to :class:`ChangeLog` before it
advances the slot; the log stores them in ``cache_edge.changes`` in the tenant's own
database, so any origin replica can answer polls. Tenants sharing a database share its
capture but not their history: every row and every floor is the tenant's own.
The table is UNLOGGED: storing events costs no WAL (which the capture would decode
again) and they need no replication. A PostgreSQL crash empties it, and its floor with
it, so resuming clients get ``stream_gap`` instead of a silent gap
(docs/change-streams.md).

Cursors are ``<commit LSN, 16 hex digits>-<index in transaction, 8 hex digits>``: they
sort as strings in commit order. The commit LSN is known from a transaction's first
message, so a huge transaction is stored in chunks as it is read.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any

import asyncpg

from cache_edge.common.errors import BadRequest, StreamGap
from cache_edge.common.protocol import MAX_POLL
from cache_edge.common.wire import packb, unpackb
from cache_edge.server.logs import get_logger
from origin.capture.pgoutput import UNCHANGED, Relation, Tuple, format_lsn
from origin.capture.reader import Change, Transaction
from origin.capture.text_values import decode_text
from origin.core.change_signal import ChangeSignal
from origin.purge_log.log import Acquire

__all__ = ["CHANGES_CHANNEL", "ChangeLog", "format_cursor", "parse_cursor"]

log = get_logger("origin.capture.change_log")

CHANGES_CHANNEL = "cache_edge_changes"
_CURSOR = re.compile(r"^([0-9A-F]{16})-([0-9A-F]{8})$")
_PRUNE_EVERY = 10.0

_SCHEMA_SQL = """
CREATE SCHEMA IF NOT EXISTS cache_edge;
-- History from before it was kept per tenant cannot be attributed: it goes, and with its
-- floor, so a cursor from then gets stream_gap (docs/decisions.md).
DO $migrate$
BEGIN
    IF to_regclass('cache_edge.changes') IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass('cache_edge.changes')
        AND attname = 'tenant' AND NOT attisdropped) THEN
        DROP TABLE cache_edge.changes;
    END IF;
    IF to_regclass('cache_edge.changes_floor') IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass('cache_edge.changes_floor')
        AND attname = 'tenant' AND NOT attisdropped) THEN
        DROP TABLE cache_edge.changes_floor;
    END IF;
END
$migrate$;
CREATE UNLOGGED TABLE IF NOT EXISTS cache_edge.changes (
    tenant      text NOT NULL,
    lsn         bigint NOT NULL,
    idx         integer NOT NULL,
    xid         bigint NOT NULL,
    commit_time timestamptz NOT NULL,
    tbl         text NOT NULL,
    op          text NOT NULL,
    payload     bytea NOT NULL,
    PRIMARY KEY (tenant, lsn, idx)
);
CREATE INDEX IF NOT EXISTS changes_tenant_commit_time ON cache_edge.changes (tenant, commit_time);
-- Every event of the tenant after position (lsn, idx) is in cache_edge.changes; a cursor
-- before it may have missed events (pruned, or lost with a replaced slot): stream_gap.
CREATE UNLOGGED TABLE IF NOT EXISTS cache_edge.changes_floor (
    tenant text PRIMARY KEY,
    lsn    bigint NOT NULL,
    idx    integer NOT NULL DEFAULT 0
);
"""
_LOCK_KEY = 0x63656368  # serialises schema creation ("cech")
_LAST_IDX = 2**31 - 1  # "every event of this transaction": a pruned one is gone whole


def format_cursor(lsn: int, idx: int) -> str:
    return f"{lsn:016X}-{idx:08X}"


def parse_cursor(text: str) -> tuple[int, int]:
    m = _CURSOR.match(text)
    if m is None:
        raise BadRequest(
            "cursor must be a change-stream cursor like 00000000032D5858-00000001", field="cursor"
        )
    return int(m.group(1), 16), int(m.group(2), 16)


def _row(rel: Relation, values: Tuple | None) -> tuple[dict[str, Any] | None, list[str]]:
    if values is None:
        return None, []
    row: dict[str, Any] = {}
    unchanged: list[str] = []
    for col, value in zip(rel.columns, values, strict=False):
        if value is UNCHANGED:
            unchanged.append(col.name)
        elif isinstance(value, str):
            row[col.name] = decode_text(col.type_oid, value)
        else:
            row[col.name] = None
    return row, unchanged


def _payload(change: Change) -> bytes:
    new, unchanged = _row(change.relation, change.new)
    old, _ = _row(change.relation, change.old)
    if change.old is not None and change.old_is_key:
        # A key tuple has every column, NULL where not part of the key: keep the key only.
        keys = {c.name for c in change.relation.columns if c.key}
        old = {k: v for k, v in (old or {}).items() if k in keys}
    return packb({"new": new, "old": old, "oldIsKey": change.old_is_key, "unchanged": unchanged})


class ChangeLog:
    """Sink (capture side) and history (poll side) of one tenant's change stream."""

    def __init__(self, tenant: str, acquire: Acquire, *, retention: float) -> None:
        self._tenant = tenant
        self._acquire = acquire
        self._retention = retention
        self._schema_ready = False
        self._changed = ChangeSignal()
        self._pruned_at = 0.0
        self.events = 0  # events stored by this replica (metrics)

    def close(self) -> None:
        """The origin is stopping: end long-polls now (nodes poll again elsewhere)."""
        self._changed.close()

    def notify_changed(self) -> None:
        self._changed.fire()

    async def _ensure_schema(self, conn: asyncpg.Connection) -> None:
        if not self._schema_ready:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
                await conn.execute(_SCHEMA_SQL)
            self._schema_ready = True

    # ------------------------------------------------------------ capture side

    async def started(self, confirmed_lsn: int) -> None:
        """The capture starts reading after ``confirmed_lsn``: history is complete from there
        unless it has a floor already (then the table holds what came before)."""
        async with self._acquire() as conn:
            await self._ensure_schema(conn)
            await conn.execute(
                "INSERT INTO cache_edge.changes_floor (tenant, lsn, idx) VALUES ($1, $2, $3) "
                "ON CONFLICT DO NOTHING",
                self._tenant,
                # Just before the first position a transaction after it can have.
                confirmed_lsn - 1,
                _LAST_IDX,
            )

    async def partial(self, txn: Transaction) -> None:
        await self.apply([txn])

    async def apply(self, batch: Sequence[Transaction]) -> None:
        records = []
        for txn in batch:
            for idx, change in enumerate(txn.changes, start=txn.handed_over):
                records.append(
                    (
                        self._tenant,
                        txn.commit_lsn,
                        idx,
                        txn.xid,
                        txn.commit_time,
                        change.relation.qualified,
                        change.op,
                        _payload(change),
                    )
                )
        if not records:
            return
        async with self._acquire() as conn:
            await self._ensure_schema(conn)
            async with conn.transaction():
                # At-least-once: a batch written before a crash is written again; the key
                # (lsn, idx) makes that a no-op.
                await conn.execute(
                    "CREATE TEMP TABLE IF NOT EXISTS ce_changes_in "
                    "(LIKE cache_edge.changes) ON COMMIT DELETE ROWS"
                )
                await conn.copy_records_to_table("ce_changes_in", records=records)
                await conn.execute(
                    "INSERT INTO cache_edge.changes SELECT * FROM ce_changes_in "
                    "ON CONFLICT DO NOTHING"
                )
                await conn.execute("SELECT pg_notify($1, $2)", CHANGES_CHANNEL, self._tenant)
            await self._prune(conn)
        self.events += len(records)
        self.notify_changed()

    async def reset(self, reason: str) -> None:
        """History was lost: every cursor before now is a gap."""
        async with self._acquire() as conn:
            await self._ensure_schema(conn)
            async with conn.transaction():
                latest = await conn.fetchval(
                    "SELECT coalesce(max(lsn), 0) FROM cache_edge.changes WHERE tenant = $1",
                    self._tenant,
                )
                await conn.execute(
                    "INSERT INTO cache_edge.changes_floor (tenant, lsn, idx) VALUES ($1, $2, 0) "
                    "ON CONFLICT (tenant) DO UPDATE SET lsn = $2, idx = 0 "
                    "WHERE changes_floor.lsn < $2",
                    self._tenant,
                    int(latest) + 1,
                )
        log.warning("change_stream_gap", tenant=self._tenant, reason=reason)
        self.notify_changed()

    async def _prune(self, conn: asyncpg.Connection) -> None:
        if time.monotonic() - self._pruned_at < _PRUNE_EVERY:
            return
        self._pruned_at = time.monotonic()
        async with conn.transaction():
            pruned = await conn.fetchval(
                "WITH gone AS (DELETE FROM cache_edge.changes WHERE tenant = $1 "
                "AND commit_time < now() - make_interval(secs => $2) RETURNING lsn) "
                "SELECT max(lsn) FROM gone",
                self._tenant,
                self._retention,
            )
            if pruned is not None:
                await conn.execute(
                    "UPDATE cache_edge.changes_floor SET lsn = $2, idx = $3 "
                    "WHERE tenant = $1 AND lsn <= $2",
                    self._tenant,
                    int(pruned),
                    _LAST_IDX,
                )

    # --------------------------------------------------------------- poll side

    async def poll(
        self,
        after: str | None,
        tables: list[str] | None,
        ops: list[str] | None,
        wait: float,
        limit: int = MAX_POLL,
    ) -> dict[str, Any]:
        """Events after ``after`` (``None``: none, just the current tail cursor)."""
        deadline = time.monotonic() + wait
        position = parse_cursor(after) if after is not None else None
        while True:
            changed = self._changed.take()
            async with self._acquire() as conn:
                await self._ensure_schema(conn)
                floor_row = await conn.fetchrow(
                    "SELECT lsn, idx FROM cache_edge.changes_floor WHERE tenant = $1", self._tenant
                )
                floor = (int(floor_row["lsn"]), int(floor_row["idx"])) if floor_row else None
                if position is None:
                    if tables:
                        await _check_exist(conn, tables)
                    tail = await conn.fetchrow(
                        "SELECT lsn, idx FROM cache_edge.changes WHERE tenant = $1 "
                        "ORDER BY lsn DESC, idx DESC LIMIT 1",
                        self._tenant,
                    )
                    start = (
                        (int(tail["lsn"]), int(tail["idx"]))
                        if tail is not None
                        else (floor or (0, 0))
                    )
                    return {"events": [], "cursor": format_cursor(*start)}
                if floor is None or position < floor:
                    raise StreamGap(
                        f"cursor {after} is older than the retained change history; "
                        "resubscribe without a cursor (and reload state) to continue"
                    )
                rows = await conn.fetch(
                    "SELECT lsn, idx, xid, commit_time, tbl, op, payload FROM cache_edge.changes "
                    "WHERE tenant = $6 AND (lsn, idx) > ($1, $2) "
                    "AND ($3::text[] IS NULL OR tbl = ANY($3)) "
                    "AND ($4::text[] IS NULL OR op = ANY($4)) ORDER BY lsn, idx LIMIT $5",
                    position[0],
                    position[1],
                    tables,
                    ops,
                    limit,
                    self._tenant,
                )
            if rows or time.monotonic() >= deadline or self._changed.closed:
                break
            await ChangeSignal.wait(changed, min(1.0, deadline - time.monotonic()))
        events = [_event(r) for r in rows]
        cursor = events[-1]["cursor"] if events else after
        return {"events": events, "cursor": cursor}


def _event(row: asyncpg.Record) -> dict[str, Any]:
    payload = unpackb(row["payload"])
    return {
        "cursor": format_cursor(int(row["lsn"]), int(row["idx"])),
        "table": row["tbl"],
        "op": row["op"],
        **payload,
        "xid": int(row["xid"]),
        "commitTime": row["commit_time"],
        "lsn": format_lsn(int(row["lsn"])),
    }


async def _check_exist(conn: asyncpg.Connection, tables: list[str]) -> None:
    # Exact names, as PostgreSQL stores them (and as change events carry them).
    missing = await conn.fetch(
        "SELECT t FROM unnest($1::text[]) AS t WHERE NOT EXISTS (SELECT 1 FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = split_part(t, '.', 1) "
        "AND c.relname = split_part(t, '.', 2) AND c.relkind IN ('r', 'p'))",
        tables,
    )
    if missing:
        names = ", ".join(r["t"] for r in missing)
        raise BadRequest(f"no such table in this tenant's database: {names}", field="tables")
