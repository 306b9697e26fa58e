"""The regional node end to end: real node processes, a real origin, PostgreSQL and Redis.

Every test counts what PostgreSQL actually executed (ce_mark logs each execution
through dblink) and asserts what a client sees: status, headers and body.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import API_KEY_A, API_KEY_B, executions
from tests.integration.conftest import PrivateRedis
from tests.integration.node_helpers import Reply, marker, new_stack, node_doc, post
from tests.integration.stack import Stack, running_stack


@pytest.fixture
def stack(tmp_path: Path, pg_databases: tuple[str, str], flushed_redis: str) -> Iterator[Stack]:
    with running_stack(tmp_path, node_doc(pg_databases, flushed_redis), [("eu-west", None)]) as st:
        yield st


def node_url(stack: Stack, i: int = 0) -> str:
    return [s for s in stack.servers if s.kind == "node"][i].url


def q(m: str, **strategy: object) -> dict[str, object]:
    body: dict[str, object] = {"sql": "SELECT ce_mark($1) AS m, 42 AS answer", "params": [m]}
    if strategy:
        body["cacheStrategy"] = strategy
    return body


@pytest.mark.parametrize("fmt", ["msgpack", "json"])
async def test_miss_then_ttl_hit(stack: Stack, http: aiohttp.ClientSession, fmt: str) -> None:
    m = marker()
    first = await post(http, node_url(stack), q(m, ttl=60, swr=30, tags=["t1"]), API_KEY_A, fmt=fmt)
    assert first.status == 200, first.body
    assert first.cache_status == "miss"
    assert first.body["rows"] == [[m, 42]]
    assert first.body["columns"] == [
        {"name": "m", "type": "text"},
        {"name": "answer", "type": "int4"},
    ]
    assert first.body["rowCount"] == 1
    second = await post(
        http, node_url(stack), q(m, ttl=60, swr=30, tags=["t1"]), API_KEY_A, fmt=fmt
    )
    assert second.cache_status == "ttl"
    assert second.body["rows"] == [[m, 42]]
    assert second.headers["X-Cache-Status"] == "ttl"
    assert int(second.headers["Age"]) >= 0
    assert second.headers["X-Request-Id"] == second.info["requestId"]
    info = second.info
    assert info["region"] == "eu-west"
    assert info["signature"] == first.info["signature"] and len(info["signature"]) == 32
    assert info["lastModified"] == first.info["lastModified"]
    assert info["lastModified"].endswith("Z")
    assert 0 <= info["age"] < 60
    assert await executions(m) == 1


async def test_no_strategy_is_not_cached(stack: Stack, http: aiohttp.ClientSession) -> None:
    m = marker()
    for _ in range(2):
        reply = await post(http, node_url(stack), q(m), API_KEY_A)
        assert reply.cache_status == "none"
    reply = await post(http, node_url(stack), q(m, ttl=0, swr=0), API_KEY_A)
    assert reply.cache_status == "none" and reply.info["signature"] is None
    assert await executions(m) == 3


async def test_expiry_refetches(stack: Stack, http: aiohttp.ClientSession) -> None:
    m = marker()
    assert (await post(http, node_url(stack), q(m, ttl=1), API_KEY_A)).cache_status == "miss"
    assert (await post(http, node_url(stack), q(m, ttl=1), API_KEY_A)).cache_status == "ttl"
    await asyncio.sleep(1.2)
    assert (await post(http, node_url(stack), q(m, ttl=1), API_KEY_A)).cache_status == "miss"
    assert await executions(m) == 2


async def test_swr_serves_stale_and_refreshes_once_per_region(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    stack.start_node(region="eu-west")  # a second process of the same region
    urls = [node_url(stack, 0), node_url(stack, 1)]
    m = marker()
    assert (await post(http, urls[0], q(m, ttl=1, swr=60), API_KEY_A)).cache_status == "miss"
    await asyncio.sleep(1.2)
    replies = await asyncio.gather(
        *(post(http, urls[i % 2], q(m, ttl=1, swr=60), API_KEY_A) for i in range(60))
    )
    statuses = {r.cache_status for r in replies}
    assert "swr" in statuses and statuses <= {"swr", "ttl"}
    assert all(r.body["rows"] == [[m, 42]] for r in replies)
    await asyncio.sleep(0.5)  # let the background refresh land
    assert await executions(m) == 2  # the first miss + exactly one refresh
    after = await post(http, urls[1], q(m, ttl=1, swr=60), API_KEY_A)
    assert after.cache_status == "ttl"
    assert after.info["lastModified"] > replies[0].info["lastModified"]


async def test_key_separation(stack: Stack, http: aiohttp.ClientSession) -> None:
    m = marker()
    sql = "SELECT ce_mark($1 || ':' || $2::numeric::text) AS m"
    sigs = set()
    for value in (1, "1", 1.5, "1.5"):
        reply = await post(
            http,
            node_url(stack),
            {"sql": sql, "params": [m, value], "cacheStrategy": {"ttl": 60}},
            API_KEY_A,
        )
        assert reply.status == 200, reply.body
        assert reply.cache_status == "miss"
        sigs.add(reply.info["signature"])
    assert len(sigs) == 4
    # The strategy is part of the key too.
    other = await post(http, node_url(stack), q(m, ttl=61), API_KEY_A)
    again = await post(http, node_url(stack), q(m, ttl=60), API_KEY_A)
    assert other.cache_status == "miss" and again.cache_status == "miss"
    assert other.info["signature"] != again.info["signature"]


async def test_same_query_two_tenants_never_share(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    m = marker()
    a = await post(http, node_url(stack), q(m, ttl=60), API_KEY_A)
    b = await post(http, node_url(stack), q(m, ttl=60), API_KEY_B)
    assert a.cache_status == "miss" and b.cache_status == "miss"
    assert a.info["signature"] != b.info["signature"]
    assert await executions(m) == 1  # tenant A's database
    from tests.conftest import TEST_DB_B

    assert await executions(m, TEST_DB_B) == 1  # tenant B's own database


async def test_concurrent_misses_over_two_processes_run_once(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    stack.start_node(region="eu-west")
    urls = [node_url(stack, 0), node_url(stack, 1)]
    m = marker()
    body = {
        "sql": "SELECT ce_mark($1) AS m, pg_sleep(0.3) IS NOT NULL AS slept",
        "params": [m],
        "cacheStrategy": {"ttl": 60},
    }
    replies = await asyncio.gather(*(post(http, urls[i % 2], body, API_KEY_A) for i in range(200)))
    assert all(r.status == 200 for r in replies), {r.status for r in replies}
    assert all(r.body["rows"] == [[m, True]] for r in replies)
    assert await executions(m) == 1


async def test_stale_if_error_when_origin_is_down(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    m, n = marker(), marker()
    assert (
        await post(http, node_url(stack), q(m, ttl=1, staleIfError=60), API_KEY_A)
    ).status == 200
    assert (await post(http, node_url(stack), q(n, ttl=1), API_KEY_A)).status == 200
    assert stack.origin is not None
    stack.origin.stop()
    await asyncio.sleep(1.2)
    stale = await post(http, node_url(stack), q(m, ttl=1, staleIfError=60), API_KEY_A)
    assert stale.status == 200
    assert stale.cache_status == "stale"
    assert stale.info["error"] == "origin_unavailable"
    assert stale.body["rows"] == [[m, 42]]
    gone = await post(http, node_url(stack), q(n, ttl=1), API_KEY_A)
    assert gone.status == 502 and gone.code == "origin_unavailable"
    stack.origin.start()
    back = await post(http, node_url(stack), q(m, ttl=1, staleIfError=60), API_KEY_A)
    assert back.cache_status == "miss"


async def test_origin_errors_pass_through(stack: Stack, http: aiohttp.ClientSession) -> None:
    reply = await post(
        http,
        node_url(stack),
        {"sql": "SELECT * FROM no_such_table", "cacheStrategy": {"ttl": 5}},
        API_KEY_A,
    )
    assert reply.status == 400 and reply.code == "query_error"
    assert reply.body["error"]["sqlstate"] == "42P01"
    write = await post(
        http,
        node_url(stack),
        {"sql": "CREATE TEMP TABLE t_write(x int)", "cacheStrategy": {"ttl": 5}},
        API_KEY_A,
    )
    assert write.status == 400 and write.code == "not_cacheable"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"sql": "SELECT 1", "cacheStrategy": {"ttl": -1}}, "cacheStrategy.ttl"),
        ({"sql": "SELECT 1", "cacheStrategy": {"ttl": 1.5}}, "cacheStrategy.ttl"),
        ({"sql": "SELECT 1", "cacheStrategy": {"swr": 31536001}}, "cacheStrategy.swr"),
        ({"sql": "SELECT 1", "cacheStrategy": {"ttl": 1, "tags": ["a b"]}}, "cacheStrategy.tags"),
        (
            {"sql": "SELECT 1", "cacheStrategy": {"ttl": 1, "tags": list("abcdef")}},
            "cacheStrategy.tags",
        ),
        ({"sql": "SELECT 1", "cacheStrategy": {"ttl": 1, "nope": 1}}, "cacheStrategy.nope"),
        ({"sql": "SELECT 1", "cacheStrategy": "60"}, "cacheStrategy"),
        ({"sql": "", "cacheStrategy": {"ttl": 1}}, "sql"),
        ({"sql": "SELECT 1", "params": "x"}, "params"),
        ({"sql": "SELECT 1", "bogus": True}, "bogus"),
    ],
)
async def test_bad_requests_name_the_field(
    stack: Stack, http: aiohttp.ClientSession, body: dict[str, object], field: str
) -> None:
    reply = await post(http, node_url(stack), body, API_KEY_A, fmt="json")
    assert reply.status == 400
    assert reply.code == "bad_request"
    assert reply.body["error"]["field"] == field
    assert reply.body["error"]["requestId"]


async def test_malformed_bodies(stack: Stack, http: aiohttp.ClientSession) -> None:
    for raw, fmt in ((b"{nope", "json"), (b"\xc1", "msgpack"), (b"", "json"), (b"[1]", "json")):
        reply = await post(http, node_url(stack), None, API_KEY_A, fmt=fmt, raw=raw)
        assert reply.status == 400 and reply.code == "bad_request", (raw, reply.body)
    big = b'{"sql": "' + b"x" * 2_000_000 + b'"}'
    reply = await post(http, node_url(stack), None, API_KEY_A, fmt="json", raw=big)
    assert reply.status == 413 and reply.code == "payload_too_large"
    reply = await post(
        http, node_url(stack), None, API_KEY_A, raw=b"x", headers={"Content-Type": "text/xml"}
    )
    assert reply.status == 400 and "Content-Type" in reply.body["error"]["message"]


async def test_wrong_api_key(stack: Stack, http: aiohttp.ClientSession) -> None:
    for key in (None, "wrong", ""):
        reply = await post(http, node_url(stack), q(marker(), ttl=5), key, fmt="json")
        assert reply.status == 401 and reply.code == "unauthorized"
        assert "acme" not in str(reply.body)


async def test_transaction_passes_through(stack: Stack, http: aiohttp.ClientSession) -> None:
    m = marker()
    body = {
        "statements": [
            {"sql": "CREATE TABLE IF NOT EXISTS node_tx (v text)"},
            {"sql": "INSERT INTO node_tx VALUES ($1)", "params": [m]},
            {"sql": "SELECT count(*) AS n FROM node_tx WHERE v = $1", "params": [m]},
        ],
        "isolationLevel": "serializable",
    }
    reply = await post(http, node_url(stack), body, API_KEY_A, path="/v1/transaction")
    assert reply.status == 200, reply.body
    assert reply.body["results"][2]["rows"] == [[1]]
    assert reply.info["cacheStatus"] == "none"
    body["statements"].append({"sql": "SELECT 1/0"})  # type: ignore[attr-defined]
    failed = await post(http, node_url(stack), body, API_KEY_A, path="/v1/transaction")
    assert failed.status == 400 and failed.body["error"]["statementIndex"] == 3
    count = await post(
        http,
        node_url(stack),
        {"sql": "SELECT count(*) FROM node_tx WHERE v = $1", "params": [m]},
        API_KEY_A,
    )
    assert count.body["rows"] == [[1]]  # the failed transaction's insert was rolled back


async def test_health_ready_metrics(stack: Stack, http: aiohttp.ClientSession) -> None:
    url = node_url(stack)
    async with http.get(url + "/healthz") as r:
        assert r.status == 200
    async with http.get(url + "/readyz") as r:
        assert r.status == 200 and (await r.json())["ready"] is True
    await post(http, url, q(marker(), ttl=5), API_KEY_A)
    async with http.get(url + "/metrics") as r:
        text = await r.text()
    assert 'cache_edge_node_requests_total{cache_status="miss"}' in text
    assert stack.origin is not None
    stack.origin.stop()
    async with http.get(url + "/readyz") as r:
        assert r.status == 503 and (await r.json())["origin"] is False


def _reply_ok(reply: Reply) -> bool:
    return reply.status == 200 and "rows" in reply.body


@pytest.mark.slow
async def test_redis_down_then_back(
    tmp_path: Path,
    pg_databases: tuple[str, str],
    http: aiohttp.ClientSession,
    private_redis: Callable[..., PrivateRedis],
) -> None:
    """A private redis-server is killed mid-test: answers continue from the origin."""
    redis = private_redis()
    st = new_stack(
        tmp_path,
        pg_databases,
        redis.url,
        node={"redis_retry_after": 0.2, "redis_timeout": 0.2},
    )
    try:
        st.start_origin()
        st.start_node()
        url = node_url(st)
        m = marker()
        assert (await post(http, url, q(m, ttl=60), API_KEY_A)).cache_status == "miss"
        assert (await post(http, url, q(m, ttl=60), API_KEY_A)).cache_status == "ttl"
        redis.stop()
        for _ in range(3):
            reply = await post(http, url, q(m, ttl=60), API_KEY_A)
            assert _reply_ok(reply), reply.body
            assert reply.cache_status == "miss"
            assert reply.info["cacheError"] == "redis_unavailable"
        async with http.get(url + "/readyz") as r:
            assert r.status == 503
        redis.start()
        # As long as before the harness waited for the port (a 0.5 s sleep, then 20 tries).
        deadline = time.monotonic() + 3.0
        statuses = []
        while not statuses or time.monotonic() < deadline:
            reply = await post(http, url, q(m, ttl=60), API_KEY_A)
            assert _reply_ok(reply)
            statuses.append(reply.cache_status)
            if statuses[-1] == "ttl":
                break
            await asyncio.sleep(0.1)
        assert statuses[-1] == "ttl", statuses  # Redis is used again once it is back
    finally:
        st.stop_all()


async def test_info_warns_when_a_result_depends_on_more_than_tables(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    m = marker()
    clocked = {
        "sql": "SELECT now() AS t, $1::text AS m",
        "params": [m],
        "cacheStrategy": {"ttl": 60},
    }
    for expected in ("miss", "ttl"):  # the warning travels with the cached entry
        reply = await post(http, node_url(stack), clocked, API_KEY_A)
        assert reply.cache_status == expected
        assert any("now()" in w for w in reply.info["warnings"]), reply.info
    plain = {"sql": "SELECT $1::text AS m", "params": [marker()], "cacheStrategy": {"ttl": 60}}
    assert "warnings" not in (await post(http, node_url(stack), plain, API_KEY_A)).info
    volatile = await post(http, node_url(stack), q(marker(), ttl=60), API_KEY_A)
    assert any("ce_mark()" in w for w in volatile.info["warnings"])  # a volatile function
