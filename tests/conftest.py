"""Shared fixtures: real PostgreSQL and Redis on this machine, and settings that point at them."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Iterator

import asyncpg
import pytest

from cache_edge.server.config import Settings, parse_settings
from tests.services import ensure_services

PG_ADMIN_DSN, REDIS_URL = ensure_services()
TEST_DB = "cache_edge_test"
TEST_DB_B = "cache_edge_test_b"  # a second tenant's database


def redis_db(n: int) -> str:
    """Database ``n`` of the tests' Redis (each test module that flushes owns its own)."""
    return REDIS_URL.rsplit("/", 1)[0] + f"/{n}"


NODE_SECRET = "test-node-secret-0123456789abcdef"

API_KEY_A = "ce_test_key_tenant_a"
API_KEY_B = "ce_test_key_tenant_b"


# Counting executions on the database side: ce_mark(m) logs one row per execution
# through dblink, i.e. over a separate connection, so it works inside the READ ONLY
# transactions the origin uses for cached queries and survives their rollback.
EXEC_LOG_SQL = """
CREATE EXTENSION IF NOT EXISTS dblink;
CREATE TABLE IF NOT EXISTS ce_exec_log (marker text NOT NULL, at timestamptz DEFAULT clock_timestamp());
CREATE INDEX IF NOT EXISTS ce_exec_log_marker ON ce_exec_log (marker);
CREATE OR REPLACE FUNCTION ce_mark(m text) RETURNS text LANGUAGE plpgsql VOLATILE AS $fn$
BEGIN
  PERFORM dblink_exec('@DSN@', format('INSERT INTO ce_exec_log(marker) VALUES (%L)', m));
  RETURN m;
END $fn$;
"""


def _dblink_dsn(db: str) -> str:
    from urllib.parse import urlsplit

    u = urlsplit(PG_ADMIN_DSN)
    return f"host={u.hostname} port={u.port or 5432} user={u.username or 'postgres'} dbname={db}"


async def executions(marker: str, db: str = TEST_DB) -> int:
    """How many times PostgreSQL executed ce_mark(marker)."""
    conn = await asyncpg.connect(dsn_for(db))
    try:
        return int(
            await conn.fetchval("SELECT count(*) FROM ce_exec_log WHERE marker = $1", marker)
        )
    finally:
        await conn.close()


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def dsn_for(db: str) -> str:
    return PG_ADMIN_DSN.rsplit("/", 1)[0] + "/" + db


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def pg_databases() -> Iterator[tuple[str, str]]:
    import asyncio

    async def create() -> None:
        conn = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            for db in (TEST_DB, TEST_DB_B):
                exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", db)
                if not exists:
                    await conn.execute(f'CREATE DATABASE "{db}"')
        finally:
            await conn.close()
        for db in (TEST_DB, TEST_DB_B):
            conn = await asyncpg.connect(dsn_for(db))
            try:
                await conn.execute(EXEC_LOG_SQL.replace("@DSN@", _dblink_dsn(db)))
            finally:
                await conn.close()

    asyncio.run(create())
    yield dsn_for(TEST_DB), dsn_for(TEST_DB_B)


def make_settings_doc(dsn_a: str, dsn_b: str, **sections: dict[str, object]) -> dict[str, object]:
    doc: dict[str, object] = {
        "node_secret": NODE_SECRET,
        "log_level": "warning",
        "tenants": [
            {"id": "acme", "api_keys_sha256": [sha(API_KEY_A)], "database_url": dsn_a},
            {"id": "globex", "api_keys_sha256": [sha(API_KEY_B)], "database_url": dsn_b},
        ],
        "origin": {"listen": f"127.0.0.1:{free_port()}"},
        "node": {"listen": f"127.0.0.1:{free_port()}", "redis_url": REDIS_URL},
    }
    for name, values in sections.items():
        base = doc.setdefault(name, {})
        assert isinstance(base, dict)
        base.update(values)
    return doc


def make_shared_settings_doc(dsn: str, **sections: dict[str, object]) -> dict[str, object]:
    """Like :func:`make_settings_doc`, but both tenants (own keys, own entries) use the same
    database, as two applications or two environments on one database would."""
    return make_settings_doc(dsn, dsn, **sections)


@pytest.fixture(scope="session")
def flushed_redis() -> str:
    import redis

    r = redis.Redis.from_url(REDIS_URL)
    r.flushdb()
    r.close()
    return REDIS_URL


@pytest.fixture
def settings(pg_databases: tuple[str, str]) -> Settings:
    return parse_settings(make_settings_doc(*pg_databases))
