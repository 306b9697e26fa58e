"""Counting executions on the database side, for the tests and ``bench/``: ``ce_mark(m)``.

``ce_mark(m)`` logs one row per execution through dblink, i.e. over a separate connection,
so it counts even inside the READ ONLY transactions the origin uses for cached queries,
and survives their rollback. A query that calls it tells how many times PostgreSQL really
ran it, whatever the cache and the coalescing in front did.
"""

from __future__ import annotations

from urllib.parse import urlsplit

__all__ = ["EXEC_LOG_SQL", "count_executions", "install_exec_log", "libpq_dsn"]

EXEC_LOG_SQL = """
CREATE EXTENSION IF NOT EXISTS dblink;
CREATE TABLE IF NOT EXISTS ce_exec_log (
    marker text NOT NULL, at timestamptz DEFAULT clock_timestamp());
CREATE INDEX IF NOT EXISTS ce_exec_log_marker ON ce_exec_log (marker);
CREATE OR REPLACE FUNCTION ce_mark(m text) RETURNS text LANGUAGE plpgsql VOLATILE AS $fn$
BEGIN
  PERFORM dblink_exec('@DSN@', format('INSERT INTO ce_exec_log(marker) VALUES (%L)', m));
  RETURN m;
END $fn$;
"""


def libpq_dsn(dsn: str) -> str:
    """``postgresql://user:pw@host:port/db`` as the key=value string dblink takes."""
    u = urlsplit(dsn)
    parts = [
        f"host={u.hostname or '127.0.0.1'}",
        f"port={u.port or 5432}",
        f"user={u.username or 'postgres'}",
        f"dbname={u.path.lstrip('/')}",
    ]
    if u.password:
        parts.append(f"password={u.password}")
    return " ".join(parts)


async def install_exec_log(dsn: str) -> None:
    """Create ``ce_exec_log`` and ``ce_mark`` in the database of ``dsn`` (idempotent)."""
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute(EXEC_LOG_SQL.replace("@DSN@", libpq_dsn(dsn)))
    finally:
        await conn.close()


async def count_executions(dsn: str, marker: str) -> int:
    """How many times PostgreSQL executed ``ce_mark(marker)`` in the database of ``dsn``."""
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        sql = "SELECT count(*) FROM ce_exec_log WHERE marker = $1"
        return int(await conn.fetchval(sql, marker))
    finally:
        await conn.close()
