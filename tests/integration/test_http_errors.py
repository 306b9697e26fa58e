"""Node and origin map framework HTTP errors the same way (one boundary,
cache_edge/server/http_errors.py): same status, same error body, counted in their metrics."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from cache_edge.common.wire import json_loads
from cache_edge.node.app import create_node_app
from cache_edge.server.config import parse_settings
from origin.core.app import create_origin_app
from tests.conftest import API_KEY_A, make_settings_doc

LIMIT = 2000  # max_body_bytes


@dataclass
class Server:
    name: str
    url: str
    headers: dict[str, str]  # what a request needs to get past authentication to the body


@pytest.fixture
async def servers(
    pg_databases: tuple[str, str], flushed_redis: str
) -> AsyncIterator[tuple[Server, Server, aiohttp.ClientSession]]:
    doc = make_settings_doc(*pg_databases, limits={"max_body_bytes": LIMIT})
    origin_listen = doc["origin"]["listen"]  # type: ignore[index]
    doc["node"].update(  # type: ignore[attr-defined]
        {"redis_url": flushed_redis, "origin_url": f"http://{origin_listen}"}
    )
    settings = parse_settings(doc)
    runners: list[web.AppRunner] = []
    for app, listen in (
        (create_origin_app(settings), settings.origin.listen),
        (create_node_app(settings), settings.node.listen),
    ):
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, listen.host, listen.port).start()
        runners.append(runner)
    origin = Server("origin", f"http://{settings.origin.listen}", {})
    node = Server(
        "node", f"http://{settings.node.listen}", {"Authorization": f"Bearer {API_KEY_A}"}
    )
    try:
        async with aiohttp.ClientSession() as http:
            yield origin, node, http
    finally:
        for runner in reversed(runners):
            await runner.cleanup()


def _rid(server: Server, method: str, path: str) -> str:
    return f"{server.name}.{method}.{path.replace('/', '')}"


async def _call(
    http: aiohttp.ClientSession, server: Server, method: str, path: str, data: bytes | None
) -> tuple[int, CIMultiDict[str], dict[str, Any]]:
    headers = {"X-Request-Id": _rid(server, method, path), **server.headers}
    if data is not None:
        headers["Content-Type"] = "application/json"
    async with http.request(method, server.url + path, headers=headers, data=data) as resp:
        assert resp.headers["Content-Type"].startswith("application/json")
        return resp.status, resp.headers.copy(), json_loads(await resp.read())


async def _errors_counted(http: aiohttp.ClientSession, server: Server) -> dict[str, float]:
    async with http.get(server.url + "/metrics") as resp:
        text = await resp.text()
    found = re.findall(r'^cache_edge_\w+_errors_total\{code="(\w+)"\} ([0-9.]+)$', text, re.M)
    return {code: float(n) for code, n in found}


async def test_node_and_origin_answer_framework_errors_alike_and_count_them(
    servers: tuple[Server, Server, aiohttp.ClientSession],
) -> None:
    origin, node, http = servers
    too_big = b"x" * (LIMIT + 1)
    cases = [
        ("GET", "/v1/nothing", None, 404, "not_found", "no such endpoint: /v1/nothing"),
        ("GET", "/v1/query", None, 405, "bad_request", "method GET not allowed; use POST"),
        ("DELETE", "/healthz", None, 405, "bad_request", "method DELETE not allowed; use GET, HEAD"),
        ("POST", "/v1/query", too_big, 413, "payload_too_large",
         f"request body of {LIMIT + 1} bytes exceeds the limit of {LIMIT}"),
    ]  # fmt: skip
    answers: dict[str, list[tuple[int, str]]] = {}
    for server in (origin, node):
        for method, path, data, status, code, message in cases:
            got, headers, body = await _call(http, server, method, path, data)
            assert got == status, (server.name, method, path, body)
            rid = headers["X-Request-Id"]
            assert rid == _rid(server, method, path)
            assert body == {"error": {"code": code, "message": message, "requestId": rid}}
            if status == 405:
                allowed = {m.strip() for m in headers["Allow"].split(",")}
                assert allowed == set(message.split("use ", 1)[1].split(", "))
            answers.setdefault(server.name, []).append((got, code))
    assert answers["node"] == answers["origin"]
    for server in (origin, node):
        counted = await _errors_counted(http, server)
        assert counted.get("not_found") == 1.0, (server.name, counted)
        assert counted.get("bad_request") == 2.0, (server.name, counted)
        assert counted.get("payload_too_large") == 1.0, (server.name, counted)
