"""Cache keys: xxh3-128 over a canonical, typed encoding of everything that shapes an answer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import xxhash

from cache_edge.common.wire import packb

__all__ = ["cache_key", "query_fingerprint"]

_KEY_VERSION = 1  # bump to orphan every existing entry after a format change
_REMEMBERED = 1024  # signatures of recent requests whose parameters are one shared object
# (tenant, sql, ttl, swr, tags) -> (the params object, its signature). A repeated request
# parsed from the same body (protocol.parse_query_body) passes the very same params list,
# so the signature is known without encoding and hashing again.
_recent: dict[tuple[Any, ...], tuple[Sequence[Any], str]] = {}


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
    memo_key = (tenant, sql, ttl, swr, tuple(tags))
    try:
        known = _recent.get(memo_key)
        hashable = True
    except TypeError:  # an unhashable value
        known, hashable = None, False
    # Only the same object, never an equal one: the memo holds it, so it stays alive and
    # nobody mutates a parsed request's parameters.
    if known is not None and known[0] is params:
        return known[1]
    canonical = packb((_KEY_VERSION, tenant, sql, list(params), ttl, swr, sorted(set(tags))))
    signature = xxhash.xxh3_128_hexdigest(canonical)
    if hashable:
        if len(_recent) >= _REMEMBERED:
            del _recent[next(iter(_recent))]
        _recent[memo_key] = (params, signature)
    return signature
