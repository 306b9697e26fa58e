"""This process's mirror of the region's purge state, fed by Redis pub/sub.

The region's applier publishes every purge it applies, and a heartbeat every
``lease / 4`` seconds, on the region's channel. Each message says which purge
sequence it continues from (``prev``) and reaches (``to``). The mirror:

* applies a message only if it continues exactly where the mirror stands; on a gap
  (a lost message, a resync, a reconnect) it flushes the tenant's hot entries
  rather than guess;
* vouches for a tenant only until ``lease`` seconds after the last message, so a
  process cut off from the channel stops serving hot entries on its own;
* acknowledges each message in a Redis hash, so the applier can tell the origin
  "applied" as soon as every process has applied it (or has lost its lease).

Because pub/sub delivers a connection's messages in order, a process cannot renew
its lease without first seeing every purge published before the renewal; that is
what makes "applied, or no longer serving from memory" true ``lease`` seconds after
a publish at the latest.

The mirror only knows the state; whether an entry may be served under it is the
one rule of :mod:`cache_edge.node.freshness`, the same as for the shared tier.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cache_edge.common.wire import unpackb
from cache_edge.node.freshness import PurgeState
from cache_edge.node.ports import PurgeFeed
from cache_edge.node.tiers.memory import MemoryTier
from cache_edge.node.tiers.redis import TierUnavailable
from cache_edge.server.logs import get_logger
from cache_edge.server.tasks import stop_tasks

__all__ = ["PurgeMirror"]

log = get_logger(__name__)

_MAX_TAGS = 100_000  # per tenant; past it the tenant is flushed and the map restarts


@dataclass(slots=True)
class _TenantState:
    applied: int
    floor: int
    lease_until: float
    tags: dict[str, int] = field(default_factory=dict)


class PurgeMirror:
    """This process's view of its region's purge state, by tenant, with a lease."""

    def __init__(
        self,
        region: str,
        proc_id: str,
        tier: PurgeFeed,
        memory: MemoryTier,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._region = region
        self._proc = proc_id
        self._tier = tier
        self._memory = memory
        self._clock = clock
        self._tenants: dict[str, _TenantState] = {}
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self.gaps = 0  # flushes because continuity could not be proven

    # ------------------------------------------------------------ the check

    def live(self, tenant: str) -> bool:
        state = self._tenants.get(tenant)
        return state is not None and self._clock() < state.lease_until

    def state(self, tenant: str, tags: tuple[str, ...]) -> PurgeState:
        """The purge state an entry with ``tags`` is judged by; unvouched once the lease lapsed."""
        state = self._tenants.get(tenant)
        if state is None:
            return PurgeState(None)
        floor = state.floor if self._clock() < state.lease_until else None
        return PurgeState(floor, tuple(state.tags.get(t, 0) for t in tags))

    def applied(self, tenant: str) -> int | None:
        """The newest purge of ``tenant`` this process applied, or None when it serves
        nothing of the tenant from memory (never synced, or its lease lapsed)."""
        state = self._tenants.get(tenant)
        if state is None or self._clock() >= state.lease_until:
            return None
        return state.applied

    def is_current(self, tenant: str, watermark: int, tags: tuple[str, ...]) -> bool:
        """Shorthand: may an entry of this watermark and these tags be served from memory?"""
        return self.state(tenant, tags).current(watermark)

    def required(self, tenant: str, tags: tuple[str, ...]) -> int:
        """Shorthand: the watermark a refetch of an entry with these tags must reach."""
        return self.state(tenant, tags).required()

    # ------------------------------------------------------------ messages

    def apply(self, msg: dict[str, Any]) -> str | None:
        """Apply one published message; return the tenant it concerned (for the ack)."""
        tenant, prev, to = str(msg["t"]), int(msg["prev"]), int(msg["to"])
        lease = float(msg["lease"])
        state = self._tenants.get(tenant)
        if state is None or state.applied != prev:
            flushed = self._memory.flush_tenant(tenant)
            if state is not None:
                self.gaps += 1
                log.info(
                    "purge_mirror_gap", tenant=tenant, had=state.applied, prev=prev, flushed=flushed
                )
            state = _TenantState(to, int(msg["floor"]), 0.0)
            self._tenants[tenant] = state
        state.applied = to
        state.floor = max(state.floor, int(msg["floor"]))
        for tag, seq in msg.get("tags", {}).items():
            state.tags[tag] = max(state.tags.get(tag, 0), int(seq))
        if len(state.tags) > _MAX_TAGS:
            self._memory.flush_tenant(tenant)
            state.tags.clear()
        state.lease_until = self._clock() + lease
        return tenant

    def forget_all(self) -> None:
        self._tenants.clear()
        self._memory.flush()

    # ------------------------------------------------------------ the feed

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen())

    async def subscribed(self, timeout: float) -> bool:
        """Wait until the feed is subscribed (at most ``timeout`` s); whether it is."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), timeout)
        return self._subscribed.is_set()

    async def stop(self) -> None:
        await stop_tasks([self._task])

    async def _listen(self) -> None:
        while True:
            try:
                async for raw in self._tier.purge_messages(self._region, self._subscribed.set):
                    try:
                        msg = unpackb(raw)
                        tenant = self.apply(msg)
                    except Exception as exc:  # a malformed message must not kill the feed
                        log.warning("purge_message_rejected", error=str(exc))
                        continue
                    if tenant is not None:
                        await self._ack(tenant, int(msg["to"]), float(msg["lease"]))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("purge_feed_lost", error=f"{type(exc).__name__}: {exc}")
            # Messages may have been missed while disconnected: vouch for nothing.
            self.forget_all()
            await asyncio.sleep(0.5)

    async def _ack(self, tenant: str, seq: int, lease: float) -> None:
        with contextlib.suppress(TierUnavailable):
            await self._tier.ack_purges(self._region, f"{self._proc}:{tenant}", seq, lease)
