"""No secret in logs, metrics or error messages, even at debug level and on every error path."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path

import aiohttp
import pytest

from cache_edge.common.signing import sign_headers
from cache_edge.common.wire import packb
from tests.conftest import API_KEY_A, API_KEY_B, NODE_SECRET, make_settings_doc, sha
from tests.integration.node_helpers import post
from tests.integration.security_helpers import rewrite_config
from tests.integration.stack import Stack

pytestmark = pytest.mark.security

DB_PASSWORD = "pg-pass-S3cr3t-4b1f"
REDIS_PASSWORD = "redis-pass-9e2d7c"
OLD_SECRET = "old-node-secret-still-accepted-5a"


async def test_secrets_never_reach_logs_metrics_or_errors(
    tmp_path: Path, pg_databases: tuple[str, str], flushed_redis: str
) -> None:
    dsn_a, dsn_b = (d.replace("postgres@", f"postgres:{DB_PASSWORD}@") for d in pg_databases)
    broken = dsn_b.rsplit("/", 1)[0] + "/no_such_database_here"
    doc = make_settings_doc(dsn_a, dsn_b, node={"redis_url": flushed_redis})
    del doc["node_secret"]
    doc["node_secrets"] = [NODE_SECRET, OLD_SECRET]
    doc["log_level"] = "debug"
    doc["tenants"].append(  # type: ignore[attr-defined]
        {"id": "broken", "api_keys_sha256": [sha("ce_broken_key_123")], "database_url": broken}
    )
    doc["tenants"][0]["rate_limit"] = {"rate": 1.0, "burst": 3}  # type: ignore[index]
    stack = Stack(tmp_path, doc)
    origin = stack.start_origin()
    node = stack.start_node(region="eu-west")
    # A second node that reaches Redis with a (wrong) password and signs with a wrong secret.
    bad_doc = copy.deepcopy(doc)
    bad_doc["node_secrets"] = ["a-wrong-node-secret-0123456789"]
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    bad_stack = Stack(bad_dir, bad_doc)
    bad_node = bad_stack.start_node(
        region="eu-west",
        redis_url=flushed_redis.replace("redis://", f"redis://:{REDIS_PASSWORD}@"),
        origin_url=origin.url,
    )
    texts: list[str] = []
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            calls = [
                (node.url, {"sql": "SELECT 1"}, API_KEY_A),
                (node.url, {"sql": "SELECT 1", "cacheStrategy": {"ttl": 5}}, API_KEY_B),
                (node.url, {"sql": "SELECT * FROM no_such_table"}, API_KEY_B),
                (node.url, {"sql": "SELECT 1"}, "ce_" + API_KEY_A[::-1]),
                (node.url, {"sql": "SELECT 1"}, None),
                (node.url, {"sql": "SELECT 1"}, "ce_broken_key_123"),
                (node.url, {"sql": 5}, API_KEY_B),
                (bad_node.url, {"sql": "SELECT 1", "cacheStrategy": {"ttl": 5}}, API_KEY_B),
            ] + [(node.url, {"sql": "SELECT 1"}, API_KEY_A)] * 5  # rate limited
            for url, body, key in calls:
                reply = await post(http, url, body, key, fmt="json")
                texts.append(str(reply.body) + str(dict(reply.headers)))
            codes = " ".join(texts)
            for code in ("unauthorized", "query_error", "database_unavailable", "rate_limited"):
                assert code in codes, code
            # Straight at the origin: a wrong secret, a replay, garbage.
            data = packb({"sql": "SELECT 1", "params": [], "readOnly": True})
            for headers in (
                sign_headers("not-the-secret-0123456789", "POST", "/v1/query", "acme", data),
                sign_headers(NODE_SECRET, "POST", "/v1/query", "acme", data),
            ):
                for _ in range(2):
                    async with http.post(origin.url + "/v1/query", data=data, headers={
                        "Content-Type": "application/msgpack", **headers
                    }) as resp:  # fmt: skip
                        texts.append(await resp.text(errors="replace"))
            # A config reload that fails, and one that works.
            stack.config.write_text(stack.config.read_text() + "\n[[tenants]\n")
            await asyncio.sleep(2.5)
            rewrite_config(stack, doc)
            await asyncio.sleep(2.5)
            for server in (node, origin, bad_node):
                async with http.get(server.url + "/metrics") as resp:
                    texts.append(await resp.text())
                async with http.get(server.url + "/readyz") as resp:
                    texts.append(await resp.text())
    finally:
        bad_stack.stop_all()
        stack.stop_all()
    logs = [s.logs() for s in [*stack.servers, *bad_stack.servers]]
    assert all(logs) and any('"level": "debug"' in text for text in logs)
    assert any("config_reload_failed" in text for text in logs)
    secrets = {
        "API key A": API_KEY_A,
        "API key B": API_KEY_B,
        "broken key": "ce_broken_key_123",
        "node secret": NODE_SECRET,
        "old node secret": OLD_SECRET,
        "wrong node secret": "a-wrong-node-secret-0123456789",
        "database password": DB_PASSWORD,
        "redis password": REDIS_PASSWORD,
    }
    for where, text in [*(("log", t) for t in logs), *(("answer", t) for t in texts)]:
        for name, secret in secrets.items():
            assert secret not in text, f"{name} found in a {where}"
