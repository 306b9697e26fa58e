"""Automatic invalidation: cached reads follow committed writes, with no tag in the request.

One origin with tenant ``acme`` opted in (its own database, set up with the real setup
command) and two regions, each with its own Redis database. Every test caches a read in
both regions, changes the data some way, waits until the resulting purge is applied in
both regions (the same "applied" report a manual purge gives), and checks the rows the
next read returns.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import aiohttp
import asyncpg
import pytest

from origin.capture.setup import slot_name
from tests.conftest import API_KEY_A, API_KEY_B, RedisLease, dsn_for, make_settings_doc
from tests.integration.capture_helpers import captured as capture_read_all
from tests.integration.capture_helpers import (
    execute,
    origin_cli,
    prepare_database,
    running_with_capture,
)
from tests.integration.node_helpers import Reply, marker, post
from tests.integration.stack import Stack

AUTO_DB = "cache_edge_auto"
REGIONS = {"region-a", "region-b"}

SCHEMA = """
DROP TABLE IF EXISTS auto_items, auto_owners CASCADE;
CREATE TABLE auto_owners (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE auto_items (id int PRIMARY KEY, owner int NOT NULL, price numeric NOT NULL);
CREATE VIEW auto_cheap AS SELECT id, price FROM auto_items WHERE price < 10;
INSERT INTO auto_owners VALUES (1, 'ann'), (2, 'bob');
INSERT INTO auto_items VALUES (1, 1, 5), (2, 2, 50);
"""


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, pg_databases: tuple[str, str], redis_dbs: RedisLease
) -> Iterator[Stack]:
    asyncio.run(prepare_database(AUTO_DB, SCHEMA))
    region_a, region_b = redis_dbs("region-a"), redis_dbs("region-b")
    doc = make_settings_doc(
        dsn_for(AUTO_DB), pg_databases[1], node={"redis_url": region_a, "sync_grace": 3.0}
    )
    tenants: list[dict[str, Any]] = doc["tenants"]  # type: ignore[assignment]
    tenants[0]["auto_invalidation"] = True
    tenants[1]["auto_invalidation"] = True  # opted in, never set up: must say so
    st = Stack(tmp_path_factory.mktemp("auto"), doc)
    regions = [("region-a", region_a), ("region-b", region_b)]
    with running_with_capture(st, ["acme"], regions):
        yield st


def _nodes(st: Stack) -> list[str]:
    return [s.url for s in st.servers if s.kind == "node"]


def cached(sql: str, *params: Any) -> dict[str, Any]:
    # No tags: invalidation must come from the tables the query reads.
    return {"sql": sql, "params": list(params), "cacheStrategy": {"ttl": 300}}


async def read_everywhere(
    http: aiohttp.ClientSession, st: Stack, body: dict[str, Any], key: str = API_KEY_A
) -> list[Reply]:
    return [await post(http, url, body, key) for url in _nodes(st)]


async def cache_everywhere(
    http: aiohttp.ClientSession, st: Stack, body: dict[str, Any]
) -> list[Any]:
    """Read until both regions answer from their cache; return the rows they hold."""
    await read_everywhere(http, st, body)
    replies = await read_everywhere(http, st, body)
    assert [r.cache_status for r in replies] == ["ttl", "ttl"], [r.body for r in replies]
    return [r.body["rows"] for r in replies]


async def applied_everywhere(http: aiohttp.ClientSession, st: Stack, inv_id: str) -> None:
    url = _nodes(st)[0]
    body: Any = None
    for _ in range(200):
        async with http.get(
            f"{url}/v1/invalidations/{inv_id}", headers={"Authorization": f"Bearer {API_KEY_A}"}
        ) as resp:
            body = await resp.json()
        assert resp.status == 200, body
        if set(body["appliedRegions"]) >= REGIONS:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"invalidation {inv_id} not applied in both regions: {body}")


async def captured(http: aiohttp.ClientSession, st: Stack) -> None:
    """Wait until everything committed so far was captured, recorded and applied everywhere.

    The capture confirms its slot only after recording the purge, so once the slot's
    confirmed position passes the current WAL position the newest purge covers our writes.
    """
    await capture_read_all(AUTO_DB)
    conn = await asyncpg.connect(dsn_for(AUTO_DB))
    try:
        inv_id = await conn.fetchval(
            "SELECT id::text FROM cache_edge.invalidations ORDER BY seq DESC LIMIT 1"
        )
    finally:
        await conn.close()
    await applied_everywhere(http, st, inv_id)


async def direct(sql: str, *args: Any) -> None:
    """A write that bypasses cache-edge entirely (another service, psql, a migration)."""
    await execute(AUTO_DB, sql, *args)


def rows_of(replies: list[Reply]) -> list[Any]:
    return [r.body["rows"] for r in replies]


async def test_write_through_the_node_invalidates_both_regions(
    world: Stack, http: aiohttp.ClientSession
) -> None:
    read = cached("SELECT name FROM auto_owners WHERE id = $1", 1)
    first = await post(http, _nodes(world)[0], read, API_KEY_A)
    assert "table:public.auto_owners" not in str(first.info.get("warnings", ""))
    assert await cache_everywhere(http, world, read) == [[["ann"]], [["ann"]]]
    write = await post(
        http,
        _nodes(world)[1],
        {"sql": "UPDATE auto_owners SET name = $1 WHERE id = 1", "params": ["anna"]},
        API_KEY_A,
    )
    assert write.status == 200, write.body
    inv = write.info["invalidation"]
    # The write's purge was recorded before the write was answered: after commit, durable.
    assert inv["recorded"] is True and inv["id"], inv
    await applied_everywhere(http, world, inv["id"])
    after = await read_everywhere(http, world, read)
    assert rows_of(after) == [[["anna"]], [["anna"]]]
    assert [r.cache_status for r in after] == ["miss", "miss"]


async def test_transaction_through_the_node_invalidates(
    world: Stack, http: aiohttp.ClientSession
) -> None:
    read = cached("SELECT count(*)::int FROM auto_owners")
    before = (await cache_everywhere(http, world, read))[0][0][0]
    reply = await post(
        http,
        _nodes(world)[0],
        {
            "statements": [
                {"sql": "INSERT INTO auto_owners VALUES (100, 'tx1')"},
                {"sql": "INSERT INTO auto_owners VALUES (101, 'tx2')"},
            ]
        },
        API_KEY_A,
        path="/v1/transaction",
    )
    assert reply.status == 200, reply.body
    await applied_everywhere(http, world, reply.info["invalidation"]["id"])
    assert rows_of(await read_everywhere(http, world, read)) == [[[before + 2]]] * 2
    await direct("DELETE FROM auto_owners WHERE id >= 100")


async def test_write_from_a_separate_connection_invalidates(
    world: Stack, http: aiohttp.ClientSession
) -> None:
    read = cached("SELECT price FROM auto_items WHERE id = $1", 2)

    assert await cache_everywhere(http, world, read) == [[[Decimal(50)]]] * 2
    await direct("UPDATE auto_items SET price = 51 WHERE id = 2")
    await captured(http, world)
    assert rows_of(await read_everywhere(http, world, read)) == [[[Decimal(51)]]] * 2


async def test_rolled_back_write_purges_nothing(world: Stack, http: aiohttp.ClientSession) -> None:
    read = cached("SELECT name FROM auto_owners WHERE id = $1", 2)
    assert await cache_everywhere(http, world, read) == [[["bob"]]] * 2
    conn = await asyncpg.connect(dsn_for(AUTO_DB))
    try:
        tx = conn.transaction()
        await tx.start()
        await conn.execute("UPDATE auto_owners SET name = 'never' WHERE id = 2")
        await tx.rollback()
    finally:
        await conn.close()
    # A committed write elsewhere proves the capture has read past the rollback.
    await direct("UPDATE auto_items SET price = price WHERE id = 1")
    await captured(http, world)
    after = await read_everywhere(http, world, read)
    assert rows_of(after) == [[["bob"]]] * 2
    assert [r.cache_status for r in after] == ["ttl", "ttl"]  # nothing was purged


async def test_join_is_invalidated_by_a_write_to_either_table(
    world: Stack, http: aiohttp.ClientSession
) -> None:
    read = cached(
        "SELECT o.name, i.price::text FROM auto_items i JOIN auto_owners o ON o.id = i.owner "
        "WHERE i.id = $1",
        1,
    )
    await direct("UPDATE auto_owners SET name = 'ann' WHERE id = 1")
    await captured(http, world)
    assert await cache_everywhere(http, world, read) == [[["ann", "5"]]] * 2
    await direct("UPDATE auto_items SET price = 6 WHERE id = 1")
    await captured(http, world)
    assert rows_of(await read_everywhere(http, world, read)) == [[["ann", "6"]]] * 2
    await cache_everywhere(http, world, read)
    await direct("UPDATE auto_owners SET name = 'annie' WHERE id = 1")
    await captured(http, world)
    assert rows_of(await read_everywhere(http, world, read)) == [[["annie", "6"]]] * 2


async def test_view_follows_its_base_table(world: Stack, http: aiohttp.ClientSession) -> None:
    read = cached("SELECT id FROM auto_cheap ORDER BY id")
    await direct("DELETE FROM auto_items WHERE id = 3")
    await captured(http, world)
    assert await cache_everywhere(http, world, read) == [[[1]]] * 2
    await direct("INSERT INTO auto_items VALUES (3, 2, 3)")
    await captured(http, world)
    assert rows_of(await read_everywhere(http, world, read)) == [[[1], [3]]] * 2


async def test_alter_table_is_a_purge_of_that_table(
    world: Stack, http: aiohttp.ClientSession
) -> None:
    read = cached("SELECT * FROM auto_owners WHERE id = $1", 2)
    first = await cache_everywhere(http, world, read)
    assert first == [[[2, "bob"]]] * 2
    column = marker("c").replace("-", "_")
    await direct(f"ALTER TABLE auto_owners ADD COLUMN {column} int NOT NULL DEFAULT 7")
    try:
        await captured(http, world)
        after = await read_everywhere(http, world, read)
        assert rows_of(after) == [[[2, "bob", 7]]] * 2
        assert [c["name"] for c in after[0].body["columns"]][-1] == column
    finally:
        await direct(f"ALTER TABLE auto_owners DROP COLUMN {column}")
        await captured(http, world)


async def test_view_redefinition_purges_the_tenant(
    world: Stack, http: aiohttp.ClientSession
) -> None:
    read = cached("SELECT count(*)::int FROM auto_cheap")
    assert await cache_everywhere(http, world, read) == [[[2]]] * 2
    await direct(
        "CREATE OR REPLACE VIEW auto_cheap AS SELECT id, price FROM auto_items WHERE price < 100"
    )
    try:
        await captured(http, world)
        assert rows_of(await read_everywhere(http, world, read)) == [[[3]]] * 2
    finally:
        await direct(
            "CREATE OR REPLACE VIEW auto_cheap AS SELECT id, price FROM auto_items WHERE price < 10"
        )
        await captured(http, world)


@pytest.mark.slow
async def test_writes_while_the_origin_is_down_are_invalidated_on_restart(
    world: Stack, http: aiohttp.ClientSession
) -> None:
    read = cached("SELECT name FROM auto_owners WHERE id = $1", 2)
    await direct("UPDATE auto_owners SET name = 'bob' WHERE id = 2")
    await captured(http, world)
    assert await cache_everywhere(http, world, read) == [[["bob"]]] * 2
    origin = world.origin
    assert origin is not None
    origin.stop()
    try:
        await direct("UPDATE auto_owners SET name = 'robert' WHERE id = 2")
    finally:
        origin.start()
    await captured(http, world)
    assert rows_of(await read_everywhere(http, world, read)) == [[["robert"]]] * 2


async def test_lost_slot_purges_the_tenant_and_is_replaced(
    world: Stack, http: aiohttp.ClientSession
) -> None:
    read = cached("SELECT name FROM auto_owners WHERE id = $1", 1)
    await cache_everywhere(http, world, read)
    conn = await asyncpg.connect(dsn_for(AUTO_DB))
    try:
        before = await conn.fetchval("SELECT coalesce(max(seq), 0) FROM cache_edge.invalidations")
        slot = slot_name(AUTO_DB)
        for _ in range(50):  # the capture holds it only while it reads
            try:
                await conn.execute("SELECT pg_drop_replication_slot($1)", slot)
                break
            except asyncpg.ObjectInUseError:
                await asyncio.sleep(0.01)
        row = None
        for _ in range(200):
            row = await conn.fetchrow(
                "SELECT seq, id::text FROM cache_edge.invalidations "
                "WHERE seq > $1 AND purge_all ORDER BY seq LIMIT 1",
                before,
            )
            if row is not None:
                break
            await asyncio.sleep(0.05)
        assert row is not None, world.dump_logs()
        assert await conn.fetchval(
            "SELECT true FROM pg_replication_slots WHERE slot_name = $1", slot
        )
    finally:
        await conn.close()
    await applied_everywhere(http, world, row["id"])
    assert [r.cache_status for r in await read_everywhere(http, world, read)] == ["miss", "miss"]
    metrics = await (await http.get(world.origin.url + "/metrics")).text()  # type: ignore[union-attr]
    assert 'cache_edge_origin_capture_resets_total{tenant="acme"} 1.0' in metrics
    assert 'cache_edge_origin_capture_owner{tenant="acme"} 1.0' in metrics


async def test_tenant_opted_in_without_setup_is_told(
    world: Stack, http: aiohttp.ClientSession
) -> None:
    body = {"sql": "SELECT $1::text AS m", "params": [marker()], "cacheStrategy": {"ttl": 60}}
    reply = await post(http, _nodes(world)[0], body, API_KEY_B)
    assert reply.status == 200, reply.body
    assert any("not set up" in w for w in reply.info["warnings"]), reply.info
    # Its writes are not held up waiting for a capture that does not run, and say so.
    write = await post(http, _nodes(world)[0], {"sql": "SELECT 1", "params": []}, API_KEY_B)
    assert write.status == 200 and write.info["invalidation"]["recorded"] is False, write.body
    metrics = await (await http.get(world.origin.url + "/metrics")).text()  # type: ignore[union-attr]
    assert 'cache_edge_origin_capture_owner{tenant="globex"} -1.0' in metrics
    async with http.get(world.origin.url + "/readyz") as resp:  # type: ignore[union-attr]
        ready = await resp.json()
    assert resp.status == 200, ready
    assert ready["capture"] == {"acme": "owner", "globex": "not_set_up"}


def test_setup_refuses_an_unknown_tenant(world: Stack) -> None:
    out = origin_cli(world.config, "setup-auto-invalidation", "--tenant", "nobody")
    assert out.returncode == 2 and "no tenant 'nobody'" in out.stderr


async def _owner_state(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(url + "/readyz") as resp:
        return str((await resp.json())["capture"]["acme"])


@pytest.mark.slow
async def test_a_standby_origin_replica_takes_over_the_capture(
    world: Stack, http: aiohttp.ClientSession
) -> None:
    first = world.origin
    assert first is not None
    standby = world.start_origin()
    world.origin = first  # nodes keep talking to the first replica
    try:
        assert await _owner_state(http, standby.url) == "standby"
        first.stop(signal.SIGKILL)  # dies without cleanup; its advisory lock goes with it
        for _ in range(100):
            if await _owner_state(http, standby.url) == "owner":
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the standby never took over the capture")
        first.start()  # same port: the nodes reconnect; the standby keeps the slot
        assert await _owner_state(http, first.url) == "standby"
        read = cached("SELECT name FROM auto_owners WHERE id = $1", 2)
        await direct("UPDATE auto_owners SET name = 'bob' WHERE id = 2")
        await captured(http, world)
        await cache_everywhere(http, world, read)
        await direct("UPDATE auto_owners SET name = 'bobby' WHERE id = 2")
        await captured(http, world)
        assert rows_of(await read_everywhere(http, world, read)) == [[["bobby"]]] * 2
    finally:
        standby.stop()
        world.servers.remove(standby)


async def test_purge_by_table_name(world: Stack, http: aiohttp.ClientSession) -> None:
    """For changes the WAL cannot show (another database behind a foreign table, say)."""
    read = cached("SELECT count(*)::int FROM auto_items")
    await cache_everywhere(http, world, read)
    url = _nodes(world)[0]
    done = await post(
        http, url, {"tables": ["public.auto_items"], "wait": 10}, API_KEY_A, path="/v1/invalidate"
    )
    assert done.status == 200 and set(done.body["appliedRegions"]) >= REGIONS, done.body
    assert [r.cache_status for r in await read_everywhere(http, world, read)] == ["miss", "miss"]
    bad = await post(http, url, {"tables": ["auto_items"]}, API_KEY_A, path="/v1/invalidate")
    assert bad.status == 400 and bad.body["error"]["field"] == "tables"
    out = subprocess.run(
        [sys.executable, "-m", "cache_edge.cli", "invalidate", "--url", url,
         "--api-key", API_KEY_A, "--table", "public.auto_items"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0 and "applied in: " in out.stdout, out.stderr
    assert [r.cache_status for r in await read_everywhere(http, world, read)] == ["miss", "miss"]


async def test_truncate_and_materialized_view_refresh(
    world: Stack, http: aiohttp.ClientSession
) -> None:
    await direct(
        "DROP MATERIALIZED VIEW IF EXISTS auto_mv; DROP TABLE IF EXISTS auto_scratch;"
        "CREATE TABLE auto_scratch (id int); INSERT INTO auto_scratch VALUES (1), (2);"
        "CREATE MATERIALIZED VIEW auto_mv AS SELECT count(*)::int AS n FROM auto_scratch"
    )
    await captured(http, world)
    scratch = cached("SELECT count(*)::int FROM auto_scratch")
    mv = cached("SELECT n FROM auto_mv")
    assert await cache_everywhere(http, world, scratch) == [[[2]]] * 2
    assert await cache_everywhere(http, world, mv) == [[[2]]] * 2
    await direct("TRUNCATE auto_scratch")  # no row events: a Truncate message in the WAL
    await captured(http, world)
    assert rows_of(await read_everywhere(http, world, scratch)) == [[[0]]] * 2
    assert rows_of(await read_everywhere(http, world, mv)) == [[[2]]] * 2  # not refreshed yet
    await direct("REFRESH MATERIALIZED VIEW auto_mv")  # arrives through the DDL log
    await captured(http, world)
    assert rows_of(await read_everywhere(http, world, mv)) == [[[0]]] * 2
    await direct("DROP MATERIALIZED VIEW auto_mv; DROP TABLE auto_scratch")


async def test_partitions_and_arguments_do_not_narrow_what_a_statement_depends_on(
    world: Stack, http: aiohttp.ClientSession
) -> None:
    """What a statement reads is planned once per text; it must hold for any arguments
    (no pruning by the first call's values) and for writes to any partition."""
    await direct(
        "DROP TABLE IF EXISTS auto_parted;"
        "CREATE TABLE auto_parted (k int NOT NULL, v text) PARTITION BY RANGE (k);"
        "CREATE TABLE auto_parted_lo PARTITION OF auto_parted FOR VALUES FROM (0) TO (100);"
        "CREATE TABLE auto_parted_hi PARTITION OF auto_parted FOR VALUES FROM (100) TO (200);"
        "INSERT INTO auto_parted VALUES (5, 'lo'), (150, 'hi')"
    )
    await captured(http, world)
    sql = "SELECT count(*)::int FROM auto_parted WHERE k >= $1"
    assert await cache_everywhere(http, world, cached(sql, 100)) == [[[1]]] * 2  # hi only
    everything = cached(sql, 0)
    assert await cache_everywhere(http, world, everything) == [[[2]]] * 2
    await direct("INSERT INTO auto_parted VALUES (6, 'lo too')")  # a partition the first skipped
    await captured(http, world)
    assert rows_of(await read_everywhere(http, world, everything)) == [[[3]]] * 2
    await direct("DROP TABLE auto_parted")
    await captured(http, world)


async def test_a_statement_whose_tables_are_unknown_follows_every_write(
    world: Stack, http: aiohttp.ClientSession
) -> None:
    await captured(http, world)  # earlier tests' writes purge such results too
    read = cached("SHOW application_name")  # runs, but EXPLAIN cannot plan it
    first = await post(http, _nodes(world)[0], read, API_KEY_A)
    assert first.status == 200, first.body
    assert any("could not determine" in w for w in first.info["warnings"]), first.info
    await cache_everywhere(http, world, read)
    await direct("UPDATE auto_items SET price = price WHERE id = 1")
    await captured(http, world)
    assert [r.cache_status for r in await read_everywhere(http, world, read)] == ["miss", "miss"]


async def test_a_function_the_planner_cannot_see_into_follows_every_write(
    world: Stack, http: aiohttp.ClientSession
) -> None:
    await direct(
        "CREATE OR REPLACE FUNCTION auto_owner_name(i int) RETURNS text LANGUAGE plpgsql "
        "STABLE AS $$ BEGIN RETURN (SELECT name FROM auto_owners WHERE id = i); END $$"
    )
    await captured(http, world)
    read = cached("SELECT auto_owner_name($1)", 2)
    first = await post(http, _nodes(world)[0], read, API_KEY_A)
    assert any("auto_owner_name" in w for w in first.info["warnings"]), first.info
    before = (await cache_everywhere(http, world, read))[0]
    await direct("UPDATE auto_owners SET name = name || '!' WHERE id = 2")
    await captured(http, world)
    after = rows_of(await read_everywhere(http, world, read))
    assert after == [[[before[0][0] + "!"]]] * 2  # the plan shows no table, yet it follows
    await direct("UPDATE auto_owners SET name = rtrim(name, '!') WHERE id = 2")
    await captured(http, world)
