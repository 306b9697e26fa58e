"""What the read path and the purge mirror need from the shared tier and the origin link.

Structural types (``Protocol``): :class:`~cache_edge.node.tiers.redis.RedisTier` and
:class:`~cache_edge.node.origin_client.OriginClient` satisfy them in production, the
in-memory fakes of ``tests/unit/node/fakes.py`` in unit tests. Every tier method may
raise :class:`~cache_edge.node.tiers.redis.TierUnavailable`; the read path then falls
back to the origin.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from cache_edge.common.protocol import Statement

if TYPE_CHECKING:
    from cache_edge.node.origin_client import OriginResult

__all__ = ["FillLock", "Looked", "OriginLink", "PurgeFeed", "SharedTier", "Stored"]


@dataclass(frozen=True, slots=True)
class FillLock:
    """The key's fill lock, asked for with a lookup: taken in the same round trip.

    With ``max_age_ms`` it is taken only for a miss: no entry, nobody vouching for the
    purge state, or an entry void under it (below ``min_watermark`` too) or at least
    ``max_age_ms`` old at ``now_ms``. Without, it is taken whatever the entry (a waiter
    polling for the holder's entry, an swr refresh)."""

    token: str
    lease_ms: int
    max_age_ms: int | None = None
    now_ms: int = 0
    min_watermark: int = 0


TAKEN, BUSY = 1, -1


@dataclass(frozen=True, slots=True)
class Looked:
    """What a lookup saw: the entry, ``[sync lease, *tag versions]``, and the fill lock."""

    entry: bytes | None
    state: Sequence[bytes | None]
    lock: int = 0  # TAKEN: ours now; BUSY: another holds it; 0: not asked for, or not needed

    @property
    def locked(self) -> bool:
        return self.lock == TAKEN

    @property
    def busy(self) -> bool:
        return self.lock == BUSY


@dataclass(frozen=True, slots=True)
class Stored:
    """What a store did: whether the entry was kept, and the state it was checked against."""

    stored: bool
    state: Sequence[bytes | None]


class SharedTier(Protocol):
    """The region's shared tier as the read path uses it: entries, purge state, fill locks."""

    def entry_key(self, tenant: str, signature: str) -> str: ...

    def lock_key(self, tenant: str, signature: str) -> str: ...

    async def lookup(
        self, tenant: str, signature: str, tags: tuple[str, ...], lock: FillLock | None = None
    ) -> Looked:
        """The entry and ``[sync lease, *tag versions]`` in one round trip, and with
        ``lock`` the key's fill lock when the entry cannot be served (see FillLock)."""
        ...

    async def store(
        self,
        tenant: str,
        signature: str,
        tags: tuple[str, ...],
        value: bytes,
        ttl_seconds: int,
        watermark: int,
        token: str,
    ) -> Stored:
        """In one round trip: keep ``value`` only if an entry of ``watermark`` is current
        under ``[sync lease, *tag versions]`` as read in the same step, and release the
        fill lock held under ``token`` once nothing is left to fetch (stored, or nobody
        vouches); a purge that overtook the fetch leaves the lock held for the refetch."""
        ...

    async def state(
        self, tenant: str, signature: str, tags: tuple[str, ...]
    ) -> Sequence[bytes | None]:
        """``[sync lease, *tag versions]`` alone (tags an entry carries that the lookup
        did not know of)."""
        ...

    async def durable_floor(self, tenant: str) -> int | None:
        """The floor that holds without a lease; None if the region's state was lost."""
        ...

    async def extend(self, key: str, token: str, ttl_ms: int) -> bool:
        """Extend a fill lock held under ``token``; False once it is gone or another's."""
        ...

    async def unlock(self, key: str, token: str) -> None: ...


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
