"""The bench database: pgbench tables and ``ce_mark``, which counts executions on the server
(:mod:`cache_edge.devtools.exec_log`, which the tests use too)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from urllib.parse import urlsplit

import asyncpg

from cache_edge.devtools.exec_log import install_exec_log

__all__ = ["pgbench_init", "prepare_database"]


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
    finally:
        await conn.close()
    await install_exec_log(dsn)
