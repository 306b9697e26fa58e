"""Global invalidation across two regions (own Redis database each) and one origin.

What PostgreSQL returns is changed behind the cache's back (a direct UPDATE), so a
stale answer is visible in the rows, not only in the cache status.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis

from cache_edge.devtools.harness import free_port
from tests.conftest import API_KEY_A, API_KEY_B, TEST_DB, RedisLease, dsn_for
from tests.integration.node_helpers import Reply, marker, new_stack, node_doc, post
from tests.integration.stack import Server, Stack, running_stack


async def _flush(url: str) -> None:
    r = aioredis.Redis.from_url(url)
    await r.flushdb()
    await r.aclose()


@pytest.fixture
def region_redis(redis_dbs: RedisLease) -> tuple[str, str]:
    """Regions a and b's Redis databases, empty."""
    return redis_dbs.fresh("region-a"), redis_dbs.fresh("region-b")


@pytest.fixture
def world(
    tmp_path: Path, pg_databases: tuple[str, str], region_redis: tuple[str, str]
) -> Iterator[Stack]:
    a, b = region_redis
    doc = node_doc(pg_databases, a, node={"sync_grace": 2.0})
    with running_stack(tmp_path, doc, [("region-a", a), ("region-b", b)]) as st:
        yield st


@pytest.fixture
async def row() -> AsyncIterator[tuple[asyncpg.Connection, str]]:
    """A row whose value the test changes directly in PostgreSQL."""
    conn = await asyncpg.connect(dsn_for(TEST_DB))
    await conn.execute("CREATE TABLE IF NOT EXISTS inv_t (k text PRIMARY KEY, v int NOT NULL)")
    key = marker("row")
    await conn.execute("INSERT INTO inv_t VALUES ($1, 1)", key)
    yield conn, key
    await conn.close()


def nodes(st: Stack) -> list[Server]:
    return [s for s in st.servers if s.kind == "node"]


def read(key: str, tag: str, **extra: object) -> dict[str, object]:
    return {
        "sql": "SELECT v FROM inv_t WHERE k = $1",
        "params": [key],
        "cacheStrategy": {"ttl": 300, "tags": [tag], **extra},
    }


async def purge(
    http: aiohttp.ClientSession, url: str, body: dict[str, object], key: str = API_KEY_A
) -> Reply:
    return await post(http, url, body, key, path="/v1/invalidate", fmt="json")


async def wait_live(http: aiohttp.ClientSession, url: str, regions: set[str]) -> None:
    """Purge a throwaway tag until the origin lists every region as live."""
    for _ in range(100):
        reply = await purge(http, url, {"tags": ["warmup"], "wait": 2})
        assert reply.status == 200, reply.body
        if set(reply.body["appliedRegions"]) >= regions:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"regions never became live: {reply.body}")


async def test_purge_reaches_both_regions_and_says_so(
    world: Stack, http: aiohttp.ClientSession, row: tuple[asyncpg.Connection, str]
) -> None:
    conn, key = row
    a, b = (n.url for n in nodes(world))
    await wait_live(http, a, {"region-a", "region-b"})
    tag = marker("tag").replace("-", "_")
    for url in (a, b):
        assert (await post(http, url, read(key, tag), API_KEY_A)).cache_status == "miss"
        hit = await post(http, url, read(key, tag), API_KEY_A)
        assert hit.cache_status == "ttl" and hit.body["rows"] == [[1]]
    await conn.execute("UPDATE inv_t SET v = 2 WHERE k = $1", key)
    # Without a purge the cache (correctly, per its ttl) still answers 1.
    assert (await post(http, b, read(key, tag), API_KEY_A)).body["rows"] == [[1]]
    done = await purge(http, a, {"tags": [tag, "other_tag"], "wait": 10})
    assert done.status == 200, done.body
    assert {"region-a", "region-b"} <= set(done.body["appliedRegions"])
    assert not {"region-a", "region-b"} & set(done.body["pendingRegions"])
    for url in (a, b):
        after = await post(http, url, read(key, tag), API_KEY_A)
        assert after.body["rows"] == [[2]], after.body
        assert after.cache_status == "miss"
    status = await post(
        http, a, None, API_KEY_A, path="/v1/invalidations/" + done.body["invalidationId"], raw=b""
    )
    assert status.status == 405 or status.status == 400  # GET only
    async with http.get(
        f"{a}/v1/invalidations/{done.body['invalidationId']}",
        headers={"Authorization": f"Bearer {API_KEY_A}"},
    ) as resp:
        later = await resp.json()
    assert resp.status == 200 and {"region-a", "region-b"} <= set(later["appliedRegions"])


