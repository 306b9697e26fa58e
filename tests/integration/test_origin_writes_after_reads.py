"""Uncached writes on a connection whose last request was a cached read (issue 13, E)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from tests.integration.origin_helpers import OriginClient, origin_settings, running_origin

TABLE = "origin_writes_after_reads_t"


@pytest.fixture
async def origin(pg_databases: tuple[str, str]) -> AsyncIterator[OriginClient]:
    conn = await asyncpg.connect(pg_databases[0])
    try:
        await conn.execute(
            f"DROP TABLE IF EXISTS {TABLE};"
            f"CREATE TABLE {TABLE} (id serial PRIMARY KEY, v text NOT NULL);"
            f"INSERT INTO {TABLE} (v) VALUES ('seed')"
        )
    finally:
        await conn.close()
    # One connection, so the write lands where the read left its session read-only.
    settings = origin_settings(pg_databases, pool_max_size=1, pool_min_size=1)
    async with running_origin(settings) as client:
        yield client


@pytest.mark.parametrize(
    "write",
    [
        f"INSERT INTO {TABLE} (v) VALUES ($1) RETURNING id, v",
        f"UPDATE {TABLE} SET v = $1 WHERE id = 1 RETURNING id, v",
        f"WITH w AS (INSERT INTO {TABLE} (v) VALUES ($1) RETURNING id, v) SELECT * FROM w",
    ],
)
async def test_a_write_returning_rows_succeeds_first_time_after_a_cached_read(
    origin: OriginClient, write: str
) -> None:
    assert await origin.rows(f"SELECT v FROM {TABLE} WHERE id = $1", 1) != []
    reply = await origin.query(write, "written", read_only=False)
    assert reply.status == 200, reply.body
    assert reply.body["rows"][0][1] == "written"
    assert await origin.rows(f"SELECT count(*) FROM {TABLE} WHERE v = 'written'") == [[1]]


async def test_reads_and_writes_alternate_on_one_connection(origin: OriginClient) -> None:
    for i in range(5):
        assert await origin.rows(f"SELECT count(*) FROM {TABLE} WHERE v = $1", f"r{i}") == [[0]]
        reply = await origin.query(
            f"INSERT INTO {TABLE} (v) VALUES ($1) RETURNING v", f"r{i}", read_only=False
        )
        assert reply.status == 200, reply.body
        assert reply.body["rows"] == [[f"r{i}"]]
        # A read after the write still finds a read-only session (a cached read must not write).
        refused = await origin.query(f"INSERT INTO {TABLE} (v) VALUES ('no') RETURNING v")
        assert refused.status == 400 and refused.error["code"] == "not_cacheable", refused.body


async def test_a_transaction_after_a_cached_read_writes(origin: OriginClient) -> None:
    assert await origin.rows(f"SELECT count(*) FROM {TABLE} WHERE v = $1", "tx") == [[0]]
    insert = f"INSERT INTO {TABLE} (v) VALUES ($1) RETURNING v"
    reply = await origin.transaction([(insert, ["tx"]), (insert, ["tx"])], "serializable")
    assert reply.status == 200, reply.body
    assert await origin.rows(f"SELECT count(*) FROM {TABLE} WHERE v = $1", "tx") == [[2]]
