"""The SDK against a real node, origin, PostgreSQL and Redis: exact types, cache info, errors."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from cache_edge.client import AsyncClient, CacheStrategy, Client
from cache_edge.common.errors import QueryError, Unauthorized
from tests.conftest import API_KEY_A
from tests.integration.node_helpers import node_doc
from tests.integration.stack import running_stack

# (SQL type, value sent as a parameter); each comes back in a column of that type.
TYPED: list[tuple[str, Any]] = [
    ("int8", 9_007_199_254_740_993),  # beyond a float's exact integers
    ("numeric", Decimal("12345.678900")),  # the scale survives
    ("float8", 1.5e300),
    ("bool", True),
    ("text", "héllo ✓ 'quoted' \\ back"),
    ("bytea", b"\x00\xffbin\x80"),
    ("date", dt.date(2024, 2, 29)),
    ("time", dt.time(23, 59, 58, 123456)),
    ("timetz", dt.time(1, 2, 3, 4, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30)))),
    ("timestamp", dt.datetime(2024, 1, 2, 3, 4, 5, 678901)),
    ("timestamptz", dt.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC)),
    ("interval", dt.timedelta(days=3, seconds=7, microseconds=9)),
    ("uuid", uuid.UUID("12345678-1234-5678-1234-567812345678")),
    ("json", {"a": [1, None, "x"], "b": {"c": True}}),
    ("jsonb", [1, "two", {"three": 3.5}, None]),
    ("int4[]", [1, None, 3]),
    ("text[]", ["a", None, "c"]),
    ("text", None),
]
SQL = (
    "SELECT "
    + ", ".join(f"${i}::{t} AS c{i}" for i, (t, _) in enumerate(TYPED, start=1))
    + f", ${len(TYPED) + 1}::text AS run"
)
VALUES = [v for _, v in TYPED]


@pytest.fixture(scope="module")
def node_url(
    tmp_path_factory: pytest.TempPathFactory, pg_databases: tuple[str, str], flushed_redis: str
) -> Iterator[str]:
    doc = node_doc(pg_databases, flushed_redis)
    with running_stack(tmp_path_factory.mktemp("sdk"), doc, [("sdk-region", None)]) as stack:
        yield stack.nodes()[0].url


def assert_exact(row: Any) -> None:
    got = list(row)[: len(VALUES)]
    for (pg_type, sent), value in zip(TYPED, got, strict=True):
        assert value == sent, pg_type
        assert type(value) is type(sent), pg_type
        if isinstance(sent, (dt.datetime, dt.time)):
            # Aware stays aware (same instant), naive stays naive.
            assert (value.tzinfo is None) == (sent.tzinfo is None), pg_type
            if sent.tzinfo is not None:
                assert value.utcoffset() == sent.utcoffset(), pg_type


def test_sync_client_round_trips_every_type(node_url: str) -> None:
    run = uuid.uuid4().hex
    with Client(node_url, API_KEY_A) as db:
        plain = db.query(SQL, *VALUES, run)
        assert_exact(plain.rows[0])
        assert plain.info.cache_status == "none"
        assert [c.type for c in plain.columns][:3] == ["int8", "numeric", "float8"]
        assert plain.columns[-3].type.endswith("[]") or plain.columns[-3].type.startswith("_")
        strategy = CacheStrategy(ttl=60)
        miss = db.fetchrow(SQL, *VALUES, run, cache=strategy)
        hit = db.fetch(SQL, *VALUES, run, cache=strategy)
    assert miss is not None
    assert_exact(miss)
    # The cached copy (through Redis) is exactly as typed as the fresh one.
    assert_exact(hit[0])
    assert hit.info.cache_status == "ttl"


async def test_async_client_round_trips_every_type(node_url: str) -> None:
    run = uuid.uuid4().hex
    async with AsyncClient(node_url, API_KEY_A) as db:
        assert_exact(await db.fetchrow(SQL, *VALUES, run))
        strategy = CacheStrategy(ttl=60)
        first = await db.fetch(SQL, *VALUES, run, cache=strategy)
        second = await db.fetch(SQL, *VALUES, run, cache=strategy)
    assert_exact(first[0])
    assert_exact(second[0])
    assert (first.info.cache_status, second.info.cache_status) == ("miss", "ttl")


async def test_info_shows_miss_then_ttl(node_url: str) -> None:
    run = uuid.uuid4().hex
    strategy = CacheStrategy(ttl=60, swr=30, tags=("sdk_products",))
    async with AsyncClient(node_url, API_KEY_A) as db:
        first = await db.fetch("SELECT $1::text AS run, 42 AS answer", run, cache=strategy)
        second = await db.fetch("SELECT $1::text AS run, 42 AS answer", run, cache=strategy)
    assert first.info.cache_status == "miss" and not first.info.hit
    assert second.info.cache_status == "ttl" and second.info.hit
    for info in (first.info, second.info):
        assert info.region == "sdk-region"
        assert info.request_id
        assert info.last_modified is not None and info.last_modified.tzinfo is not None
        assert info.age >= 0
    assert second.info.last_modified == first.info.last_modified
    assert second[0]["answer"] == 42 and second[0]["run"] == run


def test_fetchval_execute_and_transaction(node_url: str) -> None:
    with Client(node_url, API_KEY_A) as db:
        assert db.fetchval("SELECT 1 + $1::int4 AS n", 41) == 42
        assert db.fetchval("SELECT 1 AS a, 'b' AS b", column="b") == "b"
        assert db.execute("CREATE TABLE IF NOT EXISTS sdk_items (id uuid PRIMARY KEY)") == 0
        assert (
            db.execute("INSERT INTO sdk_items VALUES ($1), ($2)", uuid.uuid4(), uuid.uuid4()) == 2
        )
        results = db.transaction(
            [
                ("CREATE TEMP TABLE sdk_tx (x int) ON COMMIT DROP", []),
                ("INSERT INTO sdk_tx VALUES ($1), ($2)", [1, 2]),
                "SELECT sum(x) AS s FROM sdk_tx",
            ],
            isolation="serializable",
        )
    assert results[1].row_count == 2
    assert results[2].rows[0]["s"] == 3
    assert results[2].info.cache_status == "none"


def test_query_error_is_typed_with_sqlstate(node_url: str) -> None:
    with Client(node_url, API_KEY_A) as db, pytest.raises(QueryError) as info:
        db.fetch("SELECT * FROM sdk_no_such_table")
    assert info.value.code == "query_error"
    assert info.value.extra["sqlstate"] == "42P01"
    assert "sdk_no_such_table" in info.value.message


async def test_async_query_error_and_bad_key(node_url: str) -> None:
    async with AsyncClient(node_url, API_KEY_A) as db:
        with pytest.raises(QueryError) as info:
            await db.fetch("SELECT * FROM sdk_no_such_table", cache=CacheStrategy(ttl=5))
        assert info.value.extra["sqlstate"] == "42P01"
    async with AsyncClient(node_url, "ce_not_a_key") as db:
        with pytest.raises(Unauthorized):
            await db.fetch("SELECT 1")


async def test_invalidate_by_tag_makes_the_next_read_a_miss(node_url: str) -> None:
    run = uuid.uuid4().hex
    tag = f"sdk_{run[:12]}"
    strategy = CacheStrategy(ttl=300, tags=(tag,))
    sql = "SELECT $1::text AS run"
    async with AsyncClient(node_url, API_KEY_A) as db:
        assert (await db.fetch(sql, run, cache=strategy)).info.cache_status == "miss"
        assert (await db.fetch(sql, run, cache=strategy)).info.cache_status == "ttl"
        done = await db.invalidate([tag], wait=5.0)
        assert done.invalidation_id
        assert "sdk-region" in done.applied_regions and done.complete
        assert (await db.fetch(sql, run, cache=strategy)).info.cache_status == "miss"
    with Client(node_url, API_KEY_A) as sync_db:
        assert sync_db.invalidate_all(wait=5.0).invalidation_id
