"""Cache keys: xxh3-128 over a canonical, typed encoding of everything that shapes an answer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import xxhash

from cache_edge.wire import packb

__all__ = ["cache_key", "query_fingerprint"]

_KEY_VERSION = 1  # bump to orphan every existing entry after a format change


def query_fingerprint(tenant: str, sql: str, params: Sequence[Any]) -> bytes:
    """Canonical bytes of (tenant, sql, typed params).

    msgpack keeps types apart: 1 (int), 1.0 (float), "1" (str), True (bool) and
    Decimal("1") (extension) all encode differently, so they never share a key.
    """
    return packb((_KEY_VERSION, tenant, sql, list(params)))


def cache_key(
    tenant: str, sql: str, params: Sequence[Any], ttl: int, swr: int, tags: Sequence[str]
) -> str:
    """The entry's signature: hex xxh3-128 of query, params and strategy (tags sorted)."""
    canonical = packb((_KEY_VERSION, tenant, sql, list(params), ttl, swr, sorted(set(tags))))
    return xxhash.xxh3_128_hexdigest(canonical)