async def test_purge_all_and_tenant_isolation(
    world: Stack, http: aiohttp.ClientSession, row: tuple[asyncpg.Connection, str]
) -> None:
    _conn, key = row
    a, b = (n.url for n in nodes(world))
    await wait_live(http, a, {"region-a", "region-b"})
    m = marker()
    other = {
        "sql": "SELECT $1::text AS m",
        "params": [m],
        "cacheStrategy": {"ttl": 300, "tags": ["shared"]},
    }
    assert (await post(http, b, other, API_KEY_B)).cache_status == "miss"
    assert (await post(http, b, other, API_KEY_B)).cache_status == "ttl"
    assert (await post(http, b, read(key, "shared"), API_KEY_A)).cache_status == "miss"
    done = await purge(http, a, {"all": True, "wait": 10})
    assert done.status == 200
    assert not {"region-a", "region-b"} & set(done.body["pendingRegions"])
    # Tenant A's entry is gone in region b; tenant B's entry with the same tag survives.
    assert (await post(http, b, read(key, "shared"), API_KEY_A)).cache_status == "miss"
    assert (await post(http, b, other, API_KEY_B)).cache_status == "ttl"
    done = await purge(http, a, {"tags": ["shared"], "wait": 10})
    assert (await post(http, b, other, API_KEY_B)).cache_status == "ttl"


async def test_in_flight_miss_never_served_as_fresh_after_purge(
    world: Stack, http: aiohttp.ClientSession, row: tuple[asyncpg.Connection, str]
) -> None:
    conn, key = row
    a, _ = (n.url for n in nodes(world))
    await wait_live(http, a, {"region-a", "region-b"})
    tag = marker("race").replace("-", "_")
    slow = {
        # The snapshot is taken before the sleep: the rows are those of the start.
        "sql": "SELECT v FROM inv_t, pg_sleep(1.0) WHERE k = $1",
        "params": [key],
        "cacheStrategy": {"ttl": 300, "tags": [tag]},
    }
    in_flight = asyncio.create_task(post(http, a, slow, API_KEY_A))
    await asyncio.sleep(0.3)  # the slow read has started and read v = 1
    await conn.execute("UPDATE inv_t SET v = 2 WHERE k = $1", key)
    done = await purge(http, a, {"tags": [tag], "wait": 10})
    assert "region-a" in done.body["appliedRegions"]
    answer = await in_flight
    # The purge was applied before the slow answer came back: its rows predate the purge,
    # so the node must not serve them as fresh (it fetched again instead).
    assert answer.body["rows"] == [[2]], answer.body
    again = await post(http, a, slow, API_KEY_A)
    assert again.body["rows"] == [[2]]


async def test_bad_purges(world: Stack, http: aiohttp.ClientSession) -> None:
    a = nodes(world)[0].url
    for body, field in (
        ({"tags": ["bad tag"]}, "tags"),
        ({"tags": ["x"] * 101}, "tags"),
        ({"tags": "x"}, "tags"),
        ({}, "tags"),
        ({"tags": ["x"], "wait": 31}, "wait"),
        ({"tags": ["x"], "wait": "soon"}, "wait"),
        ({"all": "yes"}, "all"),
        ({"tags": ["x"], "region": "a"}, "region"),
    ):
        reply = await purge(http, a, body)
        assert reply.status == 400 and reply.code == "bad_request", (body, reply.body)
        assert reply.body["error"]["field"] == field
    reply = await purge(http, a, {"tags": ["x"]}, key="nope")
    assert reply.status == 401
    async with http.get(
        f"{a}/v1/invalidations/00000000-0000-0000-0000-000000000000",
        headers={"Authorization": f"Bearer {API_KEY_A}"},
    ) as resp:
        assert resp.status == 404


@pytest.mark.slow
async def test_node_and_origin_restart_between_purge_and_apply(
    world: Stack, http: aiohttp.ClientSession, row: tuple[asyncpg.Connection, str]
) -> None:
    conn, key = row
    node_a, node_b = nodes(world)
    await wait_live(http, node_a.url, {"region-a", "region-b"})
    tag = marker("restart").replace("-", "_")
    assert (await post(http, node_b.url, read(key, tag), API_KEY_A)).cache_status == "miss"
    node_b.stop()
    await conn.execute("UPDATE inv_t SET v = 2 WHERE k = $1", key)
    done = await purge(http, node_a.url, {"tags": [tag], "wait": 1})
    assert done.status == 200
    assert "region-b" in done.body["pendingRegions"]  # still live, not yet applied
    assert world.origin is not None
    world.origin.stop()
    world.origin.start()
    node_b.start()
    after = await post(http, node_b.url, read(key, tag), API_KEY_A)
    assert after.status == 200 and after.body["rows"] == [[2]], after.body


