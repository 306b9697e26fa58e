"""Two tenants on ONE database are as isolated as tenants on two.

``acme`` and ``globex`` have their own API keys and entries but the same ``database_url``
(two applications, or two environments, on one database), both with automatic
invalidation and change streams, set up with the real setup command. Regions ``region-a``
and ``region-b`` serve both tenants; ``region-c`` serves only ``globex`` (its config lists
no other tenant), so it never applies acme's purges and must never be reported to have.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import aiohttp
import asyncpg
import pytest
import tomli_w

from cache_edge.devtools.harness import free_port
from cache_edge.server.config import parse_settings
from origin.capture.setup import legacy_slot_name, remove, setup, slot_name
from tests.conftest import (
    API_KEY_A,
    API_KEY_B,
    PG_ADMIN_DSN,
    RedisLease,
    dsn_for,
    make_shared_settings_doc,
)
from tests.integration.capture_helpers import (
    captured,
    execute,
    origin_cli,
    prepare_database,
    running_with_capture,
)
from tests.integration.node_helpers import marker, post
from tests.integration.origin_helpers import running_origin
from tests.integration.stack import Server, Stack

SHARED_DB = "cache_edge_shared"
ORPHAN_SLOT = "cache_edge_gone_00000000"  # a slot a tenant removed from the config left
BOTH = {"region-a", "region-b"}
KEYS = {"acme": API_KEY_A, "globex": API_KEY_B}

SCHEMA = """
DROP SCHEMA IF EXISTS cache_edge CASCADE;
DROP TABLE IF EXISTS sh_items;
CREATE TABLE sh_items (id int PRIMARY KEY, v int NOT NULL);
INSERT INTO sh_items VALUES (1, 10), (2, 20);
"""


async def _create_orphan_slot() -> None:
    conn = await asyncpg.connect(dsn_for(SHARED_DB))
    try:
        await conn.execute("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", ORPHAN_SLOT)
    finally:
        await conn.close()


async def _drop_slots() -> None:
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        for row in await admin.fetch(
            "SELECT slot_name FROM pg_replication_slots WHERE database = $1", SHARED_DB
        ):
            await admin.execute("SELECT pg_drop_replication_slot($1)", row["slot_name"])
    finally:
        await admin.close()


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, pg_databases: tuple[str, str], redis_dbs: RedisLease
) -> Iterator[Stack]:
    asyncio.run(prepare_database(SHARED_DB, SCHEMA))
    asyncio.run(_create_orphan_slot())
    redis_a, redis_b, redis_c = (redis_dbs(f"region-{r}") for r in "abc")
    doc = make_shared_settings_doc(dsn_for(SHARED_DB), node={"redis_url": redis_a})
    for tenant in doc["tenants"]:  # type: ignore[attr-defined]
        tenant["auto_invalidation"] = True
        tenant["change_streams"] = True
    tmp = tmp_path_factory.mktemp("shared")
    st = Stack(tmp, doc)
    try:
        with running_with_capture(
            st, ["acme", "globex"], [("region-a", redis_a), ("region-b", redis_b)]
        ):
            # region-c: a node whose config knows only globex.
            only_b = {**doc, "tenants": [t for t in doc["tenants"] if t["id"] == "globex"]}  # type: ignore[attr-defined]
            config_c = tmp / "region-c.toml"
            config_c.write_text(tomli_w.dumps(only_b))
            assert st.origin is not None
            args = ["--region", "region-c", "--redis-url", redis_c, "--origin-url", st.origin.url]
            st.add(Server("node", free_port(), config_c, args))
            yield st
    finally:
        # Removing it for one tenant keeps the slot the other still uses: drop what is left.
        asyncio.run(_drop_slots())


def node(st: Stack, region: str) -> str:
    return next(s.url for s in st.servers if s.kind == "node" and region in s.extra_args)


def read(sql: str, *params: Any, tags: list[str] | None = None) -> dict[str, Any]:
    return {"sql": sql, "params": list(params), "cacheStrategy": {"ttl": 300, "tags": tags or []}}


async def cache(http: aiohttp.ClientSession, url: str, body: dict[str, Any], key: str) -> Any:
    """Read until the region answers from its cache; return the rows it holds."""
    await post(http, url, body, key)
    hit = await post(http, url, body, key)
    assert hit.cache_status == "ttl", hit.body
    return hit.body["rows"]


async def wait_live(http: aiohttp.ClientSession, st: Stack, tenant: str, regions: set[str]) -> None:
    url = node(st, "region-b")
    reply = None
    for _ in range(100):
        reply = await post(
            http, url, {"tags": ["warmup"], "wait": 2}, KEYS[tenant], path="/v1/invalidate"
        )
        assert reply.status == 200, reply.body
        if set(reply.body["appliedRegions"]) >= regions:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"regions never became live for {tenant}: {reply}")


async def applied(http: aiohttp.ClientSession, st: Stack, tenant: str) -> None:
    """Wait until everything committed so far was captured, and the newest purge of
    ``tenant`` was applied in region-a and region-b (as that tenant's status reports it)."""
    await captured(SHARED_DB)
    conn = await asyncpg.connect(dsn_for(SHARED_DB))
    try:
        inv_id = await conn.fetchval(
            "SELECT id::text FROM cache_edge.invalidations WHERE tenant = $1 "
            "ORDER BY seq DESC LIMIT 1",
            tenant,
        )
    finally:
        await conn.close()
    body: Any = None
    for _ in range(200):
        async with http.get(
            f"{node(st, 'region-a')}/v1/invalidations/{inv_id}",
            headers={"Authorization": f"Bearer {KEYS[tenant]}"},
        ) as resp:
            body = await resp.json()
        assert resp.status == 200, body
        if set(body["appliedRegions"]) >= BOTH:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{tenant}'s purge {inv_id} not applied in both regions: {body}")


async def test_one_slot_serves_both_tenants_and_orphans_are_reported(
    world: Stack, http: aiohttp.ClientSession
) -> None:
    conn = await asyncpg.connect(dsn_for(SHARED_DB))
    try:
        slots = await conn.fetch(
            "SELECT slot_name FROM pg_replication_slots WHERE database = $1 ORDER BY 1", SHARED_DB
        )
    finally:
        await conn.close()
    assert sorted(r["slot_name"] for r in slots) == sorted([slot_name(SHARED_DB), ORPHAN_SLOT])
    assert world.origin is not None
    async with http.get(world.origin.url + "/readyz") as resp:
        ready = await resp.json()
    assert ready["capture"] == {"acme": "owner", "globex": "owner"}, ready
    warnings = [
        json.loads(line)
        for line in world.origin.logs().splitlines()
        if "orphan_replication_slot" in line
    ]
    assert [w["slot"] for w in warnings] == [ORPHAN_SLOT], world.origin.logs()[-3000:]
    assert warnings[0]["database"] == SHARED_DB and warnings[0]["level"] == "warning"
    # Removing the capture for one tenant keeps the slot the other one reads.
    out = origin_cli(world.config, "remove-auto-invalidation", "--tenant", "acme")
    assert out.returncode == 0 and "stays" in out.stdout and "globex" in out.stdout, out
    await captured(SHARED_DB)


async def test_a_tag_purge_or_purge_all_of_one_tenant_leaves_the_other_cached(
    world: Stack, http: aiohttp.ClientSession
) -> None:
    tag = marker("t").replace("-", "_")
    body = read("SELECT v FROM sh_items WHERE id = $1", 1, tags=[tag])
    regions = [node(world, "region-a"), node(world, "region-b")]
    for tenant in KEYS:
        await wait_live(http, world, tenant, BOTH)
    for url in regions:
        for key in KEYS.values():
            assert await cache(http, url, body, key) == [[10]]
    done = await post(
        http, regions[0], {"tags": [tag], "wait": 10}, API_KEY_A, path="/v1/invalidate"
    )
    assert done.status == 200 and set(done.body["appliedRegions"]) >= BOTH, done.body
    for url in regions:
        assert (await post(http, url, body, API_KEY_A)).cache_status == "miss"
        theirs = await post(http, url, body, API_KEY_B)
        assert (theirs.cache_status, theirs.body["rows"]) == ("ttl", [[10]]), theirs.body
    everything = await post(
        http, regions[1], {"all": True, "wait": 10}, API_KEY_A, path="/v1/invalidate"
    )
    assert set(everything.body["appliedRegions"]) >= BOTH, everything.body
    for url in regions:
        assert (await post(http, url, body, API_KEY_A)).cache_status == "miss"
        assert (await post(http, url, body, API_KEY_B)).cache_status == "ttl"


async def test_applied_regions_are_reported_per_tenant(
    world: Stack, http: aiohttp.ClientSession
) -> None:
    await wait_live(http, world, "globex", BOTH | {"region-c"})
    await wait_live(http, world, "acme", BOTH)
    url = node(world, "region-a")
    theirs = await post(http, url, {"tags": ["x"], "wait": 10}, API_KEY_B, path="/v1/invalidate")
    assert set(theirs.body["appliedRegions"]) == BOTH | {"region-c"}, theirs.body
    # region-c applies only globex's purges: acme's is never reported applied there.
    ours = await post(http, url, {"tags": ["x"], "wait": 10}, API_KEY_A, path="/v1/invalidate")
    assert set(ours.body["appliedRegions"]) == BOTH, ours.body
    assert ours.body["pendingRegions"] == [], ours.body
    await asyncio.sleep(1.0)  # region-c keeps polling for globex meanwhile
    async with http.get(
        f"{url}/v1/invalidations/{ours.body['invalidationId']}",
        headers={"Authorization": f"Bearer {API_KEY_A}"},
    ) as resp:
        later = await resp.json()
    assert set(later["appliedRegions"]) == BOTH, later
    conn = await asyncpg.connect(dsn_for(SHARED_DB))
    try:
        rows = await conn.fetch(
            "SELECT tenant, array_agg(seq ORDER BY seq) AS seqs FROM cache_edge.invalidations "
            "GROUP BY tenant ORDER BY tenant"
        )
    finally:
        await conn.close()
    # Each tenant's log counts from 1 without gaps (a region detects gaps that way).
    for row in rows:
        assert row["seqs"] == list(range(1, len(row["seqs"]) + 1)), (row["tenant"], row["seqs"])
    assert [r["tenant"] for r in rows] == ["acme", "globex"]


async def _subscribe(http: aiohttp.ClientSession, url: str, key: str) -> aiohttp.ClientResponse:
    await captured(SHARED_DB)  # start after everything committed so far
    resp = await http.get(
        f"{url}/v1/stream?tables=public.sh_items", headers={"Authorization": f"Bearer {key}"}
    )
    assert resp.status == 200, await resp.text()
    assert (await _event(resp))[0] == "ready"
    return resp


async def _event(resp: aiohttp.ClientResponse) -> tuple[str, Any]:
    while True:
        block = (await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 15)).decode()
        fields = dict(
            line.split(": ", 1) for line in block.strip().splitlines() if not line.startswith(":")
        )
        if fields:
            return fields.get("event", "message"), json.loads(fields["data"])


