"""Shared fixtures: real PostgreSQL and Redis on this machine, and settings that point at them."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator

import pytest

from cache_edge.devtools.exec_log import count_executions, install_exec_log
from cache_edge.devtools.harness import free_port
from cache_edge.server.config import Settings, parse_settings
from tests.services import ensure_services

PG_ADMIN_DSN, REDIS_URL = ensure_services()
TEST_DB = "cache_edge_test"
TEST_DB_B = "cache_edge_test_b"  # a second tenant's database

NODE_SECRET = "test-node-secret-0123456789abcdef"

API_KEY_A = "ce_test_key_tenant_a"
API_KEY_B = "ce_test_key_tenant_b"


# ------------------------------------------------------------------ Redis databases


class RedisDatabases:
    """The tests' Redis databases, handed out by one allocator: a test module leases its
    own (the ``redis_dbs`` fixture) and gives them back, emptied, when it ends. No two
    modules ever hold the same database, and no test file names a database number.

    The pool is databases 8-15 of the tests' Redis (a machine's Redis has 16; 0-7 are left
    to whatever else uses it) but ``REDIS_URL``'s own (15 unless told): that one is the
    settings' default, for tests that start no node, and is never leased."""

    def __init__(self, url: str, numbers: Iterable[int]) -> None:
        self._base = url.rsplit("/", 1)[0]
        self._free = list(numbers)
        self._holders: dict[int, str] = {}

    def url(self, number: int) -> str:
        return f"{self._base}/{number}"

    def take(self, holder: str) -> int:
        if not self._free:
            raise RuntimeError(f"no free Redis database for {holder}: held by {self._holders}")
        number = self._free.pop(0)
        self._holders[number] = holder
        return number

    def give_back(self, number: int) -> None:
        del self._holders[number]
        self._free.append(number)

    def lease(self, holder: str) -> RedisLease:
        return RedisLease(self, holder)


class RedisLease:
    """One test module's Redis databases, by name: ``redis_dbs("region-a")`` is the URL of
    its database "region-a", leased and emptied on first use."""

    def __init__(self, pool: RedisDatabases, holder: str) -> None:
        self._pool = pool
        self._holder = holder
        self._numbers: dict[str, int] = {}

    def __call__(self, name: str = "main") -> str:
        if name not in self._numbers:
            self._numbers[name] = self._pool.take(f"{self._holder}[{name}]")
            _flush(self._pool.url(self._numbers[name]))
        return self._pool.url(self._numbers[name])

    def fresh(self, name: str = "main") -> str:
        """The URL of database ``name``, emptied now (for a test that must start clean)."""
        url = self(name)
        _flush(url)
        return url

    def release(self) -> None:
        for number in self._numbers.values():
            _flush(self._pool.url(number))
            self._pool.give_back(number)
        self._numbers.clear()


def _flush(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


_OWN_DB = int(REDIS_URL.rsplit("/", 1)[1] or 0)
_REDIS_DATABASES = RedisDatabases(REDIS_URL, (n for n in range(8, 16) if n != _OWN_DB))


@pytest.fixture(scope="module")
def redis_dbs(request: pytest.FixtureRequest) -> Iterator[RedisLease]:
    """This test module's own Redis databases (see :class:`RedisDatabases`)."""
    lease = _REDIS_DATABASES.lease(request.module.__name__)
    try:
        yield lease
    finally:
        lease.release()


@pytest.fixture(scope="module")
def flushed_redis(redis_dbs: RedisLease) -> str:
    """This module's main Redis database, empty when the module starts."""
    return redis_dbs()


# ------------------------------------------------------------------ PostgreSQL


async def executions(marker: str, db: str = TEST_DB) -> int:
    """How many times PostgreSQL executed ce_mark(marker) (cache_edge.devtools.exec_log)."""
    return await count_executions(dsn_for(db), marker)


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def dsn_for(db: str) -> str:
    return PG_ADMIN_DSN.rsplit("/", 1)[0] + "/" + db


@pytest.fixture(scope="session")
def pg_databases() -> Iterator[tuple[str, str]]:
    import asyncio

    import asyncpg

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
            await install_exec_log(dsn_for(db))

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


@pytest.fixture
def settings(pg_databases: tuple[str, str]) -> Settings:
    return parse_settings(make_settings_doc(*pg_databases))
