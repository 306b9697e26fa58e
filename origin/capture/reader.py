"""Capturing every committed write of a database from its WAL, for the tenants on it.

One logical replication slot per database (``pgoutput``), however many tenants share the
database: every opted-in tenant of it has its own sinks (its purges, its change log) fed
from the one slot (origin/core/databases.py says which tenants share a database). Read over
plain SQL with
``pg_logical_slot_peek_binary_changes`` and advanced with ``pg_replication_slot_advance``
only after every sink has handled what was read: delivery is at-least-once, and nothing
committed while no origin was reading is lost, because the slot keeps it.

Origin replicas are interchangeable: each runs a :class:`Capture` per database with an
opted-in tenant, and the one holding a session advisory lock in the database reads the slot; if
it dies, its lock goes with its connection and another replica takes over from the slot's
confirmed position. A slot that PostgreSQL invalidated (``max_slot_wal_keep_size``), that
disappeared, or that fell further behind than ``capture_max_lag_mb`` is replaced, and the
sinks are told to reset (purge everything of each tenant): a gap is never silent. So are
they when the per-tenant slots of an older version are replaced by the database's.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import asyncpg

from cache_edge.server.config import OriginConfig, TenantConfig
from cache_edge.server.logs import get_logger
from cache_edge.server.tasks import stop_tasks
from origin.capture.pgoutput import (
    Begin,
    Commit,
    Delete,
    Insert,
    Relation,
    Truncate,
    Tuple,
    Update,
    format_lsn,
    parse_lsn,
    parse_message,
)
from origin.capture.setup import (
    PUBLICATION,
    drop_slot,
    ensure_slot,
    is_set_up,
    legacy_slot_name,
    slot_name,
)
from origin.core.change_signal import ChangeSignal
from origin.purge_log.log import Acquire

__all__ = ["Capture", "CaptureReport", "CaptureSink", "Change", "DdlEvent", "Transaction"]

log = get_logger("origin.capture.reader")

# Advisory lock key of "the capture reader" in a database ("cecp").
_OWNER_LOCK = 0x63656370
# Changes read per peek; whole transactions are always read, so this may be exceeded.
_PEEK_CHANGES = 20_000
# Rows of one transaction held before they are handed to the sinks in a chunk.
_CHUNK = 5_000
_DDL_TABLE = ("cache_edge", "ddl_log")
_RETRY = 1.0


@dataclass(frozen=True, slots=True)
class Change:
    relation: Relation
    op: str  # insert | update | delete | truncate
    new: Tuple | None = None
    old: Tuple | None = None
    old_is_key: bool = False


@dataclass(frozen=True, slots=True)
class DdlEvent:
    command_tag: str
    kind: str  # 'table': that table changed shape; 'other': dependencies untraceable
    schema: str | None
    name: str | None


@dataclass(slots=True)
class Transaction:
    xid: int
    commit_time: dt.datetime
    commit_lsn: int = 0  # known from its first message: positions its events
    end_lsn: int = 0
    tables: set[str] = field(default_factory=set)  # "schema.name" of every table written
    ddl: list[DdlEvent] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)  # only when a sink wants rows
    # Changes already handed over in chunks (a huge transaction never sits in memory whole);
    # ``changes`` holds the ones after them.
    handed_over: int = 0


class CaptureSink(Protocol):
    """Something that acts on committed transactions; must be idempotent (at-least-once)."""

    async def apply(self, batch: Sequence[Transaction]) -> None: ...

    async def reset(self, reason: str) -> None:
        """History was lost (slot replaced): act as if everything changed."""
        ...

    async def started(self, confirmed_lsn: int) -> None:
        """This replica starts reading the slot after ``confirmed_lsn``."""
        ...

    async def partial(self, txn: Transaction) -> None:
        """Rows of a committed transaction still being read (``txn.changes``, numbered from
        ``txn.handed_over``); ``apply`` gets the rest with the whole transaction."""
        ...


@dataclass(slots=True)
class CaptureReport:
    """What the metrics report for one tenant: the state of its database's capture."""

    tenant: str
    state: str
    lag_bytes: int
    transactions: int
    resets: int


