"""What the read path and the purge mirror need from the shared tier and the origin link.

Structural types (``Protocol``): :class:`~cache_edge.node.tiers.redis.RedisTier` and
:class:`~cache_edge.node.origin_client.OriginClient` satisfy them in production, the
in-memory fakes of ``tests/unit/node/fakes.py`` in unit tests. Every tier method may
raise :class:`~cache_edge.node.tiers.redis.TierUnavailable`; the read path then falls
back to the origin.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from cache_edge.common.protocol import Statement

if TYPE_CHECKING:
    from cache_edge.node.origin_client import OriginResult

__all__ = ["OriginLink", "PurgeFeed", "SharedTier"]


class SharedTier(Protocol):
    """The region's shared tier as the read path uses it: entries, purge state, fill locks."""

    def entry_key(self, tenant: str, signature: str) -> str: ...

    def lock_key(self, tenant: str, signature: str) -> str: ...

    async def lookup(
        self, tenant: str, signature: str, tags: tuple[str, ...]
    ) -> tuple[bytes | None, Sequence[bytes | None]]:
        """The entry and ``[sync lease, *tag versions]`` in one round trip."""
        ...

    async def state(
        self, tenant: str, signature: str, tags: tuple[str, ...]
    ) -> Sequence[bytes | None]:
        """``[sync lease, *tag versions]`` alone (checking a fresh fetch)."""
        ...

    async def durable_floor(self, tenant: str) -> int | None:
        """The floor that holds without a lease; None if the region's state was lost."""
        ...

    async def set(self, key: str, value: bytes, ttl_seconds: int) -> None: ...

    async def try_lock(self, key: str, token: str, ttl_ms: int) -> bool: ...

    async def lead(self, key: str, token: str, ttl_ms: int) -> bool:
        """Take or renew a lease held under ``token``."""
        ...

    async def unlock(self, key: str, token: str) -> None: ...

    async def exists(self, key: str) -> bool: ...


class PurgeFeed(Protocol):
    """The region's purge channel as one process's purge mirror uses it."""

    def purge_messages(
        self, region: str, subscribed: Callable[[], None] | None = None
    ) -> AsyncIterator[bytes]: ...

    async def ack_purges(self, region: str, member: str, seq: int, lease: float) -> None: ...


class OriginLink(Protocol):
    """The origin as the read path uses it: one query, answered with its raw answer."""

    async def query(
        self,
        tenant: str,
        stmt: Statement,
        *,
        read_only: bool,
        request_id: str,
        min_watermark: int = 0,
    ) -> OriginResult: ...