@pytest.mark.slow
async def test_region_state_lost_means_resync_not_stale(
    world: Stack,
    http: aiohttp.ClientSession,
    row: tuple[asyncpg.Connection, str],
    region_redis: tuple[str, str],
) -> None:
    """Region b's invalidation state is evicted (entries kept): it must not serve them."""
    conn, key = row
    node_a, node_b = nodes(world)
    await wait_live(http, node_a.url, {"region-a", "region-b"})
    tag = marker("evict").replace("-", "_")
    assert (await post(http, node_b.url, read(key, tag), API_KEY_A)).cache_status == "miss"
    node_b.stop()  # so the purge is not applied in b before we lose b's state
    await conn.execute("UPDATE inv_t SET v = 2 WHERE k = $1", key)
    await purge(http, node_a.url, {"tags": [tag], "wait": 0})
    r = aioredis.Redis.from_url(region_redis[1])
    state = [k async for k in r.scan_iter("ce:{acme*") if b":e:" not in k]
    await r.delete(*state)  # what allkeys-lru eviction or a partial loss could do
    assert [k async for k in r.scan_iter("ce:{acme.*}:e:*")], "the entry is still there"
    await r.aclose()
    node_b.start()
    after = await post(http, node_b.url, read(key, tag), API_KEY_A)
    assert after.body["rows"] == [[2]], after.body
    # And a flushed Redis: answers continue, caching resumes.
    await _flush(region_redis[1])
    assert (await post(http, node_b.url, read(key, tag), API_KEY_A)).body["rows"] == [[2]]
    for _ in range(50):
        reply = await post(http, node_b.url, read(key, tag), API_KEY_A)
        if reply.cache_status == "ttl":
            break
        await asyncio.sleep(0.1)
    assert reply.cache_status == "ttl"


@pytest.mark.slow
async def test_region_cut_off_from_origin_stops_vouching(
    world: Stack,
    http: aiohttp.ClientSession,
    row: tuple[asyncpg.Connection, str],
    region_redis: tuple[str, str],
    redis_dbs: RedisLease,
) -> None:
    """Region c reaches the origin through its own origin replica, which we stop."""
    conn, key = row
    replica = world.add(Server("origin", free_port(), world.config))
    node_c = world.start_node(
        region="region-c", redis_url=redis_dbs.fresh("region-c"), origin_url=replica.url
    )
    a = nodes(world)[0].url
    await wait_live(http, a, {"region-a", "region-b", "region-c"})
    tag = marker("cut").replace("-", "_")
    assert (await post(http, node_c.url, read(key, tag), API_KEY_A)).cache_status == "miss"
    assert (await post(http, node_c.url, read(key, tag), API_KEY_A)).cache_status == "ttl"
    replica.stop()  # region c is cut off from the origin
    await conn.execute("UPDATE inv_t SET v = 2 WHERE k = $1", key)
    for i in range(3):  # purges happen while c is away
        await purge(http, a, {"tags": [tag if i == 1 else "unrelated"], "wait": 0})
    await asyncio.sleep(3.5)  # > sync_grace (2 s), with room for a loaded machine
    cut = await post(http, node_c.url, read(key, tag), API_KEY_A)
    assert cut.status == 502 and cut.code == "origin_unavailable", cut.body
    replica.start()
    for _ in range(50):
        back = await post(http, node_c.url, read(key, tag), API_KEY_A)
        if back.status == 200:
            break
        await asyncio.sleep(0.1)
    assert back.body["rows"] == [[2]], back.body


async def test_cli_invalidate(
    world: Stack, http: aiohttp.ClientSession, row: tuple[asyncpg.Connection, str]
) -> None:
    import subprocess
    import sys

    conn, key = row
    a, b = (n.url for n in nodes(world))
    await wait_live(http, a, {"region-a", "region-b"})
    tag = marker("cli").replace("-", "_")
    assert (await post(http, b, read(key, tag), API_KEY_A)).cache_status == "miss"
    await conn.execute("UPDATE inv_t SET v = 2 WHERE k = $1", key)
    cmd = [
        sys.executable,
        "-m",
        "cache_edge.cli",
        "invalidate",
        "--url",
        a,
        "--api-key",
        API_KEY_A,
        "--tag",
        tag,
        "--wait",
        "10",
    ]
    done = await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "region-b" in done.stdout.split("applied in:")[1].split("\n")[0]
    assert (await post(http, b, read(key, tag), API_KEY_A)).body["rows"] == [[2]]
    bad = subprocess.run([*cmd[:-4], "--tag", "no spaces"], capture_output=True, text=True)
    assert bad.returncode == 1 and "bad_request" in bad.stderr


