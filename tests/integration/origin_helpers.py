"""An in-process origin on a free loopback port and a real HTTP client that signs like a node."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from cache_edge.common.signing import sign_headers
from cache_edge.common.wire import CONTENT_TYPES, WireFormat, decode_body, encode_body
from cache_edge.server.config import Settings, parse_settings
from origin.core.app import create_origin_app
from tests.conftest import NODE_SECRET, make_settings_doc


def origin_settings(pg: tuple[str, str], **origin: object) -> Settings:
    """Test settings with ``[origin]`` overrides (statement_timeout, pool sizes...)."""
    return parse_settings(make_settings_doc(*pg, origin=dict(origin)))


@dataclass
class Reply:
    status: int
    headers: Mapping[str, str]
    raw: bytes
    body: Any

    @property
    def error(self) -> dict[str, Any]:
        assert isinstance(self.body, dict) and "error" in self.body, self.body
        err: dict[str, Any] = self.body["error"]
        return err


class OriginClient:
    """Signs every request with the node secret, the way a regional node does."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, tenant: str = "acme"):
        self.session = session
        self.base_url = base_url
        self.tenant = tenant
        self.app: web.Application | None = None  # set by running_origin, for white-box tests

    async def post(
        self,
        path: str,
        body: Any = None,
        *,
        fmt: WireFormat = "msgpack",
        tenant: str | None = None,
        raw: bytes | None = None,
        secret: str | None = NODE_SECRET,
        now: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        data = raw if raw is not None else encode_body(body, fmt)
        hdrs = {"Content-Type": CONTENT_TYPES[fmt], "Accept": CONTENT_TYPES[fmt]}
        if secret is not None:
            hdrs.update(sign_headers(secret, "POST", path, tenant or self.tenant, data, now=now))
        hdrs.update(headers or {})
        async with self.session.post(self.base_url + path, data=data, headers=hdrs) as resp:
            payload = await resp.read()
            kind = resp.headers.get("Content-Type", "")
            decoded = decode_body(payload, "msgpack" if "msgpack" in kind else "json")
            return Reply(resp.status, resp.headers, payload, decoded)

    async def query(
        self, sql: str, *params: Any, read_only: bool = True, fmt: WireFormat = "msgpack"
    ) -> Reply:
        body = {"sql": sql, "params": list(params), "readOnly": read_only}
        return await self.post("/v1/query", body, fmt=fmt)

    async def rows(self, sql: str, *params: Any, read_only: bool = True) -> list[list[Any]]:
        reply = await self.query(sql, *params, read_only=read_only)
        assert reply.status == 200, reply.body
        rows: list[list[Any]] = reply.body["rows"]
        return rows

    async def transaction(
        self, statements: list[tuple[str, list[Any]]], isolation: str = "read_committed"
    ) -> Reply:
        body = {
            "statements": [{"sql": s, "params": p} for s, p in statements],
            "isolationLevel": isolation,
        }
        return await self.post("/v1/transaction", body)

    async def get(self, path: str) -> tuple[int, str]:
        async with self.session.get(self.base_url + path) as resp:
            return resp.status, await resp.text()


@asynccontextmanager
async def running_origin(settings: Settings) -> AsyncIterator[OriginClient]:
    """Serve ``create_origin_app(settings)`` on ``settings.origin.listen`` and yield a client."""
    app = create_origin_app(settings)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    listen = settings.origin.listen
    await web.TCPSite(runner, listen.host, listen.port).start()
    connector = aiohttp.TCPConnector(limit=200)
    timeout = aiohttp.ClientTimeout(total=60)
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            client = OriginClient(session, f"http://{listen.host}:{listen.port}")
            client.app = app
            yield client
    finally:
        await runner.cleanup()
