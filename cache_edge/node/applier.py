"""Applying the origin's purge log in this region.

State per tenant in the region's Redis (keys in :class:`RedisTier`):

* ``tag:<t>``  seq of the last purge of tag ``t``        (no expiry, never evicted)
* ``floor``    entries with a watermark below it are void (bumped by "purge all" and
               whenever the region cannot prove it saw every purge)
* ``applied``  seq of the last purge applied here        (no expiry)
* ``sync``     the floor again, as a lease that lives ``sync_grace`` seconds; it is
               renewed after every successful poll of the origin

An entry carries the origin's watermark ``W``: the last purge committed before its
rows were produced. It may be served iff ``sync`` exists, ``W >= floor`` and every
tag version ``<= W`` (the rule itself is :mod:`cache_edge.node.freshness`, for the
shared tier and the hot tier alike). A region cut off from the origin loses its
lease after ``sync_grace`` seconds and from then on serves nothing it cannot vouch
for; a region whose Redis lost its state (restart, flush) finds ``applied`` missing
and bumps the floor to the origin's latest seq on its next poll.

One process per region applies (a Redis leadership lease), for every tenant.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Sequence

from cache_edge.common.errors import CacheEdgeError
from cache_edge.common.wire import packb
from cache_edge.node.origin_client import OriginClient
from cache_edge.node.tiers.redis import RedisTier, StateLost, TierUnavailable
from cache_edge.server.logs import get_logger
from cache_edge.server.tasks import stop_tasks

__all__ = ["Applier"]

log = get_logger(__name__)


class Applier:
    """Long-polls the origin's purge log for every tenant and applies it to Redis."""

    def __init__(
        self,
        region: str,
        tenants: Sequence[str],
        tier: RedisTier,
        origin: OriginClient,
        *,
        sync_grace: float,
        memory_lease: float = 1.0,
    ) -> None:
        self._region = region
        # How long a process's hot tier may trust the last message it got (see purge_mirror).
        self._memory_lease = memory_lease
        self._tenants = list(tenants)
        self._tier = tier
        self._origin = origin
        self._grace = sync_grace
        # Long-poll well inside the lease so a healthy region never lets it lapse, and
        # hold leadership for half of it so a crashed leader's successor renews it in time.
        self._poll_wait = max(0.25, sync_grace / 4)
        self._lease_ms = int(max(1.0, sync_grace / 2) * 1000)
        self._token = secrets.token_hex(8)
        self._leader_key = tier.keys.leader(region)
        self._tasks: list[asyncio.Task[None]] = []
        self._leader = asyncio.Event()
        self.applied: dict[str, int] = {}  # for tests and metrics
        self.resyncs = 0  # times a tenant's state had to start over (lost, trimmed, epoch)
        self._floor: dict[str, int] = {}
        # Until when each tenant's region state is proven (a successful poll + sync_grace):
        # heartbeats never renew hot-tier leases past it.
        self._synced_until: dict[str, float] = {}
        # Serialises publishes: a heartbeat must never overtake the purge it follows.
        self._publishing = asyncio.Lock()

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._elect()))
        self._tasks.append(asyncio.create_task(self._heartbeat()))
        for tenant in self._tenants:
            self._tasks.append(asyncio.create_task(self._run(tenant)))

    async def stop(self) -> None:
        await stop_tasks(self._tasks)
        if self._leader.is_set():
            # Hand over at once instead of letting a successor wait out the lease.
            with contextlib.suppress(TierUnavailable):
                await self._tier.unlock(self._leader_key, self._token)

    async def _elect(self) -> None:
        while True:
            try:
                if await self._tier.lead(self._leader_key, self._token, self._lease_ms):
                    self._leader.set()
                else:
                    self._leader.clear()
            except TierUnavailable:
                self._leader.clear()
            await asyncio.sleep(self._lease_ms / 3000)

    async def _run(self, tenant: str) -> None:
        backoff = 0.1
        fresh = True  # first poll after (re)gaining leadership: do not wait, renew now
        while True:
            if not self._leader.is_set():
                fresh = True
                await self._leader.wait()
            try:
                await self._step(tenant, 0.0 if fresh else self._poll_wait)
                fresh = False
                backoff = 0.1
            except (CacheEdgeError, TierUnavailable) as exc:
                log.warning("invalidation_poll_failed", tenant=tenant, error=str(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def _step(self, tenant: str, wait: float) -> None:
        seen = await self._tier.progress(tenant)
        applied = seen.applied if seen.intact else None
        answer = await self._origin.poll_invalidations(
            tenant,
            self._region,
            -1 if applied is None else applied,
            wait,
            self._grace,
            epoch=seen.epoch if applied is not None else None,
        )
        latest, oldest = int(answer["latest"]), int(answer["oldest"])
        epoch = str(answer.get("epoch") or "")
        items = answer["items"]
        if applied is not None and seen.epoch != epoch:
            # Our state belongs to another purge log (the database was restored or
            # replaced): its seqs mean nothing here, and neither do its entries.
            log.warning("invalidation_epoch_changed", tenant=tenant, was=seen.epoch, now=epoch)
            await self._resync(tenant, latest, epoch, "epoch_changed", wipe=True)
            return
        if applied is None:
            # Never synced, or the state was lost (restart, flush, eviction, failover):
            # we cannot prove we saw every purge, so void every entry older than now.
            await self._resync(tenant, latest, epoch, "state_missing")
            return
        if applied > latest:
            # The log is behind what we applied: restored in place with the same epoch
            # (a point-in-time restore). Our seqs, tag versions included, no longer name
            # its purges: start over as for a new epoch.
            log.warning("invalidation_log_behind", tenant=tenant, applied=applied, latest=latest)
            await self._resync(tenant, latest, epoch, "ahead_of_log", wipe=True)
            return
        if oldest > applied + 1 and not _covers(items, applied):
            await self._resync(tenant, latest, epoch, "log_trimmed")
            return
        tags: dict[str, int] = {}
        floor = seen.floor
        last = applied
        for item in items:
            seq = int(item["seq"])
            if item["all"]:
                floor = seq
            for tag in item["tags"]:
                tags[tag] = seq
            last = seq
        try:
            await self._tier.apply(tenant, seen, tags, last, floor, self._grace)
        except StateLost as exc:
            if exc.lost:
                await self._resync(tenant, latest, epoch, "state_lost")
            return  # another applier moved on: read progress again
        await self._publish(tenant, applied, last, floor, tags)
        if items:
            log.info("invalidations_applied", tenant=tenant, upto=last, count=len(items))

    async def _resync(
        self, tenant: str, latest: int, epoch: str, reason: str, *, wipe: bool = False
    ) -> None:
        """Start the tenant's region state over at ``latest``; ``wipe``: first delete every
        key of the tenant (entries and tag versions of another log's seq space)."""
        wiped = await self._tier.wipe(tenant) if wipe else 0
        log.warning("invalidation_resync", tenant=tenant, reason=reason, floor=latest, wiped=wiped)
        self.resyncs += 1
        await self._tier.resync(tenant, latest, self._grace, epoch, secrets.token_hex(8))
        await self._publish(tenant, -1, latest, latest, {})

    async def _publish(
        self, tenant: str, prev: int, to: int, floor: int, tags: dict[str, int]
    ) -> None:
        """Tell every process of the region, then wait until each has applied it or lost
        its lease, so that acknowledging to the origin (the next poll) is true for the
        hot tiers too."""
        message = self._message(tenant, prev, to, floor, tags, self._memory_lease)
        async with self._publishing:
            self.applied[tenant] = to
            self._floor[tenant] = floor
            self._synced_until[tenant] = time.monotonic() + self._grace
            await self._tier.publish_purges(self._region, message)
        if prev == to:
            return  # nothing new to wait for
        deadline = time.monotonic() + self._memory_lease
        while time.monotonic() < deadline:
            acks = await self._tier.purge_acks(self._region, tenant)
            if all(seq >= to for seq in acks):
                return
            await asyncio.sleep(0.002)
        log.warning("purge_acks_missing", tenant=tenant, seq=to)

    def _message(
        self, tenant: str, prev: int, to: int, floor: int, tags: dict[str, int], lease: float
    ) -> bytes:
        return packb(
            {"t": tenant, "prev": prev, "to": to, "floor": floor, "tags": tags, "lease": lease}
        )

    async def _heartbeat(self) -> None:
        """Renew every process's hot-tier lease; carries no purge, only continuity.

        Never past what the region can prove: a region cut off from the origin lets
        its hot tiers lapse exactly when its Redis sync lease lapses.
        """
        while True:
            await asyncio.sleep(self._memory_lease / 4)
            if not self._leader.is_set():
                continue
            for tenant in list(self.applied):
                # Under the lock, so a heartbeat never overtakes the purge it follows.
                async with self._publishing:
                    applied = self.applied[tenant]
                    proven = self._synced_until.get(tenant, 0.0) - time.monotonic()
                    if proven <= 0:
                        continue
                    lease = min(self._memory_lease, proven)
                    message = self._message(
                        tenant, applied, applied, self._floor.get(tenant, 0), {}, lease
                    )
                    with contextlib.suppress(TierUnavailable):
                        await self._tier.publish_purges(self._region, message)


def _covers(items: Sequence[dict[str, object]], applied: int) -> bool:
    """Do the returned items continue exactly where we stopped (no gap)?"""
    return bool(items) and int(items[0]["seq"]) == applied + 1  # type: ignore[call-overload]
