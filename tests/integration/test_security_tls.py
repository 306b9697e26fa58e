"""Transport security at running servers: https node and origin, rediss, sslmode to PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cache_edge.devtools.harness import free_port
from tests.conftest import API_KEY_A, make_settings_doc
from tests.integration.conftest import PrivateRedis
from tests.integration.node_helpers import marker, post
from tests.integration.security_helpers import Certs, HttpsServer, client_ssl, make_certs
from tests.integration.stack import Stack

pytestmark = pytest.mark.security


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def _start(stack: Stack, kind: str, ca: Path, args: list[str]) -> HttpsServer:
    server = HttpsServer(kind, free_port(), stack.config, args)
    server.ca = ca
    stack.add(server)
    return server


@pytest.fixture
async def http_tls(certs: Certs) -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(ssl=client_ssl(certs.ca))
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=30)
    ) as s:
        yield s


def _tls_doc(pg: tuple[str, str], certs: Certs, redis_url: str, **node: Any) -> dict[str, Any]:
    pair = {"tls_cert": str(certs.cert), "tls_key": str(certs.key)}
    return make_settings_doc(
        *pg,
        origin=pair,
        node={"redis_url": redis_url, "origin_ca": str(certs.ca), **pair, **node},
    )


async def test_node_and_origin_over_https(
    tmp_path: Path,
    pg_databases: tuple[str, str],
    certs: Certs,
    http_tls: aiohttp.ClientSession,
    flushed_redis: str,
) -> None:
    stack = Stack(tmp_path, _tls_doc(pg_databases, certs, flushed_redis))
    try:
        origin = _start(stack, "origin", certs.ca, [])
        node = _start(stack, "node", certs.ca, ["--region", "tls", "--origin-url", origin.url])
        assert node.url.startswith("https://") and origin.url.startswith("https://")
        m = marker("tls")
        body = {"sql": "SELECT $1::text AS m", "params": [m], "cacheStrategy": {"ttl": 60}}
        first = await post(http_tls, node.url, body, API_KEY_A)
        assert first.status == 200 and first.cache_status == "miss", first.body
        assert first.body["rows"] == [[m]]
        second = await post(http_tls, node.url, body, API_KEY_A)
        assert second.cache_status == "ttl"
        # Plain http to a TLS listener gets nowhere.
        async with aiohttp.ClientSession() as plain:
            with pytest.raises(aiohttp.ClientError):
                await post(plain, node.url.replace("https", "http"), body, API_KEY_A)
    finally:
        stack.stop_all()


async def test_node_refuses_an_origin_certificate_it_cannot_verify(
    tmp_path: Path,
    pg_databases: tuple[str, str],
    certs: Certs,
    http_tls: aiohttp.ClientSession,
    flushed_redis: str,
) -> None:
    other = make_certs(tmp_path / "other", name="other")  # a CA that did not sign the origin
    doc = _tls_doc(pg_databases, certs, flushed_redis, origin_ca=str(other.ca))
    stack = Stack(tmp_path, doc)
    try:
        origin = _start(stack, "origin", certs.ca, [])
        node = _start(stack, "node", certs.ca, ["--region", "tls", "--origin-url", origin.url])
        reply = await post(http_tls, node.url, {"sql": "SELECT 1"}, API_KEY_A)
        assert reply.status == 502 and reply.code == "origin_unavailable", reply.body
        message = reply.body["error"]["message"]
        assert "verify failed" not in message and "127.0.0.1" not in message  # detail: log only
        assert "certificate verify failed" in node.logs().lower()
    finally:
        stack.stop_all()


@pytest.fixture
def tls_redis(certs: Certs, private_redis: Callable[..., PrivateRedis]) -> str:
    """A redis-server that speaks only TLS (its plain port is off)."""
    server = private_redis(
        "--port", "0", "--tls-port", "{port}",
        "--tls-cert-file", str(certs.cert), "--tls-key-file", str(certs.key),
        "--tls-auth-clients", "no",
        scheme="rediss",
    )  # fmt: skip
    return f"{server.url}?ssl_ca_certs={certs.ca}"


async def test_rediss_to_the_regions_redis(
    tmp_path: Path,
    pg_databases: tuple[str, str],
    tls_redis: str,
    certs: Certs,
) -> None:
    stack = Stack(tmp_path, make_settings_doc(*pg_databases, node={"redis_url": tls_redis}))
    stack.start_origin()
    node = stack.start_node(region="tls-redis", redis_url=tls_redis)
    try:
        async with aiohttp.ClientSession() as http:
            m = marker("rediss")
            body = {"sql": "SELECT $1::text", "params": [m], "cacheStrategy": {"ttl": 60}}
            first = await post(http, node.url, body, API_KEY_A)
            assert first.cache_status == "miss" and "cacheError" not in first.info, first.body
            second = await post(http, node.url, body, API_KEY_A)
            assert second.cache_status == "ttl"
            async with http.get(node.url + "/readyz") as resp:
                assert (await resp.json())["redis"] is True
    finally:
        stack.stop_all()


async def test_sslmode_in_the_database_url_reaches_postgresql(
    tmp_path: Path, pg_databases: tuple[str, str]
) -> None:
    """The test server runs without TLS: require must fail, prefer and disable must work."""
    dsn_a, dsn_b = pg_databases
    doc = make_settings_doc(dsn_a + "?sslmode=require", dsn_b + "?sslmode=prefer")
    doc["tenants"].append(  # type: ignore[attr-defined]
        {"id": "plain", "api_keys_sha256": [], "database_url": dsn_b + "?sslmode=disable"}
    )
    stack = Stack(tmp_path, doc)
    origin = stack.start_origin()
    try:
        from cache_edge.common.signing import sign_headers
        from cache_edge.common.wire import packb, unpackb
        from tests.conftest import NODE_SECRET

        async with aiohttp.ClientSession() as http:
            data = packb({"sql": "SELECT 1", "params": [], "readOnly": True})
            results = {}
            for tenant in ("acme", "globex", "plain"):
                headers = {
                    "Content-Type": "application/msgpack",
                    **sign_headers(NODE_SECRET, "POST", "/v1/query", tenant, data),
                }
                async with http.post(origin.url + "/v1/query", data=data, headers=headers) as r:
                    results[tenant] = (r.status, unpackb(await r.read()))
        assert results["acme"][0] == 503, results["acme"]
        assert results["acme"][1]["error"]["code"] == "database_unavailable"
        assert results["globex"][0] == 200 and results["plain"][0] == 200
    finally:
        stack.stop_all()
