"""In-memory stand-ins for what the read path is given: a clock, the shared tier, the origin.

They implement the Protocols of :mod:`cache_edge.node.ports` with the semantics the read
path relies on, so its rules can be tested in milliseconds and without a network:

* :class:`FakeTier` keeps entries with their expiry, each tenant's purge state (a sync
  lease that lapses, a durable floor, tag versions) and fill locks; an operation named
  in ``failing`` raises :class:`TierUnavailable` and, like the real tier, opens a circuit
  breaker for ``retry_after`` seconds during which every checked operation fails too.
  Its lookup takes the fill lock by the rule of the real tier's script (a lookup that
  asks for it whatever the entry, a waiter's or a refresh's, is the operation ``claim``);
  ``store`` checks the purge state, keeps the entry and releases the lock in one step.
* :class:`ScriptedOrigin` answers ``value`` with the purge log's ``latest`` seq as its
  watermark (read when the statement starts, as the real origin does); a call can be
  held on a gate, or run a hook while it is in flight (a purge arriving then).
* :class:`FakeClock` is wall-clock seconds that move only when a test moves them.

Every tier call yields to the event loop once, as a round trip would, so concurrent
requests interleave as they do against Redis.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from cache_edge.common.errors import CacheEdgeError, OriginUnavailable
from cache_edge.common.protocol import Statement
from cache_edge.common.wire import packb
from cache_edge.node.entry import Entry
from cache_edge.node.origin_client import OriginResult
from cache_edge.node.ports import BUSY, TAKEN, FillLock, Looked, Stored
from cache_edge.node.tiers.redis import TierUnavailable

__all__ = ["FakeClock", "FakeTier", "ScriptedOrigin"]


class FakeClock:
    """Wall-clock seconds (like ``time.time``) that move only when told to."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class _Region:
    """One tenant's purge state in the region, as the applier leaves it in Redis."""

    floor: int = 0  # durable: entries with a lower watermark are void
    sync_until: float = 0.0  # the sync lease (the floor again) lives until then
    tags: dict[str, int] = field(default_factory=dict)


# Operations the real tier refuses while its breaker is open (RedisTier._check).
_CHECKED = frozenset({"lookup", "claim", "state", "durable_floor", "store"})


