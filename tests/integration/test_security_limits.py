"""Fairness and limits at running servers: rate limits, per-tenant caps, request size limits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cache_edge.devtools.harness import free_port
from tests.conftest import API_KEY_A, API_KEY_B, RedisLease, make_settings_doc, sha
from tests.integration.node_helpers import Reply, post
from tests.integration.security_helpers import eventually, metric_value
from tests.integration.stack import Server, Stack, running_stack

pytestmark = pytest.mark.security

SECOND_KEY_A = "ce_second_key_of_tenant_a_abcdef"
SELECT = {"sql": "SELECT 1"}


@pytest.fixture
def region_redis(redis_dbs: RedisLease) -> str:
    return redis_dbs.fresh()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(limit=500)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=60)
    ) as s:
        yield s


def _doc(pg: tuple[str, str], redis_url: str, **sections: Any) -> dict[str, Any]:
    """The tests' settings; ``tenants={i: {...}}`` updates tenant i, other sections theirs."""
    tenants = sections.pop("tenants", {})
    doc = make_settings_doc(*pg, node={"redis_url": redis_url, **sections.pop("node", {})})
    for key, value in sections.items():
        base = doc.setdefault(key, {})
        assert isinstance(base, dict)
        base.update(value)
    for i, extra in tenants.items():
        doc["tenants"][i].update(extra)  # type: ignore[index]
    return doc


def _stack(tmp: Path, pg: tuple[str, str], redis_url: str, **sections: Any) -> Stack:
    return Stack(tmp, _doc(pg, redis_url, **sections))


def nodes(stack: Stack) -> list[Server]:
    return [s for s in stack.servers if s.kind == "node"]


# ------------------------------------------------------------------------- rate limits


async def test_rate_limit_is_one_bucket_per_key_shared_by_the_region(
    tmp_path: Path, pg_databases: tuple[str, str], region_redis: str, http: aiohttp.ClientSession
) -> None:
    stack = _stack(
        tmp_path,
        pg_databases,
        region_redis,
        rate_limit={"rate": 1000.0, "burst": 1000},  # the global default (globex)
        tenants={
            0: {
                "api_keys_sha256": [sha(API_KEY_A), sha(SECOND_KEY_A)],
                "rate_limit": {"rate": 2.0, "burst": 5},
            }
        },
    )
    stack.start_origin()
    one, two = stack.start_node("eu-west"), stack.start_node("eu-west")
    try:
        # Five tokens for the key, taken alternately at two processes of the region.
        for i in range(5):
            reply = await post(http, (one, two)[i % 2].url, SELECT, API_KEY_A, fmt="json")
            assert reply.status == 200, reply.body
        refused = await post(http, two.url, SELECT, API_KEY_A, fmt="json")
        assert refused.status == 429 and refused.code == "rate_limited"
        assert int(refused.headers["Retry-After"]) >= 1
        assert "2 requests/s" in refused.body["error"]["message"]
        assert (await post(http, one.url, SELECT, API_KEY_A, fmt="json")).status == 429
        # Refused before any work: the body is not even read (this one is not JSON).
        bad = await post(http, one.url, None, API_KEY_A, fmt="json", raw=b"\xff" * 10)
        assert bad.status == 429
        # Another key of the same tenant has a bucket of its own; other tenants too.
        assert (await post(http, one.url, SELECT, SECOND_KEY_A, fmt="json")).status == 200
        for _ in range(20):
            assert (await post(http, two.url, SELECT, API_KEY_B, fmt="json")).status == 200
        # Tokens come back at the configured rate.
        await asyncio.sleep(float(refused.headers["Retry-After"]))
        assert (await post(http, one.url, SELECT, API_KEY_A, fmt="json")).status == 200
    finally:
        stack.stop_all()


async def test_without_redis_each_process_still_limits(
    tmp_path: Path, pg_databases: tuple[str, str], http: aiohttp.ClientSession
) -> None:
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    stack = _stack(
        tmp_path,
        pg_databases,
        dead_redis,
        tenants={0: {"rate_limit": {"rate": 0.5, "burst": 3}}},
    )
    stack.start_origin()
    node = stack.start_node("eu-west", redis_url=dead_redis)
    try:
        statuses = [
            (await post(http, node.url, SELECT, API_KEY_A, fmt="json")).status for _ in range(6)
        ]
        assert statuses == [200, 200, 200, 429, 429, 429]  # neither open nor closed
        assert (await post(http, node.url, SELECT, API_KEY_B, fmt="json")).status == 200
    finally:
        stack.stop_all()


# --------------------------------------------------------------------------- fairness


