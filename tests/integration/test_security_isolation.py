"""Tenant isolation at running servers: own database, own entries, flights, purges and errors."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest

from cache_edge.common.signing import sign_headers
from cache_edge.common.wire import packb, unpackb
from tests.conftest import (
    API_KEY_A,
    API_KEY_B,
    NODE_SECRET,
    TEST_DB,
    TEST_DB_B,
    RedisLease,
    dsn_for,
    executions,
)
from tests.integration.node_helpers import marker, node_doc, post
from tests.integration.stack import Server, Stack, running_stack

pytestmark = pytest.mark.security

SECRET_VALUE = "globex-confidential-7f3a9c"
BROKEN_PASSWORD = "pw-of-a-broken-tenant-91b2"


@pytest.fixture
def stack(tmp_path: Path, pg_databases: tuple[str, str], redis_dbs: RedisLease) -> Iterator[Stack]:
    doc = node_doc(pg_databases, redis_dbs.fresh())
    u = urlsplit(pg_databases[0])
    # Port 1: nothing listens there, whichever PostgreSQL the tests use.
    broken = u._replace(netloc=f"{u.username}:{BROKEN_PASSWORD}@127.0.0.1:1").geturl()
    tenants: list[dict[str, Any]] = doc["tenants"]
    tenants.append({"id": "broken", "api_keys_sha256": [], "database_url": broken})
    with running_stack(tmp_path, doc, [("eu-west", None)]) as st:
        yield st


def node(stack: Stack) -> Server:
    return next(s for s in stack.servers if s.kind == "node")


def cached(sql: str, params: list[Any], **strategy: Any) -> dict[str, Any]:
    return {"sql": sql, "params": params, "cacheStrategy": {"ttl": 60, **strategy}}


async def test_each_key_reaches_only_its_own_database(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    url = node(stack).url
    query = {"sql": "SELECT current_database()"}
    a = await post(http, url, query, API_KEY_A, fmt="json")
    b = await post(http, url, query, API_KEY_B, fmt="json")
    assert a.body["rows"] == [[TEST_DB]] and b.body["rows"] == [[TEST_DB_B]]
    # Client-supplied routing headers are ignored: only the key decides the tenant.
    spoofed = await post(
        http, url, query, API_KEY_A, fmt="json", headers={"X-Cache-Edge-Tenant": "globex"}
    )
    assert spoofed.body["rows"] == [[TEST_DB]]


async def test_identical_sql_never_shares_an_entry_a_flight_or_a_purge(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    url = node(stack).url
    m = marker("iso")
    body = cached("SELECT ce_mark($1), current_database(), pg_sleep(0.3)", [m], tags=["shared"])
    # Concurrent identical misses under two tenants: neither joins the other's flight.
    replies = await asyncio.gather(
        *(post(http, url, body, key) for key in (API_KEY_A, API_KEY_B) * 4)
    )
    assert all(r.status == 200 for r in replies), [r.body for r in replies]
    for reply, db in zip(replies, (TEST_DB, TEST_DB_B) * 4, strict=True):
        assert reply.body["rows"][0][1] == db
    assert await executions(m, TEST_DB) == 1 and await executions(m, TEST_DB_B) == 1
    sig_a, sig_b = replies[0].info["signature"], replies[1].info["signature"]
    assert sig_a != sig_b
    # Each hits its own entry.
    hit_a = await post(http, url, body, API_KEY_A)
    hit_b = await post(http, url, body, API_KEY_B)
    assert (hit_a.cache_status, hit_b.cache_status) == ("ttl", "ttl")
    assert hit_a.body["rows"][0][1] == TEST_DB and hit_b.body["rows"][0][1] == TEST_DB_B
    # A purges the tag both use: only A's entry goes.
    purge = await post(
        http, url, {"tags": ["shared"], "wait": 10}, API_KEY_A, path="/v1/invalidate"
    )
    assert purge.status == 200 and purge.body["pendingRegions"] == [], purge.body
    after_a = await post(http, url, body, API_KEY_A)
    after_b = await post(http, url, body, API_KEY_B)
    assert after_a.cache_status == "miss" and after_b.cache_status == "ttl"
    # B cannot read A's purge either.
    status = await _get(http, url + f"/v1/invalidations/{purge.body['invalidationId']}", API_KEY_B)
    assert status[0] == 404 and status[1]["error"]["code"] == "not_found"
    status = await _get(http, url + f"/v1/invalidations/{purge.body['invalidationId']}", API_KEY_A)
    assert status[0] == 200


async def _get(http: aiohttp.ClientSession, url: str, key: str) -> tuple[int, Any]:
    async with http.get(url, headers={"Authorization": f"Bearer {key}"}) as resp:
        return resp.status, await resp.json()


async def test_the_origin_never_coalesces_across_tenants(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    assert stack.origin is not None
    m = marker("iso-origin")
    data = packb({"sql": "SELECT ce_mark($1), pg_sleep(0.3)", "params": [m], "readOnly": True})

    async def ask(tenant: str) -> int:
        headers = {
            "Content-Type": "application/msgpack",
            **sign_headers(NODE_SECRET, "POST", "/v1/query", tenant, data),
        }
        async with http.post(stack.origin.url + "/v1/query", data=data, headers=headers) as r:  # type: ignore[union-attr]
            return r.status

    statuses = await asyncio.gather(*(ask(t) for t in ("acme", "globex") * 5))
    assert set(statuses) == {200}
    assert await executions(m, TEST_DB) == 1 and await executions(m, TEST_DB_B) == 1


async def test_errors_never_reveal_another_tenants_data_or_dsn(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    conn = await asyncpg.connect(dsn_for(TEST_DB_B))
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS globex_private (v text)")
        await conn.execute("TRUNCATE globex_private")
        await conn.execute("INSERT INTO globex_private VALUES ($1)", SECRET_VALUE)
    finally:
        await conn.close()
    url = node(stack).url
    seen: list[str] = []
    for sql in (
        "SELECT * FROM globex_private",
        "SELECT v FROM globex_private WHERE v = 'x'",
        "SELECT * FROM pg_catalog.pg_database WHERE datname = 'nope' AND NOT EXISTS "
        "(SELECT 1 FROM globex_private)",
    ):
        reply = await post(http, url, {"sql": sql}, API_KEY_A, fmt="json")
        assert reply.status in (400, 503), reply.body
        seen.append(str(reply.body))
    assert (await post(http, url, {"sql": "SELECT v FROM globex_private"}, API_KEY_B)).body[
        "rows"
    ] == [[SECRET_VALUE]]
    # A tenant whose database is down: its error names neither its DSN nor its password.
    assert stack.origin is not None
    data = packb({"sql": "SELECT 1", "params": [], "readOnly": True})
    headers = {
        "Content-Type": "application/msgpack",
        **sign_headers(NODE_SECRET, "POST", "/v1/query", "broken", data),
    }
    async with http.post(stack.origin.url + "/v1/query", data=data, headers=headers) as resp:
        answer = unpackb(await resp.read())
        assert resp.status == 503 and answer["error"]["code"] == "database_unavailable"
        seen.append(str(answer))
    for text in seen:
        for leak in (SECRET_VALUE, BROKEN_PASSWORD, "127.0.0.1:1", TEST_DB_B, "postgresql://"):
            assert leak not in text, text
    for server in stack.servers:
        assert BROKEN_PASSWORD not in server.logs()
