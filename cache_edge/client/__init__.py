"""The cache-edge client SDK: query PostgreSQL through a regional cache node, asyncpg-style.

    from cache_edge.client import AsyncClient, CacheStrategy

    async with AsyncClient("https://edge.example.com", api_key) as db:
        rows = await db.fetch("SELECT * FROM products WHERE id = $1", 7,
                              cache=CacheStrategy(ttl=60, swr=30, tags=("products",)))
        rows[0]["name"], rows.info.cache_status

        async for event in db.stream(["public.orders"], ops=["insert", "update"]):
            event.op, event.new, event.cursor        # a ChangeEvent; resumes by itself

``Client`` is the blocking twin with the same methods. The SDK needs only the base
dependencies (aiohttp, msgpack, orjson): never asyncpg, redis or the server stack,
so it loads fast in a serverless function. ``AsyncClient`` is imported on first use,
so code that only uses the blocking ``Client`` never pays for importing aiohttp.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cache_edge.client.results import Column, Info, InvalidationResult, Result, Row, Rows
from cache_edge.client.stream import Backoff, ChangeEvent
from cache_edge.client.sync_client import Client
from cache_edge.common.errors import CacheEdgeError, OriginUnavailable, QueryError
from cache_edge.common.protocol import Statement
from cache_edge.common.strategy import CacheStrategy

if TYPE_CHECKING:
    from cache_edge.client.async_client import AsyncClient

__all__ = [
    "AsyncClient",
    "Backoff",
    "CacheEdgeError",
    "CacheStrategy",
    "ChangeEvent",
    "Client",
    "Column",
    "Info",
    "InvalidationResult",
    "OriginUnavailable",
    "QueryError",
    "Result",
    "Row",
    "Rows",
    "Statement",
]


def __getattr__(name: str) -> Any:
    if name == "AsyncClient":
        from cache_edge.client.async_client import AsyncClient

        return AsyncClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