class FakeTier:
    """The region's shared tier (cache_edge.node.ports.SharedTier and PurgeFeed), in memory."""

    def __init__(self, clock: FakeClock, *, retry_after: float = 1.0) -> None:
        self._clock = clock
        self._retry_after = retry_after
        self._open_until = float("-inf")
        self._values: dict[str, tuple[bytes, float]] = {}  # key -> (value, expires at)
        self._locks: dict[str, tuple[str, float]] = {}  # key -> (token, expires at)
        self._regions: dict[str, _Region] = {}
        self._feed: asyncio.Queue[bytes] = asyncio.Queue()
        self.failing: set[str] = set()  # operation names, or "*" for every one
        self.calls: Counter[str] = Counter()
        self.acks: dict[str, int] = {}

    # ------------------------------------------------------------ test controls

    def fail(self, *operations: str) -> None:
        """Make these operations (default: all) fail from now on, like a Redis gone down."""
        self.failing.update(operations or ("*",))

    def recover(self) -> None:
        """Redis answers again, and the breaker is closed."""
        self.failing.clear()
        self._open_until = float("-inf")

    def sync(self, tenant: str, floor: int = 0, lease: float = float("inf")) -> None:
        """What a (re)sync leaves: a durable floor and a sync lease for ``lease`` seconds
        (by default one a healthy applier keeps renewing: it lapses only by :meth:`lapse`)."""
        region = self._regions.setdefault(tenant, _Region())
        region.floor = max(region.floor, floor)
        region.sync_until = self._clock() + lease

    def apply_purge(
        self, tenant: str, seq: int, tags: Iterable[str] = (), *, purge_all: bool = False
    ) -> None:
        """What the applier writes for one purge of the log (sequence ``seq``)."""
        region = self._regions.setdefault(tenant, _Region())
        for tag in tags:
            region.tags[tag] = seq
        if purge_all:
            region.floor = seq

    def lapse(self, tenant: str) -> None:
        """The sync lease ran out: the region is cut off from the origin."""
        self._regions[tenant].sync_until = 0.0

    def stored(self, tenant: str, signature: str) -> bool:
        """Is an entry of this key in the tier now (unexpired)?"""
        return self._live(self.entry_key(tenant, signature)) is not None

    # ------------------------------------------------------------ SharedTier

    def entry_key(self, tenant: str, signature: str) -> str:
        return f"{tenant}:e:{signature}"

    def lock_key(self, tenant: str, signature: str) -> str:
        return f"{tenant}:l:{signature}"

    async def lookup(
        self, tenant: str, signature: str, tags: tuple[str, ...], lock: FillLock | None = None
    ) -> Looked:
        regardless = lock is not None and lock.max_age_ms is None
        await self._round_trip("claim" if regardless else "lookup")
        raw = self._live(self.entry_key(tenant, signature))
        state = self._state(tenant, tags)
        if lock is None or not self._needs_fill(raw, state, lock):
            return Looked(raw, state)
        key = self.lock_key(tenant, signature)
        if self._lock_holder(key) not in (None, lock.token):
            return Looked(raw, state, BUSY)
        self._locks[key] = (lock.token, self._clock() + lock.lease_ms / 1000)
        return Looked(raw, state, TAKEN)

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
        await self._round_trip("store")
        state = self._state(tenant, tags)
        sync, *versions = state
        current = sync is not None and int(sync) <= watermark
        current = current and all(v is None or int(v) <= watermark for v in versions)
        if current:
            self._values[self.entry_key(tenant, signature)] = (
                value,
                self._clock() + max(1, ttl_seconds),
            )
        lock_key = self.lock_key(tenant, signature)
        if (current or sync is None) and self._lock_holder(lock_key) == token:
            del self._locks[lock_key]
        return Stored(current, state)

    async def state(self, tenant: str, signature: str, tags: tuple[str, ...]) -> list[bytes | None]:
        await self._round_trip("state")
        return self._state(tenant, tags)

    async def durable_floor(self, tenant: str) -> int | None:
        await self._round_trip("durable_floor")
        region = self._regions.get(tenant)
        return region.floor if region is not None else None

    async def lead(self, key: str, token: str, ttl_ms: int) -> bool:
        await self._round_trip("lead")
        if self._lock_holder(key) not in (None, token):
            return False
        self._locks[key] = (token, self._clock() + ttl_ms / 1000)
        return True

    async def extend(self, key: str, token: str, ttl_ms: int) -> bool:
        await self._round_trip("extend")
        if self._lock_holder(key) != token:
            return False
        self._locks[key] = (token, self._clock() + ttl_ms / 1000)
        return True

    async def unlock(self, key: str, token: str) -> None:
        await self._round_trip("unlock")
        if self._lock_holder(key) == token:
            del self._locks[key]

    def _needs_fill(self, raw: bytes | None, state: list[bytes | None], lock: FillLock) -> bool:
        """The real tier's rule for taking the lock with a lookup (tiers/redis.py, _LOOKUP)."""
        if lock.max_age_ms is None or raw is None or state[0] is None:
            return True
        entry = Entry.decode(raw)
        if entry is None:
            return False  # unreadable here: the read path decides, and claims if it must
        required = max(lock.min_watermark, *(int(v) for v in state if v is not None))
        too_old = lock.now_ms - entry.produced_at_ms >= lock.max_age_ms
        return entry.watermark < required or too_old

    # ------------------------------------------------------------ PurgeFeed

    def publish(self, message: dict[str, Any]) -> None:
        self._feed.put_nowait(packb(message))

    async def purge_messages(
        self, region: str, subscribed: Callable[[], None] | None = None
    ) -> AsyncIterator[bytes]:
        if subscribed is not None:
            subscribed()
        while True:
            yield await self._feed.get()

    async def ack_purges(self, region: str, member: str, seq: int, lease: float) -> None:
        await self._round_trip("ack_purges")
        self.acks[member] = seq

    # ------------------------------------------------------------ internals

    async def _round_trip(self, operation: str) -> None:
        self.calls[operation] += 1
        await asyncio.sleep(0)
        if operation in self.failing or "*" in self.failing:
            self._open_until = self._clock() + self._retry_after
            raise TierUnavailable(f"redis error: injected ({operation})")
        if operation in _CHECKED and self._clock() < self._open_until:
            raise TierUnavailable("redis unavailable (recent failure; retrying shortly)")

    def _live(self, key: str) -> bytes | None:
        got = self._values.get(key)
        if got is None or self._clock() >= got[1]:
            return None
        return got[0]

    def _lock_holder(self, key: str) -> str | None:
        got = self._locks.get(key)
        if got is None or self._clock() >= got[1]:
            return None
        return got[0]

    def _state(self, tenant: str, tags: tuple[str, ...]) -> list[bytes | None]:
        """``[sync lease, *tag versions]`` as Redis's MGET returns them."""
        region = self._regions.get(tenant)
        if region is None:
            return [None] * (1 + len(tags))
        sync = str(region.floor).encode() if self._clock() < region.sync_until else None
        versions = [str(region.tags[t]).encode() if t in region.tags else None for t in tags]
        return [sync, *versions]


@dataclass
class ScriptedOrigin:
    """The origin link (cache_edge.node.ports.OriginLink), scripted by the test."""

    clock: Callable[[], float]  # stamps producedAt: a FakeClock, or time.time with real Redis
    value: int = 1  # what the table holds: each answer is [[value]]
    latest: int = 0  # the purge log's last seq: each answer's watermark
    calls: int = 0
    min_watermarks: list[int] = field(default_factory=list)  # asked for, call by call
    gates: list[asyncio.Event] = field(default_factory=list)  # each call waits on the next
    # Runs while a call is in flight, after its rows and watermark were read.
    during_query: Callable[[], Awaitable[None] | None] | None = None
    error: CacheEdgeError | None = None  # raised by every call while set
    tags: tuple[str, ...] = ()  # implicit tags the answers carry (automatic invalidation)

    def purge(self) -> int:
        """Record a purge in the log; returns its seq (apply it to the tier yourself)."""
        self.latest += 1
        return self.latest

    def go_down(self) -> None:
        self.error = OriginUnavailable("scripted origin is down")

    async def query(
        self,
        tenant: str,
        stmt: Statement,
        *,
        read_only: bool,
        request_id: str,
        min_watermark: int = 0,
    ) -> OriginResult:
        self.calls += 1
        self.min_watermarks.append(min_watermark)
        # What the database holds when the statement starts is what it returns.
        value, watermark = self.value, max(self.latest, min_watermark)
        produced_at = int(self.clock() * 1000)
        if self.gates:
            await self.gates.pop(0).wait()
        if self.during_query is not None:
            pending = self.during_query()
            if pending is not None:
                await pending
        if self.error is not None:
            raise self.error
        answer: dict[str, Any] = {
            "columns": [{"name": "v", "type": "int4"}],
            "rows": [[value]],
            "rowCount": 1,
            "producedAt": produced_at,
            "watermark": watermark,
        }
        if self.tags:
            answer["tags"] = list(self.tags)
        return OriginResult(packb(answer), request_id)
