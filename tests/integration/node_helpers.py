"""Talking to running nodes the way a user would: HTTP, JSON or msgpack, real sockets."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from multidict import CIMultiDict

from cache_edge.common.wire import json_dumps, json_loads, packb, unpackb
from tests.conftest import make_settings_doc
from tests.integration.stack import Stack


@dataclass
class Reply:
    status: int
    headers: CIMultiDict[str]
    body: Any

    @property
    def info(self) -> dict[str, Any]:
        return self.body["info"]  # type: ignore[no-any-return]

    @property
    def cache_status(self) -> str:
        return self.info["cacheStatus"]  # type: ignore[no-any-return]

    @property
    def code(self) -> str | None:
        err = self.body.get("error") if isinstance(self.body, dict) else None
        return err["code"] if err else None


async def post(
    session: aiohttp.ClientSession,
    url: str,
    body: Any,
    api_key: str | None,
    *,
    fmt: str = "msgpack",
    path: str = "/v1/query",
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    ctype = "application/msgpack" if fmt == "msgpack" else "application/json"
    hdrs = {"Content-Type": ctype, "Accept": ctype}
    if api_key is not None:
        hdrs["Authorization"] = f"Bearer {api_key}"
    hdrs.update(headers or {})
    data = raw if raw is not None else (packb(body) if fmt == "msgpack" else json_dumps(body))
    async with session.post(url + path, data=data, headers=hdrs) as resp:
        content = await resp.read()
        rtype = resp.headers.get("Content-Type", "")
        decoded = unpackb(content) if "msgpack" in rtype else json_loads(content)
        return Reply(resp.status, CIMultiDict(resp.headers), decoded)


def marker(prefix: str = "m") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def node_doc(dsns: tuple[str, str], redis_url: str, **sections: Any) -> dict[str, Any]:
    """The tests' settings (two tenants) with the nodes' Redis at ``redis_url``; ``sections``
    update the settings' tables (``node={...}``, ``origin={...}``, ``limits={...}``)."""
    node = {"redis_url": redis_url, **sections.pop("node", {})}
    return make_settings_doc(*dsns, node=node, **sections)


def new_stack(tmp_path: Path, dsns: tuple[str, str], redis_url: str, **sections: Any) -> Stack:
    """A stack with :func:`node_doc`'s settings, nothing started yet."""
    return Stack(tmp_path, node_doc(dsns, redis_url, **sections))