async def test_change_streams_of_both_tenants(world: Stack, http: aiohttp.ClientSession) -> None:
    subs = {
        "acme": await _subscribe(http, node(world, "region-a"), API_KEY_A),
        "globex": await _subscribe(http, node(world, "region-b"), API_KEY_B),
    }
    try:
        await execute(SHARED_DB, "INSERT INTO sh_items VALUES (3, 30)")
        events = {t: await _event(resp) for t, resp in subs.items()}
    finally:
        for resp in subs.values():
            resp.close()
    for tenant, (kind, data) in events.items():
        assert kind == "change", (tenant, data)
        assert (data["table"], data["op"], data["new"]) == (
            "public.sh_items",
            "insert",
            {"id": 3, "v": 30},
        )
    assert events["acme"][1]["cursor"] == events["globex"][1]["cursor"]
    conn = await asyncpg.connect(dsn_for(SHARED_DB))
    try:
        kept = await conn.fetch(
            "SELECT tenant, count(*) AS n FROM cache_edge.changes GROUP BY tenant ORDER BY tenant"
        )
    finally:
        await conn.close()
    assert [r["tenant"] for r in kept] == ["acme", "globex"]  # each its own history


async def test_a_committed_write_invalidates_both_tenants(
    world: Stack, http: aiohttp.ClientSession
) -> None:
    body = read("SELECT v FROM sh_items WHERE id = $1", 2)  # no tags: the table is the tag
    regions = [node(world, "region-a"), node(world, "region-b")]
    await execute(SHARED_DB, "UPDATE sh_items SET v = 20 WHERE id = 2")
    for tenant in KEYS:
        await applied(http, world, tenant)
    for url in regions:
        for key in KEYS.values():
            assert await cache(http, url, body, key) == [[20]]
    await execute(SHARED_DB, "UPDATE sh_items SET v = 21 WHERE id = 2")
    for tenant in KEYS:
        await applied(http, world, tenant)
    for url in regions:
        for key in KEYS.values():
            after = await post(http, url, body, key)
            assert (after.cache_status, after.body["rows"]) == ("miss", [[21]]), after.body


