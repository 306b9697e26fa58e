"""Setting up and removing what automatic invalidation needs in a tenant's database.

``cache-edge origin setup-auto-invalidation --tenant T`` runs :func:`setup`: it checks
``wal_level``, creates the publication the capture reads, the DDL log with the event
triggers that fill it, and the replication slot. :func:`remove` drops all of them. Both
are idempotent. All of it belongs to the tenant's *database*: one slot serves every tenant
of a database (origin/core/databases.py), so removing it for one tenant keeps it while other
tenants of the database still use it. See docs/auto-invalidation.md for why these pieces.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import asyncpg
import xxhash

from cache_edge.common.errors import CaptureUnavailable

__all__ = [
    "PUBLICATION",
    "SetupReport",
    "cache_edge_slots",
    "legacy_slot_name",
    "remove",
    "setup",
    "slot_name",
]

PUBLICATION = "cache_edge"

# Schema changes are not in pgoutput's stream, so event triggers write them into an
# ordinary table whose inserts arrive through the slot in commit order with the data.
# kind: 'table' (its rows may have changed shape or meaning: purge that table) or
# 'other' (a view, function, policy, type...: dependencies cannot be traced, purge all).
_DDL_SQL = r"""
CREATE SCHEMA IF NOT EXISTS cache_edge;
CREATE TABLE IF NOT EXISTS cache_edge.ddl_log (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    command_tag text NOT NULL,
    kind        text NOT NULL,
    schema_name text,
    object_name text
);

CREATE OR REPLACE FUNCTION cache_edge.log_ddl() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $fn$
DECLARE
    cmd record;
    rel record;
BEGIN
    FOR cmd IN SELECT * FROM pg_event_trigger_ddl_commands() LOOP
        CONTINUE WHEN cmd.in_extension OR cmd.schema_name IN ('cache_edge', 'pg_temp')
            OR cmd.schema_name LIKE 'pg_temp%';
        IF cmd.classid = 'pg_class'::regclass THEN
            SELECT c.relkind, n.nspname, c.relname INTO rel
              FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.oid = cmd.objid;
            CONTINUE WHEN NOT FOUND OR rel.relkind IN ('i', 'I', 'S', 't', 'c');
            INSERT INTO cache_edge.ddl_log (command_tag, kind, schema_name, object_name)
            VALUES (cmd.command_tag,
                    CASE WHEN rel.relkind IN ('r', 'p', 'm', 'f') THEN 'table' ELSE 'other' END,
                    rel.nspname, rel.relname);
        ELSIF cmd.object_type NOT IN ('index', 'sequence', 'trigger', 'statistics object',
                                      'publication', 'publication relation', 'event trigger',
                                      'role', 'subscription') THEN
            INSERT INTO cache_edge.ddl_log (command_tag, kind, schema_name, object_name)
            VALUES (cmd.command_tag, 'other', cmd.schema_name, cmd.object_identity);
        END IF;
    END LOOP;
EXCEPTION WHEN OTHERS THEN
    -- Never make a user's DDL fail because of the cache; say so loudly instead.
    RAISE WARNING 'cache_edge: could not log a schema change (%): cached results may be stale',
        SQLERRM;
END
$fn$;

CREATE OR REPLACE FUNCTION cache_edge.log_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $fn$
DECLARE
    obj record;
BEGIN
    FOR obj IN SELECT * FROM pg_event_trigger_dropped_objects() LOOP
        CONTINUE WHEN NOT obj.original OR obj.is_temporary
            OR obj.schema_name IS NOT DISTINCT FROM 'cache_edge'
            OR obj.object_type IN ('index', 'sequence', 'trigger', 'statistics object',
                                   'publication relation', 'default value', 'table constraint',
                                   'index column');
        INSERT INTO cache_edge.ddl_log (command_tag, kind, schema_name, object_name)
        VALUES (TG_TAG,
                CASE WHEN obj.object_type IN ('table', 'materialized view', 'foreign table')
                     THEN 'table' ELSE 'other' END,
                obj.schema_name, obj.object_name);
    END LOOP;
EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'cache_edge: could not log a dropped object (%): cached results may be stale',
        SQLERRM;
END
$fn$;