class Capture:
    def __init__(
        self,
        tenants: Sequence[TenantConfig],
        config: OriginConfig,
        sinks: Sequence[CaptureSink],
        *,
        want_rows: bool = False,
        invalidating: Collection[str] = (),
        acquire: Acquire | None = None,
    ) -> None:
        assert tenants, "a capture serves at least one tenant"
        self.tenants = tuple(t.id for t in tenants)
        self._dsn = tenants[0].database_url  # any tenant's URL reaches the database
        self._connect_timeout = config.connect_timeout
        self._interval = config.capture_interval
        self._max_lag = config.capture_max_lag_mb * 1024 * 1024
        self._sinks = list(sinks)
        self._want_rows = want_rows
        self._invalidating = frozenset(invalidating)  # their commits purge implicit table tags
        self._acquire = acquire  # a pooled connection, to see another replica's progress
        self.slot = ""
        self.state = "starting"  # owner | standby | not_set_up | error
        self.processed_lsn = 0  # everything committed before it has reached the sinks
        self.lag_bytes = 0
        self.transactions = 0  # captured transactions that wrote to a table (metrics)
        self.resets = 0
        self._wake = asyncio.Event()
        self._progress = ChangeSignal()
        self._relations: dict[int, Relation] = {}
        self._task: asyncio.Task[None] | None = None

    def invalidates(self, tenant: str) -> bool:
        """Do the tenant's committed writes purge implicit table tags?"""
        return tenant in self._invalidating

    def status(self) -> list[CaptureReport]:
        return [
            CaptureReport(t, self.state, self.lag_bytes, self.transactions, self.resets)
            for t in self.tenants
        ]

    # ------------------------------------------------------------------ control

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        await stop_tasks([self._task])

    def wake(self) -> None:
        """Look for new commits now (a write through this origin just committed)."""
        self._wake.set()

    async def wait_processed(self, lsn: int, timeout: float) -> bool:
        """Wait until everything committed before ``lsn`` reached the sinks (this process
        reads the slot) or was confirmed by whichever replica does; False on timeout."""
        deadline = time.monotonic() + timeout
        self.wake()
        while self.processed_lsn < lsn:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.state in ("not_set_up", "error"):
                return False  # nobody here is capturing: do not make writes wait for it
            if self.state != "owner":
                confirmed = await self._confirmed_elsewhere()
                if confirmed >= lsn:
                    return True
                await asyncio.sleep(min(0.02, remaining))
                continue
            await ChangeSignal.wait(self._progress.take(), min(0.2, remaining))
        return True

    async def _confirmed_elsewhere(self) -> int:
        if self._acquire is None:
            return 0
        with contextlib.suppress(Exception):
            async with self._acquire() as conn:
                text = await conn.fetchval(
                    "SELECT confirmed_flush_lsn::text FROM pg_replication_slots "
                    "WHERE slot_name = $1",
                    self.slot,
                )
            return parse_lsn(text) if text else 0
        return 0

    # --------------------------------------------------------------- ownership

    async def _run(self) -> None:
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(
                    self._dsn,
                    timeout=self._connect_timeout,
                    # Column values arrive as text printed by this session: fix its format.
                    server_settings={
                        "application_name": "cache-edge-capture",
                        "DateStyle": "ISO",
                        "TimeZone": "UTC",
                        "extra_float_digits": "3",
                        "bytea_output": "hex",
                    },
                )
                database = await conn.fetchval("SELECT current_database()")
                self.slot = slot_name(database)
                if not await is_set_up(conn):
                    if self.state != "not_set_up":
                        log.error(
                            "auto_invalidation_not_set_up",
                            tenants=list(self.tenants),
                            hint="run: cache-edge origin setup-auto-invalidation --tenant "
                            + self.tenants[0],
                        )
                    self.state = "not_set_up"
                elif await conn.fetchval("SELECT pg_try_advisory_lock($1)", _OWNER_LOCK):
                    self.state = "owner"
                    log.info("capture_owner", tenants=list(self.tenants), slot=self.slot)
                    await self._replace_legacy_slots(conn, database)
                    await self._read_forever(conn)
                else:
                    self.state = "standby"  # another replica reads the slot
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.state != "error":
                    log.warning("capture_error", tenants=list(self.tenants), error=f"{exc!r}"[:300])
                self.state = "error"
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), 2)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), _RETRY)
            self._wake.clear()

    async def _read_forever(self, conn: asyncpg.Connection) -> None:
        _now, confirmed = await self._check_slot(conn)
        for sink in self._sinks:
            await sink.started(confirmed)
        while True:
            self._wake.clear()
            more = await self._step(conn)
            if not more:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._interval)

    async def _check_slot(self, conn: asyncpg.Connection) -> tuple[int, int]:
        """(current WAL position, slot's confirmed position); replaces a lost slot."""
        row = await conn.fetchrow(
            "SELECT pg_current_wal_lsn()::text AS now, s.confirmed_flush_lsn::text AS confirmed,"
            " s.wal_status FROM (SELECT 1) one LEFT JOIN pg_replication_slots s"
            " ON s.slot_name = $1",
            self.slot,
        )
        assert row is not None
        now = parse_lsn(row["now"])
        reason = None
        if row["confirmed"] is None:
            reason = "slot_missing"
        elif row["wal_status"] == "lost":
            reason = "slot_lost"
        elif now - parse_lsn(row["confirmed"]) > self._max_lag:
            reason = "slot_lag_exceeded"
        if reason is None:
            confirmed = parse_lsn(row["confirmed"])
            self.lag_bytes = now - confirmed
            return now, confirmed
        # Replace first, then purge: writes after the new slot's start are captured by it,
        # writes before are covered by the purge, which commits after the slot exists.
        log.error(
            "capture_slot_replaced", tenants=list(self.tenants), slot=self.slot, reason=reason
        )
        await drop_slot(conn, self.slot)
        await ensure_slot(conn, self.slot)
        await self._reset(reason)
        confirmed_text = await conn.fetchval(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            self.slot,
        )
        confirmed = parse_lsn(confirmed_text)
        self.processed_lsn = max(self.processed_lsn, confirmed)
        self.lag_bytes = 0
        return confirmed, confirmed

    async def _reset(self, reason: str) -> None:
        for sink in self._sinks:
            await sink.reset(reason)
        self.resets += 1

    async def _replace_legacy_slots(self, conn: asyncpg.Connection, database: str) -> None:
        """Older versions read one slot per tenant. What they had not read yet is not in the
        database's slot, so its tenants are purged (and streams get a gap) once, after the
        database's slot exists; then the old slots go (they would keep WAL for ever)."""
        legacy = [legacy_slot_name(t, database) for t in self.tenants]
        found = await conn.fetch(
            "SELECT slot_name FROM pg_replication_slots WHERE slot_name = ANY($1::text[])", legacy
        )
        if not found:
            return
        names = [str(r["slot_name"]) for r in found]
        log.warning(
            "capture_slot_replaced",
            tenants=list(self.tenants),
            slot=self.slot,
            reason="per_tenant_slots",
            replaced=names,
        )
        await ensure_slot(conn, self.slot)
        await self._reset("per_tenant_slots")
        for name in names:
            try:
                await drop_slot(conn, name)
            except asyncpg.ObjectInUseError:
                # An origin of an older version still reads it: it goes once that one stops.
                log.warning("capture_legacy_slot_in_use", slot=name)

    async def _step(self, conn: asyncpg.Connection) -> bool:
        """Read, hand over and confirm one batch; True if more is waiting."""
        now, confirmed = await self._check_slot(conn)
        if now <= confirmed:
            self._processed(confirmed)
            return False
        batch, rows, last_end = await self._peek(conn, now)
        if batch:
            for sink in self._sinks:
                await sink.apply(batch)
            self.transactions += len(batch)
        truncated = rows >= _PEEK_CHANGES
        # A full read covers everything committed before `now`, published or not.
        target = last_end if truncated else now
        if target > confirmed:
            await conn.execute(
                "SELECT pg_replication_slot_advance($1, $2::text::pg_lsn)",
                self.slot,
                format_lsn(target),
            )
        self._processed(target)
        return truncated

    def _processed(self, lsn: int) -> None:
        if lsn > self.processed_lsn:
            self.processed_lsn = lsn
        self._progress.fire()

    async def _peek(
        self, conn: asyncpg.Connection, upto: int
    ) -> tuple[list[Transaction], int, int]:
        batch: list[Transaction] = []
        txn: Transaction | None = None
        rows = 0
        last_end = 0
        # A cursor keeps a huge transaction from being held in memory all at once here.
        async with conn.transaction():
            cursor = conn.cursor(
                "SELECT data FROM pg_logical_slot_peek_binary_changes($1, $2::text::pg_lsn, $3, "
                "'proto_version', '1', 'publication_names', $4)",
                self.slot,
                format_lsn(upto),
                _PEEK_CHANGES,
                PUBLICATION,
                prefetch=1000,
            )
            async for record in cursor:
                rows += 1
                msg = parse_message(record["data"])
                if isinstance(msg, Begin):
                    txn = Transaction(msg.xid, msg.commit_time, msg.final_lsn)
                elif isinstance(msg, Relation):
                    self._relations[msg.oid] = msg
                elif isinstance(msg, Commit):
                    last_end = msg.end_lsn
                    if txn is not None and (txn.tables or txn.ddl):
                        txn.end_lsn = msg.end_lsn
                        batch.append(txn)
                    txn = None
                elif txn is not None and msg is not None:
                    self._add(txn, msg)
                    if len(txn.changes) >= _CHUNK:
                        for sink in self._sinks:
                            await sink.partial(txn)
                        txn.handed_over += len(txn.changes)
                        txn.changes.clear()
        return batch, rows, last_end

    def _add(self, txn: Transaction, msg: Insert | Update | Delete | Truncate) -> None:
        if isinstance(msg, Truncate):
            for oid in msg.relation_oids:
                rel = self._relations.get(oid)
                if rel is not None and rel.schema != "cache_edge":
                    txn.tables.add(rel.qualified)
                    if self._want_rows:
                        txn.changes.append(Change(rel, "truncate"))
            return
        rel = self._relations[msg.relation_oid]
        if rel.schema == "cache_edge":
            # Our own bookkeeping (purge log, region progress) is not user data; the DDL
            # log is how schema changes arrive.
            if (rel.schema, rel.name) == _DDL_TABLE and isinstance(msg, Insert):
                txn.ddl.append(_ddl_event(rel, msg.new))
            return
        txn.tables.add(rel.qualified)
        if not self._want_rows:
            return
        if isinstance(msg, Insert):
            txn.changes.append(Change(rel, "insert", new=msg.new))
        elif isinstance(msg, Update):
            txn.changes.append(Change(rel, "update", msg.new, msg.old, msg.old_is_key))
        else:
            txn.changes.append(Change(rel, "delete", old=msg.old, old_is_key=msg.old_is_key))


def _ddl_event(rel: Relation, row: Tuple) -> DdlEvent:
    values = {col.name: value for col, value in zip(rel.columns, row, strict=False)}

    def text(name: str) -> str | None:
        value = values.get(name)
        return value if isinstance(value, str) else None

    return DdlEvent(
        text("command_tag") or "", text("kind") or "other", text("schema_name"), text("object_name")
    )