async def test_two_origin_replicas_share_one_purge_log(
    tmp_path: Path,
    pg_databases: tuple[str, str],
    http: aiohttp.ClientSession,
    row: tuple[asyncpg.Connection, str],
    region_redis: tuple[str, str],
) -> None:
    """Regions behind different origin instances (as behind a load balancer) see one purge."""
    conn, key = row
    st = new_stack(tmp_path, pg_databases, region_redis[0], node={"sync_grace": 2.0})
    try:
        first = st.start_origin()
        second = st.add(Server("origin", free_port(), st.config))
        a = st.start_node(region="replica-a", redis_url=region_redis[0], origin_url=first.url)
        b = st.start_node(region="replica-b", redis_url=region_redis[1], origin_url=second.url)
        await wait_live(http, a.url, {"replica-a", "replica-b"})
        tag = marker("rep").replace("-", "_")
        for node in (a, b):
            assert (await post(http, node.url, read(key, tag), API_KEY_A)).cache_status == "miss"
        await conn.execute("UPDATE inv_t SET v = 2 WHERE k = $1", key)
        done = await purge(http, b.url, {"tags": [tag], "wait": 10})  # recorded via origin 2
        assert {"replica-a", "replica-b"} <= set(done.body["appliedRegions"]), done.body
        for node in (a, b):
            assert (await post(http, node.url, read(key, tag), API_KEY_A)).body["rows"] == [[2]]
    finally:
        st.stop_all()


async def test_hot_tiers_of_every_process_honour_a_purge(
    world: Stack,
    http: aiohttp.ClientSession,
    row: tuple[asyncpg.Connection, str],
    region_redis: tuple[str, str],
) -> None:
    """Two processes of region a answer from memory; once the purge returns, neither does."""
    conn, key = row
    second = world.start_node(region="region-a", redis_url=region_redis[0])
    a1, a2 = nodes(world)[0].url, second.url
    await wait_live(http, a1, {"region-a", "region-b"})
    tag = marker("hot").replace("-", "_")
    assert (await post(http, a1, read(key, tag), API_KEY_A)).cache_status == "miss"
    for _ in range(5):
        for url in (a1, a2):
            assert (await post(http, url, read(key, tag), API_KEY_A)).body["rows"] == [[1]]
    for url in (a1, a2):
        async with http.get(url + "/metrics") as resp:
            text = await resp.text()
        hits = [ln for ln in text.splitlines() if ln.startswith("cache_edge_node_memory_hits ")]
        assert hits and float(hits[0].split()[1]) >= 3, hits  # served from memory, not Redis
    await conn.execute("UPDATE inv_t SET v = 2 WHERE k = $1", key)
    done = await purge(http, a2, {"tags": [tag], "wait": 10})
    assert "region-a" in done.body["appliedRegions"]
    replies = await asyncio.gather(*(post(http, u, read(key, tag), API_KEY_A) for u in (a1, a2)))
    assert [r.body["rows"] for r in replies] == [[[2]], [[2]]]


def _origin(st: Stack) -> Server:
    return next(s for s in st.servers if s.kind == "origin")


@pytest.mark.slow
async def test_stale_if_error_never_serves_a_purged_entry_end_to_end(
    world: Stack, http: aiohttp.ClientSession, row: tuple[asyncpg.Connection, str]
) -> None:
    """Issue 13 A: purge applied, then the origin is gone past sync_grace."""
    conn, key = row
    a = nodes(world)[0].url
    await wait_live(http, a, {"region-a", "region-b"})
    purged, kept = marker("purged").replace("-", "_"), marker("kept").replace("-", "_")
    body = {
        "sql": "SELECT v FROM inv_t WHERE k = $1",
        "params": [key],
        "cacheStrategy": {"ttl": 1, "staleIfError": 300, "tags": [purged]},
    }
    control = {**body, "cacheStrategy": {"ttl": 1, "staleIfError": 300, "tags": [kept]}}
    for b in (body, control):
        assert (await post(http, a, b, API_KEY_A)).cache_status == "miss"
    await conn.execute("UPDATE inv_t SET v = 2 WHERE k = $1", key)
    done = await purge(http, a, {"tags": [purged], "wait": 10})
    assert "region-a" in done.body["appliedRegions"], done.body
    _origin(world).stop()
    await asyncio.sleep(2.5)  # past ttl and past sync_grace: the region's lease lapsed
    voided = await post(http, a, body, API_KEY_A)
    assert voided.status == 502 and voided.code == "origin_unavailable", voided.body
    stale = await post(http, a, control, API_KEY_A)
    assert stale.status == 200 and stale.cache_status == "stale", stale.body
    assert stale.body["rows"] == [[1]]