DROP EVENT TRIGGER IF EXISTS cache_edge_ddl;
CREATE EVENT TRIGGER cache_edge_ddl ON ddl_command_end EXECUTE FUNCTION cache_edge.log_ddl();
DROP EVENT TRIGGER IF EXISTS cache_edge_drop;
CREATE EVENT TRIGGER cache_edge_drop ON sql_drop EXECUTE FUNCTION cache_edge.log_drop();
"""

_REMOVE_SQL = """
DROP EVENT TRIGGER IF EXISTS cache_edge_ddl;
DROP EVENT TRIGGER IF EXISTS cache_edge_drop;
DROP FUNCTION IF EXISTS cache_edge.log_ddl();
DROP FUNCTION IF EXISTS cache_edge.log_drop();
DROP TABLE IF EXISTS cache_edge.ddl_log;
DROP PUBLICATION IF EXISTS cache_edge;
"""


@dataclass(frozen=True, slots=True)
class SetupReport:
    slot: str
    created_slot: bool
    max_slot_wal_keep_size: str
    advice: tuple[str, ...]


def slot_name(database: str) -> str:
    """One slot per database; slot names are cluster-wide, so the database is in it."""
    return f"cache_edge_{xxhash.xxh32_hexdigest(database.encode())}"


def legacy_slot_name(tenant: str, database: str) -> str:
    """The slot older versions made per tenant (the capture replaces it by the database's)."""
    clean = re.sub(r"[^a-z0-9_]", "_", tenant.lower())[:32]
    return f"cache_edge_{clean}_{xxhash.xxh32_hexdigest(database.encode())}"


async def cache_edge_slots(conn: asyncpg.Connection) -> list[str]:
    """Names of the ``cache_edge_*`` replication slots of the connection's database."""
    rows = await conn.fetch(
        "SELECT slot_name FROM pg_replication_slots "
        "WHERE database = current_database() AND slot_name LIKE 'cache\\_edge\\_%' "
        "ORDER BY slot_name"
    )
    return [str(r["slot_name"]) for r in rows]


async def check_wal_level(conn: asyncpg.Connection) -> None:
    level = await conn.fetchval("SHOW wal_level")
    if level != "logical":
        raise CaptureUnavailable(
            f"wal_level is {level!r}; automatic invalidation needs 'logical'. Run "
            '"ALTER SYSTEM SET wal_level = logical" as a superuser and restart PostgreSQL '
            "(on a managed service, enable logical replication in its settings)."
        )


async def setup(conn: asyncpg.Connection, tenant: str) -> SetupReport:
    """Create publication, DDL log and event triggers, and the database's slot (all
    idempotent; a database already set up for another tenant is set up for this one)."""
    await check_wal_level(conn)
    database = await conn.fetchval("SELECT current_database()")
    slot = slot_name(database)
    try:
        async with conn.transaction():
            if not await conn.fetchval(
                "SELECT true FROM pg_publication WHERE pubname = $1", PUBLICATION
            ):
                await conn.execute(f"CREATE PUBLICATION {PUBLICATION} FOR ALL TABLES")
            # A write to any partition arrives as a write to its partitioned table, which is
            # what cached results that read any of its partitions are tagged with.
            await conn.execute(
                f"ALTER PUBLICATION {PUBLICATION} SET (publish_via_partition_root = true)"
            )
            await conn.execute(_DDL_SQL)
    except asyncpg.InsufficientPrivilegeError as exc:
        raise CaptureUnavailable(
            f"not allowed to set up automatic invalidation ({exc}); run the setup as a "
            "superuser (publications FOR ALL TABLES and event triggers need one)"
        ) from None
    # Outside any transaction: creating a logical slot must not follow writes in one.
    created = await ensure_slot(conn, slot)
    keep = str(await conn.fetchval("SHOW max_slot_wal_keep_size"))
    advice = []
    if keep == "-1":
        advice.append(
            "max_slot_wal_keep_size is unlimited: if no origin reads the slot for a long time, "
            "PostgreSQL keeps WAL for it without bound. Set it, e.g. "
            "\"ALTER SYSTEM SET max_slot_wal_keep_size = '10GB'\"; SELECT pg_reload_conf();"
            " (a slot that falls past it is replaced and the tenant's cache purged)."
        )
    return SetupReport(slot, created, keep, tuple(advice))


async def ensure_slot(conn: asyncpg.Connection, slot: str) -> bool:
    """Create the slot if it is missing; True if it was created."""
    if await conn.fetchval("SELECT true FROM pg_replication_slots WHERE slot_name = $1", slot):
        return False
    try:
        await conn.execute("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", slot)
    except asyncpg.DuplicateObjectError:
        return False  # another replica created it a moment ago
    return True


async def drop_slot(conn: asyncpg.Connection, slot: str) -> None:
    if await conn.fetchval("SELECT true FROM pg_replication_slots WHERE slot_name = $1", slot):
        await conn.execute("SELECT pg_drop_replication_slot($1)", slot)


async def remove(conn: asyncpg.Connection, tenant: str, *, still_used_by: bool = False) -> str:
    """Drop the slot, the triggers, the DDL log and the publication; returns the slot name.

    ``still_used_by``: other configured tenants of this database still read the slot, so
    only what belonged to ``tenant`` alone (a slot of an older version) is dropped.
    """
    database = await conn.fetchval("SELECT current_database()")
    await drop_slot(conn, legacy_slot_name(tenant, database))
    slot = slot_name(database)
    if still_used_by:
        return slot
    await drop_slot(conn, slot)
    # Older versions' per-tenant slots of tenants not in this config may still read them.
    if not await cache_edge_slots(conn):
        async with conn.transaction():
            await conn.execute(_REMOVE_SQL)
    return slot


async def is_set_up(conn: asyncpg.Connection) -> bool:
    return bool(
        await conn.fetchval("SELECT true FROM pg_publication WHERE pubname = $1", PUBLICATION)
    ) and bool(await conn.fetchval("SELECT to_regclass('cache_edge.ddl_log') IS NOT NULL"))
