"""WAL capture for the bench tenant: the real setup command before a scenario, removal after.

Automatic invalidation and change streams read the database's WAL through a replication
slot (docs/auto-invalidation.md). A slot left behind would keep WAL for ever, so the
removal runs whatever happens, after the scenario's servers have stopped, and slots an
interrupted earlier run left in the bench database are dropped first.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import asyncpg

from bench.context import BENCH_DB, TENANT, Context
from bench.scenarios.base import Skip
from bench.stack import Stack
from cache_edge.devtools.harness import ProcessFailed, python_cmd

__all__ = ["capture_tenant", "table"]


def _setup_cli(ctx: Context, config: str, action: str) -> subprocess.CompletedProcess[str]:
    cmd = python_cmd("cache_edge.cli", "origin", action, "--tenant", TENANT, "--config", config)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ctx.root)


async def _drop_stale_slots(admin_dsn: str) -> None:
    conn = await asyncpg.connect(admin_dsn, timeout=10)
    try:
        for slot in await conn.fetch(
            "SELECT slot_name FROM pg_replication_slots WHERE database = $1 AND NOT active",
            BENCH_DB,
        ):
            await conn.execute("SELECT pg_drop_replication_slot($1)", slot["slot_name"])
    finally:
        await conn.close()


@contextmanager
def capture_tenant(st: Stack, flags: dict[str, Any]) -> Iterator[None]:
    """Set up the capture for the bench tenant; on exit stop ``st``'s servers and remove it.

    ``flags`` are the tenant's (``auto_invalidation``/``change_streams``) for the config
    the scenario's servers use; the setup itself only needs the tenant's database.
    """
    ctx = st.ctx
    dsn = ctx.bench_dsn()
    ctx.step("setting up WAL capture (cache-edge origin setup-auto-invalidation)")
    asyncio.run(_drop_stale_slots(ctx.pg_admin_dsn))
    config = str(st.config(dsn, tenant=flags, name="capture-setup.toml"))
    done = _setup_cli(ctx, config, "setup-auto-invalidation")
    if done.returncode != 0:
        if "wal_level" in done.stderr:
            raise Skip(done.stderr.strip().splitlines()[-1])
        raise ProcessFailed(f"setup-auto-invalidation failed:\n{done.stderr[-1500:]}")
    try:
        yield
    except BaseException:
        _remove(st, config, strict=False)  # the scenario's own error is the one to see
        raise
    _remove(st, config, strict=True)


def _remove(st: Stack, config: str, strict: bool) -> None:
    st.stop_all()  # the origin reads the slot: stop it before the slot is dropped
    removed = _setup_cli(st.ctx, config, "remove-auto-invalidation")
    if removed.returncode != 0 and strict:
        raise ProcessFailed(f"remove-auto-invalidation failed:\n{removed.stderr[-1500:]}")


def table(dsn: str, ddl: str) -> None:
    """Run ``ddl`` (several statements) in the bench database."""

    async def run() -> None:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            await conn.execute(ddl)
        finally:
            await conn.close()

    asyncio.run(run())
