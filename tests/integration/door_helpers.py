"""A running stack with the PostgreSQL door open, for tests that connect real clients.

``door_stack`` (module scope): an origin and one node whose ``--pg-listen`` port speaks
PostgreSQL; :class:`Door` gives each tenant's connection URL through the node and the
same database's direct URL, so a test can compare what a client sees both ways.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from cache_edge.devtools.harness import free_port
from tests.conftest import API_KEY_A, API_KEY_B, TEST_DB, TEST_DB_B, dsn_for, make_settings_doc
from tests.integration.stack import Stack, started

__all__ = ["Door", "door_doc", "open_door"]

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
