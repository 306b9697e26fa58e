"""A running stack with the PostgreSQL door open, for tests that connect real clients.

``door_stack`` (module scope): an origin and one node whose ``--pg-listen`` port speaks
PostgreSQL; :class:`Door` gives each tenant's connection URL through the node and the
same database's direct URL, so a test can compare what a client sees both ways.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
import pytest

from cache_edge.devtools.exec_log import install_exec_log
from cache_edge.devtools.harness import free_port, wait_port
from cache_edge.devtools.services import redis_child
from tests.conftest import (
    API_KEY_A,
    API_KEY_B,
    PG_ADMIN_DSN,
    TEST_DB,
    TEST_DB_B,
    dsn_for,
    make_settings_doc,
)
from tests.integration.stack import Stack, started

__all__ = [
    "Door",
    "PrivateDoor",
    "door_doc",
    "open_door",
    "private_database",
    "redis_server",
]

KEYS = {"acme": API_KEY_A, "globex": API_KEY_B}
DATABASES = {"acme": TEST_DB, "globex": TEST_DB_B}


@dataclass(frozen=True)
class Door:
    stack: Stack
    host: str
    port: int

    def url(self, tenant: str = "acme", *, key: str | None = None, **params: str) -> str:
        """``postgresql://`` URL of ``tenant`` through the node (libpq, psycopg, asyncpg, pg)."""
        password = quote(key if key is not None else KEYS[tenant], safe="")
        query = "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())
        base = f"postgresql://{tenant}:{password}@{self.host}:{self.port}/{DATABASES[tenant]}"
        return base + (f"?{query}" if query else "")

    def direct(self, tenant: str = "acme") -> str:
        """The same database, straight to PostgreSQL."""
        return dsn_for(DATABASES[tenant])


@dataclass(frozen=True)
class PrivateDoor(Door):
    """A door whose tenant acme uses a database of one test module (``private_database``)."""

    database: str = ""

    def url(self, tenant: str = "acme", *, key: str | None = None, **params: str) -> str:
        assert tenant == "acme", "a private database serves acme only"
        url = super().url(tenant, key=key, **params)
        return url.replace(f"/{TEST_DB}", f"/{self.database}", 1)

    def direct(self, tenant: str = "acme") -> str:
        return dsn_for(self.database)


async def _drop_database(name: str) -> None:
    """Drop ``name`` and its replication slots, which would otherwise keep it (and WAL)
    for ever: also the slot of a setup that timed out while creating it."""
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        for _ in range(100):
            slots = await conn.fetch(
                "SELECT slot_name, active_pid FROM pg_replication_slots WHERE database = $1",
                name,
            )
            if not slots:
                break
            for slot in slots:
                with contextlib.suppress(asyncpg.PostgresError):
                    if slot["active_pid"]:
                        await conn.execute("SELECT pg_terminate_backend($1)", slot["active_pid"])
                    else:
                        await conn.execute("SELECT pg_drop_replication_slot($1)", slot["slot_name"])
            await asyncio.sleep(0.1)
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await conn.close()


async def _create_database(name: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    await install_exec_log(dsn_for(name))


@contextlib.contextmanager
def private_database(name: str) -> Iterator[str]:
    """A database for one test module (with the execution log), dropped afterwards. The
    purge log lives in the tenant's database, so with the shared one, purges made by other
    test processes for the same tenant would void a module's entries while it counts hits."""
    asyncio.run(_drop_database(name))
    asyncio.run(_create_database(name))
    try:
        yield dsn_for(name)
    finally:
        asyncio.run(_drop_database(name))


@contextlib.contextmanager
def redis_server(tmp: Path) -> Iterator[Callable[[int], str]]:
    """A redis-server of one test module; the value is the URL of its database n. Test
    processes running at the same time lease the same databases of the shared Redis (and
    flush them, and keep purge state there for the same tenant ids)."""
    port = free_port()
    child = redis_child(port, tmp / "data", tmp / "redis.log")
    try:
        child.start()
        wait_port(port, child, 10.0)
        yield lambda n: f"redis://127.0.0.1:{port}/{n}"
    finally:
        child.stop()


def door_doc(dsns: tuple[str, str], redis_url: str, **sections: Any) -> dict[str, Any]:
    node = {"redis_url": redis_url, **sections.pop("node", {})}
    return make_settings_doc(*dsns, node=node, **sections)


def open_door(tmp: Path, doc: dict[str, Any], *, workers: int = 1) -> Iterator[Door]:
    """Start an origin and a node with the door on a free port; stop both afterwards."""
    port = free_port()
    extra = ["--pg-listen", f"127.0.0.1:{port}"]
    if workers > 1:
        extra += ["--workers", str(workers)]
    stack = Stack(tmp, doc)
    with started(stack, regions=()) as st:
        st.start_node("local", extra_args=extra)
        yield Door(st, "127.0.0.1", port)


@pytest.fixture(scope="module")
def door(
    tmp_path_factory: pytest.TempPathFactory, pg_databases: tuple[str, str], flushed_redis: str
) -> Iterator[Door]:
    """One stack per test module, door open."""
    yield from open_door(tmp_path_factory.mktemp("door"), door_doc(pg_databases, flushed_redis))
