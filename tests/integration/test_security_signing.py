"""Node-to-origin trust at running servers: replays, tampering, and node secret rotation."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cache_edge.common.signing import TENANT_HEADER, sign_headers
from cache_edge.common.wire import packb, unpackb
from tests.conftest import API_KEY_A, NODE_SECRET, make_settings_doc
from tests.integration.node_helpers import post
from tests.integration.security_helpers import eventually, rewrite_config
from tests.integration.stack import Server, Stack

pytestmark = pytest.mark.security

OLD = "rotation-old-secret-0123456789"
NEW = "rotation-new-secret-0123456789"
THIRD = "some-other-secret-0123456789ab"
QUERY = {"sql": "SELECT 1 AS one"}


def _doc(pg: tuple[str, str], redis_url: str, **secrets: Any) -> dict[str, Any]:
    doc = make_settings_doc(*pg, node={"redis_url": redis_url})
    del doc["node_secret"]
    doc.update(secrets)
    return doc


def _stack(tmp: Path, name: str, doc: dict[str, Any]) -> Stack:
    directory = tmp / name
    directory.mkdir()
    return Stack(directory, doc)


async def _signed_post(
    http: aiohttp.ClientSession, origin: Server, body: bytes, headers: dict[str, str]
) -> tuple[int, Any]:
    hdrs = {"Content-Type": "application/msgpack", "Accept": "application/msgpack", **headers}
    async with http.post(origin.url + "/v1/query", data=body, headers=hdrs) as resp:
        return resp.status, unpackb(await resp.read())


async def test_replayed_or_tampered_requests_are_refused(
    tmp_path: Path, pg_databases: tuple[str, str], http: aiohttp.ClientSession
) -> None:
    stack = _stack(tmp_path, "o", make_settings_doc(*pg_databases))
    origin = stack.start_origin()
    try:
        body = packb({"sql": "SELECT 41 + 1", "params": [], "readOnly": True})
        headers = sign_headers(NODE_SECRET, "POST", "/v1/query", "acme", body)
        status, answer = await _signed_post(http, origin, body, headers)
        assert status == 200 and answer["rows"] == [[42]]
        # The very same request again, within the window: a replay.
        status, answer = await _signed_post(http, origin, body, headers)
        assert status == 401 and answer["error"]["code"] == "unauthorized"
        assert "replay" in answer["error"]["message"]

        fresh = sign_headers(NODE_SECRET, "POST", "/v1/query", "acme", body)
        tampered = packb({"sql": "SELECT 666", "params": [], "readOnly": True})
        status, answer = await _signed_post(http, origin, tampered, fresh)
        assert status == 401 and answer["error"]["code"] == "unauthorized"
        # Moving a signed request to another tenant breaks the signature too.
        moved = {**sign_headers(NODE_SECRET, "POST", "/v1/query", "acme", body)}
        moved[TENANT_HEADER] = "globex"
        status, answer = await _signed_post(http, origin, body, moved)
        assert status == 401
        # So does replaying it on another path.
        again = sign_headers(NODE_SECRET, "POST", "/v1/transaction", "acme", body)
        status, answer = await _signed_post(http, origin, body, again)
        assert status == 401
        # A tampered request did not burn the genuine signature: it still works once.
        status, answer = await _signed_post(http, origin, body, fresh)
        assert status == 200
        old = sign_headers(NODE_SECRET, "POST", "/v1/query", "acme", body, now=1_000_000.0)
        status, answer = await _signed_post(http, origin, body, old)
        assert status == 401 and "window" in answer["error"]["message"]
    finally:
        stack.stop_all()


async def test_rotation_with_overlap(
    tmp_path: Path,
    pg_databases: tuple[str, str],
    http: aiohttp.ClientSession,
    flushed_redis: str,
) -> None:
    origin_stack = _stack(
        tmp_path, "origin", _doc(pg_databases, flushed_redis, node_secrets=[NEW, OLD])
    )
    origin = origin_stack.start_origin()
    stacks = [origin_stack]
    try:
        for i, (secret, status) in enumerate(((OLD, 200), (NEW, 200), (THIRD, 401))):
            node_stack = _stack(
                tmp_path, f"node{i}", _doc(pg_databases, flushed_redis, node_secret=secret)
            )
            stacks.append(node_stack)
            node = node_stack.start_node(region=f"r{i}", origin_url=origin.url)
            reply = await post(http, node.url, QUERY, API_KEY_A, fmt="json")
            assert reply.status == status, (secret, reply.body)
            if status == 401:
                assert reply.code == "unauthorized"
                assert THIRD not in str(reply.body) and NEW not in str(reply.body)
    finally:
        for st in reversed(stacks):
            st.stop_all()


async def test_rotation_without_restart_and_secrets_from_file_and_environment(
    tmp_path: Path,
    pg_databases: tuple[str, str],
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
    flushed_redis: str,
) -> None:
    """The whole zero-downtime procedure: origins accept both, nodes switch, origins drop the old.

    The origin reads its secrets from a file (one per line), the node from its
    config first and from ``$CACHE_EDGE_NODE_SECRET`` in a second process.
    """
    secret_file = tmp_path / "node-secrets"
    secret_file.write_text(OLD + "\n")
    origin_stack = _stack(
        tmp_path, "origin", _doc(pg_databases, flushed_redis, node_secret_file=str(secret_file))
    )
    origin = origin_stack.start_origin()
    node_doc = _doc(pg_databases, flushed_redis, node_secret=OLD)
    node_doc["log_level"] = "info"  # its config_reloaded line tells when it signs with NEW
    node_stack = _stack(tmp_path, "node", node_doc)
    node = node_stack.start_node(region="r1", origin_url=origin.url)
    monkeypatch.setenv("CACHE_EDGE_NODE_SECRET", NEW)
    env_stack = _stack(
        tmp_path, "env", _doc(pg_databases, flushed_redis)
    )  # no secret in the file at all
    env_node = env_stack.start_node(region="r2", origin_url=origin.url)
    monkeypatch.delenv("CACHE_EDGE_NODE_SECRET")
    stacks = [origin_stack, node_stack, env_stack]

    async def status_of(server: Server) -> int:
        return (await post(http, server.url, QUERY, API_KEY_A, fmt="json")).status

    try:
        assert await status_of(node) == 200
        assert await status_of(env_node) == 401  # signs with NEW, which the origin lacks
        # 1. Origins accept the new secret as well (the secret file changes; no restart).
        secret_file.write_text(f"{NEW}\n{OLD}\n")
        await eventually(lambda: _is(status_of(env_node), 200))
        assert await status_of(node) == 200
        # 2. Nodes sign with the new one (config reload).
        doc = copy.deepcopy(node_stack.doc)
        doc["node_secret"] = NEW
        rewrite_config(node_stack, doc)
        await eventually(lambda: _logged(node, "config_reloaded"))
        assert await status_of(node) == 200
        # 3. Origins drop the old one.
        secret_file.write_text(NEW + "\n")
        await eventually(lambda: _old_refused(http, origin))
        assert await status_of(node) == 200 and await status_of(env_node) == 200
        assert all(s.proc and s.proc.poll() is None for st in stacks for s in st.servers)
        for st in stacks:
            for server in st.servers:
                assert OLD not in server.logs() and NEW not in server.logs()
    finally:
        for st in reversed(stacks):
            st.stop_all()


async def _is(status: Any, want: int) -> bool:
    return bool(await status == want)


async def _logged(server: Server, event: str) -> bool:
    return event in server.logs()


async def _old_refused(http: aiohttp.ClientSession, origin: Server) -> bool:
    body = packb({"sql": "SELECT 1", "params": [], "readOnly": True})
    status, _ = await _signed_post(
        http, origin, body, sign_headers(OLD, "POST", "/v1/query", "acme", body)
    )
    return status == 401
