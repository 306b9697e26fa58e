"""The bench database: pgbench tables and ``ce_mark``, which counts executions on the server.

``ce_mark(m)`` logs one row per execution through dblink, i.e. over a separate
connection, so it counts even inside the READ ONLY transactions the origin uses
for cached queries (the same device as tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from urllib.parse import urlsplit

import asyncpg

__all__ = ["EXEC_LOG_SQL", "count_executions", "pgbench_init", "prepare_database"]

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


def _libpq_dsn(dsn: str) -> str:
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


def pgbench_init(pgbench: str | None, dsn: str, scale: int) -> None:
    """``pgbench -i -s SCALE`` into the database of ``dsn``."""
    if pgbench is None:
        raise RuntimeError(
            "pgbench not found: apt-get install -y postgresql-client (or run bench/setup.sh)"
        )
    u = urlsplit(dsn)
    env = {**os.environ}
    if u.password:
        env["PGPASSWORD"] = u.password
    cmd = [
        pgbench,
        "-i",
        "-q",
        "-s",
        str(scale),
        "-h",
        u.hostname or "127.0.0.1",
        "-p",
        str(u.port or 5432),
        "-U",
        u.username or "postgres",
        u.path.lstrip("/"),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"pgbench -i failed:\n{done.stderr[-2000:]}")


async def prepare_database(
    admin_dsn: str, dsn: str, name: str, scale: int, pgbench: str | None
) -> None:
    """Create ``name`` if missing, load pgbench data unless already at ``scale``, add ce_mark."""
    conn = await asyncpg.connect(admin_dsn, timeout=10)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        try:
            branches = await conn.fetchval("SELECT count(*) FROM pgbench_branches")
        except asyncpg.UndefinedTableError:
            branches = 0
        if branches != scale:
            await asyncio.to_thread(pgbench_init, pgbench, dsn, scale)
        await conn.execute(EXEC_LOG_SQL.replace("@DSN@", _libpq_dsn(dsn)))
    finally:
        await conn.close()


async def count_executions(dsn: str, marker: str) -> int:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        sql = "SELECT count(*) FROM ce_exec_log WHERE marker = $1"
        return int(await conn.fetchval(sql, marker))
    finally:
        await conn.close()