@pytest.mark.parametrize("cap", [None, 4], ids=["node_fair_share", "with_origin_cap"])
async def test_a_tenant_flooding_slow_queries_does_not_starve_another(
    tmp_path: Path,
    pg_databases: tuple[str, str],
    region_redis: str,
    http: aiohttp.ClientSession,
    cap: int | None,
) -> None:
    """The node shares its origin connections fairly; the origin caps what a tenant queues.

    Without either, B's requests queued behind A's (each waiting up to pool_timeout
    for one of A's two connections) and took seconds.
    """
    stack = _stack(
        tmp_path,
        pg_databases,
        region_redis,
        node={"origin_max_connections": 10},
        origin={"pool_max_size": 2, "pool_timeout": 5.0},
        tenants={0: {"max_concurrency": cap}} if cap else {},
    )
    origin = stack.start_origin()
    node = stack.start_node("eu-west")
    flood_replies: list[Reply] = []
    stop = asyncio.Event()

    async def flood(i: int) -> None:
        n = 0
        while not stop.is_set():
            body = {"sql": "SELECT pg_sleep(1.0), $1::int", "params": [i * 1000 + n]}
            flood_replies.append(await post(http, node.url, body, API_KEY_A, fmt="json"))
            n += 1

    try:
        flooders = [asyncio.create_task(flood(i)) for i in range(30)]
        await asyncio.sleep(1.0)  # let the flood fill everything it can
        latencies = []
        for i in range(15):
            started = time.monotonic()
            reply = await post(
                http, node.url, {"sql": "SELECT $1::int", "params": [i]}, API_KEY_B, fmt="json"
            )
            latencies.append(time.monotonic() - started)
            assert reply.status == 200, reply.body
            assert reply.body["rows"] == [[i]]
            await asyncio.sleep(0.1)
        stop.set()
        await asyncio.gather(*flooders)
        assert max(latencies) < 1.0, latencies
        codes = {r.code for r in flood_replies}
        assert None in codes  # A is served too, at its share...
        refused = [r for r in flood_replies if r.code == "pool_timeout"]
        assert all("Retry-After" in r.headers for r in refused)  # ...and told when to retry
        if cap:  # refused at once, not after waiting pool_timeout
            assert refused and all("max_concurrency" in r.body["error"]["message"] for r in refused)

        # Nothing is left holding a connection afterwards (queries the node gave up on
        # still finish at the origin first).
        async def idle() -> bool:
            async with http.get(origin.url + "/metrics") as resp:
                metrics = await resp.text()
            return all(
                metric_value(metrics, f"cache_edge_origin_pool_{gauge}", tenant=tenant) == 0
                for tenant in ("acme", "globex")
                for gauge in ("in_use", "waiting")
            )

        await eventually(idle, timeout=20)
    finally:
        stop.set()
        stack.stop_all()


# ----------------------------------------------------------------------- request limits

LIMITS = {
    "max_body_bytes": 4096,
    "max_sql_length": 200,
    "max_params": 5,
    "max_depth": 4,
    "max_string_length": 50,
    "max_statements": 3,
}


@pytest.fixture(scope="module")
def limited(
    tmp_path_factory: pytest.TempPathFactory, pg_databases: tuple[str, str], redis_dbs: RedisLease
) -> Iterator[Server]:
    doc = _doc(pg_databases, redis_dbs("limited"), limits=LIMITS)
    with running_stack(tmp_path_factory.mktemp("limited"), doc, [("eu-west", None)]) as stack:
        yield stack.nodes()[0]


@pytest.mark.parametrize(
    ("body", "path", "status", "code", "field", "words"),
    [
        ({"sql": "SELECT 1 -- " + "x" * 200}, "/v1/query", 413, "payload_too_large", "sql", "limit is 200"),
        ({"sql": "SELECT 1", "params": list(range(6))}, "/v1/query", 413, "payload_too_large", "params", "limit is 5"),
        ({"sql": "SELECT $1", "params": [[[[[1]]]]]}, "/v1/query", 400, "bad_request", "params[0][0][0][0][0]", "deeper than 4"),
        ({"sql": "SELECT $1", "params": ["x" * 51]}, "/v1/query", 413, "payload_too_large", "params[0]", "limit of 50"),
        ({"sql": "SELECT $1", "params": [{"k": "x" * 51}]}, "/v1/query", 413, "payload_too_large", "params[0].k", "limit of 50"),
        ({"statements": [{"sql": "SELECT 1"}] * 4}, "/v1/transaction", 413, "payload_too_large", "statements", "limit is 3"),
        ({"sql": "SELECT 1", "cacheStrategy": {"ttl": 10, "tags": list("abcdef")}}, "/v1/query", 400, "bad_request", "cacheStrategy.tags", "at most 5"),
        ({"sql": "SELECT 1", "cacheStrategy": {"ttl": 10**12}}, "/v1/query", 400, "bad_request", "cacheStrategy.ttl", "between 0"),
        ({"tags": ["t"] * 101}, "/v1/invalidate", 400, "bad_request", "tags", "at most 100"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("fmt", ["json", "msgpack"])
async def test_each_request_limit_answers_clearly(
    limited: Server,
    http: aiohttp.ClientSession,
    fmt: str,
    body: dict[str, Any],
    path: str,
    status: int,
    code: str,
    field: str,
    words: str,
) -> None:
    reply = await post(http, limited.url, body, API_KEY_A, fmt=fmt, path=path)
    assert reply.status == status, reply.body
    assert reply.code == code
    assert reply.body["error"].get("field") == field
    assert words in reply.body["error"]["message"]
    assert (await post(http, limited.url, SELECT, API_KEY_A, fmt=fmt)).status == 200


async def test_body_size_limit_with_and_without_content_length(
    limited: Server, http: aiohttp.ClientSession
) -> None:
    big = b'{"sql": "SELECT 1", "params": ["' + b"x" * 5000 + b'"]}'
    reply = await post(http, limited.url, None, API_KEY_A, fmt="json", raw=big)
    assert reply.status == 413 and reply.code == "payload_too_large"
    assert "4096" in reply.body["error"]["message"]

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(big), 512):
            yield big[i : i + 512]

    headers = {"Authorization": f"Bearer {API_KEY_A}", "Content-Type": "application/json"}
    async with http.post(limited.url + "/v1/query", data=chunks(), headers=headers) as resp:
        assert resp.headers.get("Transfer-Encoding") != "chunked" or True
        assert resp.status == 413
        assert (await resp.json())["error"]["code"] == "payload_too_large"
    assert (await post(http, limited.url, SELECT, API_KEY_A)).status == 200