@pytest.mark.slow
async def test_flushed_region_notices_and_never_serves_pre_purge_rows(
    world: Stack,
    http: aiohttp.ClientSession,
    row: tuple[asyncpg.Connection, str],
    region_redis: tuple[str, str],
) -> None:
    """Issue 13 B: a slow miss in flight, a purge applied, FLUSHALL, the miss completes."""
    conn, key = row
    node_a = nodes(world)[0]
    await wait_live(http, node_a.url, {"region-a", "region-b"})
    tag = marker("flush").replace("-", "_")
    slow = {
        "sql": "SELECT v FROM inv_t, pg_sleep(1.0) WHERE k = $1",
        "params": [key],
        "cacheStrategy": {"ttl": 300, "tags": [tag]},
    }
    in_flight = asyncio.create_task(post(http, node_a.url, slow, API_KEY_A))
    await asyncio.sleep(0.3)  # the slow read has started and read v = 1
    await conn.execute("UPDATE inv_t SET v = 2 WHERE k = $1", key)
    done = await purge(http, node_a.url, {"tags": [tag], "wait": 10})
    assert "region-a" in done.body["appliedRegions"]
    await _flush(region_redis[0])
    await in_flight
    deadline = asyncio.get_running_loop().time() + 3.0
    while asyncio.get_running_loop().time() < deadline:
        reply = await post(http, node_a.url, slow, API_KEY_A)
        assert reply.body["rows"] == [[2]], f"pre-purge rows served as {reply.cache_status}"
    assert "invalidation_resync" in node_a.logs()
    async with http.get(f"{node_a.url}/metrics") as resp:
        text = await resp.text()
    resyncs = next(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("cache_edge_node_invalidation_resyncs ")
    )
    assert resyncs >= 2  # the first sync at start, and the flush


@pytest.mark.slow
async def test_a_database_whose_purge_log_starts_over_does_not_lock_regions_out(
    tmp_path: Path,
    pg_databases: tuple[str, str],
    http: aiohttp.ClientSession,
    region_redis: tuple[str, str],
) -> None:
    """Issue 13 I: purges reach seq 5, the database is dropped and created again (as a
    restore from an older backup or a new database would), the stack starts again."""
    db = "cache_edge_test_epoch"
    admin = await asyncpg.connect(dsn_for("postgres"))

    async def recreate() -> None:
        await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{db}"')

    await recreate()
    dsns = (dsn_for(db), pg_databases[1])
    body = {"sql": "SELECT 42 AS answer", "cacheStrategy": {"ttl": 300, "tags": ["t"]}}
    try:
        st = new_stack(tmp_path, dsns, region_redis[0], node={"sync_grace": 2.0})
        st.start_origin()
        node = st.start_node(region="region-a", redis_url=region_redis[0])
        await wait_live(http, node.url, {"region-a"})
        for _ in range(5):
            await purge(http, node.url, {"tags": ["t"], "wait": 5})
        assert (await post(http, node.url, body, API_KEY_A)).status == 200
        st.stop_all()
        await recreate()  # the purge log starts over; the region's Redis still remembers
        st.start_origin()
        node = st.start_node(region="region-a", redis_url=region_redis[0])
        statuses = []
        for _ in range(50):
            reply = await post(http, node.url, body, API_KEY_A)
            statuses.append((reply.status, reply.cache_status))
            if reply.cache_status == "ttl":
                break
            await asyncio.sleep(0.1)
        assert reply.status == 200 and reply.cache_status == "ttl", (statuses, reply.body)
        # A first hit can come from the old state's sync lease (up to sync_grace old) before
        # the applier's first poll has seen the new epoch; that poll follows at once.
        for _ in range(30):
            if "invalidation_epoch_changed" in node.logs():
                break
            await asyncio.sleep(0.1)
        assert "invalidation_epoch_changed" in node.logs()
        # And purges of the new log are applied and reported as such.
        done = await purge(http, node.url, {"tags": ["t"], "wait": 5})
        assert "region-a" in done.body["appliedRegions"], done.body
        assert (await post(http, node.url, body, API_KEY_A)).cache_status == "miss"
    finally:
        st.stop_all()
        await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await admin.close()
