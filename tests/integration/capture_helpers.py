"""Databases with WAL capture (automatic invalidation, change streams) for integration tests."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg

from cache_edge.devtools.harness import cache_edge_cmd
from origin.capture.setup import slot_name
from tests.conftest import PG_ADMIN_DSN, dsn_for
from tests.integration.stack import Stack, started


async def prepare_database(name: str, schema: str) -> None:
    """Create ``name`` if needed, drop slots an interrupted earlier run left (they would keep
    WAL forever), and run ``schema``."""
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await admin.execute(f'CREATE DATABASE "{name}"')
        for slot in await admin.fetch(
            "SELECT slot_name FROM pg_replication_slots WHERE database = $1 AND NOT active", name
        ):
            await admin.execute("SELECT pg_drop_replication_slot($1)", slot["slot_name"])
    finally:
        await admin.close()
    await execute(name, schema)


async def execute(database: str, sql: str, *args: Any) -> None:
    """A statement on its own connection: a write that bypasses cache-edge entirely."""
    conn = await asyncpg.connect(dsn_for(database))
    try:
        await conn.execute(sql, *args)
    finally:
        await conn.close()


def origin_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``cache-edge origin --config <config> <args>``, e.g. setup-auto-invalidation."""
    return subprocess.run(
        cache_edge_cmd("origin", config, *args),
        capture_output=True,
        text=True,
        timeout=60,
    )


async def captured(database: str, tenant: str = "acme") -> None:
    """Wait until the capture of ``database`` (one for all its tenants) has read, and acted
    on, everything committed so far: it confirms its slot only after its sinks handled what
    it read. ``tenant`` is unused: the slot belongs to the database."""
    del tenant
    conn = await asyncpg.connect(dsn_for(database))
    try:
        target = await conn.fetchval("SELECT pg_current_wal_lsn()")
        confirmed = None
        for _ in range(500):
            confirmed = await conn.fetchval(
                "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = $1",
                slot_name(database),
            )
            if confirmed is not None and confirmed >= target:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"the capture never reached {target} (at {confirmed})")
    finally:
        await conn.close()


@contextlib.contextmanager
def running_with_capture(
    st: Stack, tenants: Sequence[str], regions: Sequence[tuple[str, str]]
) -> Iterator[Stack]:
    """Set up WAL capture for ``tenants`` with the real setup command, start the origin and
    one node per (region, Redis URL); stop them all and remove the capture afterwards (a
    slot nobody reads would keep WAL for ever)."""
    for tenant in tenants:
        setup = origin_cli(st.config, "setup-auto-invalidation", "--tenant", tenant)
        assert setup.returncode == 0, setup.stderr
        assert f"automatic invalidation is set up for tenant '{tenant}'" in setup.stdout
    try:
        with started(st, regions):
            yield st
    finally:
        for tenant in tenants:
            removed = origin_cli(st.config, "remove-auto-invalidation", "--tenant", tenant)
            assert removed.returncode == 0, removed.stderr