LEGACY_DB = "cache_edge_legacy_slots"


async def test_per_tenant_slots_of_an_older_version_are_replaced_once(
    pg_databases: tuple[str, str],
) -> None:
    """An older version read one slot per tenant. What it had not read is not in the
    database's new slot: each tenant is purged once, and the old slot goes (it would keep
    WAL for ever)."""
    await prepare_database(LEGACY_DB, "DROP SCHEMA IF EXISTS cache_edge CASCADE")
    conn = await asyncpg.connect(dsn_for(LEGACY_DB))
    try:
        await setup(conn, "acme")
        await conn.execute("SELECT pg_drop_replication_slot($1)", slot_name(LEGACY_DB))
        old = legacy_slot_name("acme", LEGACY_DB)
        await conn.execute("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", old)
    finally:
        await conn.close()
    doc = make_shared_settings_doc(dsn_for(LEGACY_DB))
    for tenant in doc["tenants"]:  # type: ignore[attr-defined]
        tenant["auto_invalidation"] = True
    try:
        async with running_origin(parse_settings(doc)):
            conn = await asyncpg.connect(dsn_for(LEGACY_DB))
            try:
                for _ in range(200):
                    slots = {
                        r["slot_name"]
                        for r in await conn.fetch(
                            "SELECT slot_name FROM pg_replication_slots WHERE database = $1",
                            LEGACY_DB,
                        )
                    }
                    purged = await conn.fetch(
                        "SELECT tenant FROM cache_edge.invalidations WHERE purge_all "
                        "ORDER BY tenant"
                    ) if slots == {slot_name(LEGACY_DB)} else []  # fmt: skip
                    if len(purged) == 2:
                        break
                    await asyncio.sleep(0.05)
            finally:
                await conn.close()
            assert slots == {slot_name(LEGACY_DB)}
            assert [r["tenant"] for r in purged] == ["acme", "globex"]
    finally:
        conn = await asyncpg.connect(dsn_for(LEGACY_DB))
        try:
            await remove(conn, "acme")
        finally:
            await conn.close()
