"""The region's shared tier: entries and fill locks in Redis, behind a circuit breaker.

Redis is an accelerator, never a dependency of correctness or availability: any
Redis failure surfaces as TierUnavailable, and after one failure the tier stays
open-circuited for ``retry_after`` seconds so requests stop paying its timeout. On a
Redis Cluster the breaker opens per node (tiers/cluster.py): keys on healthy masters
keep hitting while one master is down.

Failures are told apart from bugs in one place, :class:`RedisGuard`, which every
command of the tier (and of the rate limiter) runs under: only what Redis failing looks
like (:data:`REDIS_ERRORS`) becomes TierUnavailable; anything else (a TypeError of
ours) goes on as it is, to be answered ``internal`` and logged with its traceback,
and never opens the breaker.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from cache_edge.common.errors import RedisUnavailable
from cache_edge.node.ports import FillLock, Looked, Stored
from cache_edge.node.tiers.cluster import NODE_ERRORS, NodeUnavailable, ScopedCluster
from cache_edge.node.tiers.layout import CLUSTER_SHARDS, Layout

__all__ = [
    "REDIS_ERRORS",
    "Progress",
    "RedisGuard",
    "RedisTier",
    "StateLost",
    "TierUnavailable",
    "redis_client",
]

# Take or keep a leadership lease: SET NX, or extend it if we already hold it.
_LEAD = """
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('get', KEYS[1]) == ARGV[1] then
  redis.call('pexpire', KEYS[1], ARGV[2]) return 1
end
return 0
"""
# Delete the lock only if we still own it (the token), so a slow holder whose
# lock expired cannot release a lock that another process has taken since.
_UNLOCK = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
# Extend a fill lock we still own; never take it again once it is gone.
_EXTEND = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""

# A read path's whole use of Redis for one key is two scripts (issue 18): _LOOKUP reads
# the entry with its purge state and takes the fill lock when the entry cannot be
# served; _STORE checks the purge state again, stores the fetched entry only if it
# passes, and releases the lock. All their keys are in the entry's hash slot
# (tiers/layout.py), so each is one command on one node, on a Redis Cluster too.
#
# _LOOKUP. KEYS: entry, lock, sync lease, tag versions...; ARGV: token, lease ms,
# max age ms ('' = take the lock whatever the entry), now ms (the node's clock), min
# watermark. Returns {lock, {entry, sync lease, tag versions...}}; lock is 1 taken (or
# already ours: a retried command), -1 held by someone else, 0 not tried.
#
# Whether the entry can be served is the read path's to decide (cache_edge/node/
# freshness.py); the script only avoids a second round trip for a miss. It reads the
# entry's producedAt and watermark from the first 17 bytes of its header (version 1 or
# 2, then two big-endian int64s: cache_edge/node/entry.py) and takes the lock when
# nobody vouches for the state, or the entry is absent, void (its watermark below the
# floor, a tag version or the request's minimum) or older than max age: a miss by the
# same rule. An entry it cannot read is left to the read path (which then claims the
# lock itself), so a wrong guess costs a round trip, never a wrong answer.
_LOOKUP = """
local got = redis.call('mget', KEYS[1], unpack(KEYS, 3))
local lock = 0
local take = ARGV[3] == '' or not got[1] or not got[2]
if not take and #got[1] >= 17 then
  local version, produced, watermark = struct.unpack('>Bi8i8', got[1])
  if version == 1 or version == 2 then
    local required = tonumber(ARGV[5])
    for i = 2, #got do
      if got[i] then required = math.max(required, tonumber(got[i])) end
    end
    take = watermark < required or tonumber(ARGV[4]) - produced >= tonumber(ARGV[3])
  end
end
if take then
  if redis.call('set', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2])
      or redis.call('get', KEYS[2]) == ARGV[1] then
    lock = 1
  else
    lock = -1
  end
end
return {lock, got}
"""
# _STORE. KEYS: entry, lock, sync lease, tag versions...; ARGV: token, entry, ttl s,
# watermark. Stores the entry only if it is current under the state read here, in the
# same step (freshness.PurgeState.current: a sync lease, the floor and every tag version
# at most its watermark); releases the lock (if the token still owns it) once there is
# nothing left to fetch: stored, or nobody vouches. A purge that overtook the fetch keeps
# the lock for the refetch. Returns {stored, sync lease, tag versions...}.
_STORE = """
local watermark = tonumber(ARGV[4])
local sync = redis.call('get', KEYS[3])
local out = {0, sync}
local current = sync and tonumber(sync) <= watermark
for i = 4, #KEYS do
  local v = redis.call('get', KEYS[i])
  out[i - 1] = v
  if v and tonumber(v) > watermark then current = false end
end
if current then
  redis.call('set', KEYS[1], ARGV[2], 'EX', ARGV[3])
  out[1] = 1
end
if (current or not sync) and redis.call('get', KEYS[2]) == ARGV[1] then
  redis.call('del', KEYS[2])
end
return out
"""

# Purge state is written only under the generation the applier read: a flush, an
# eviction or a failover to an empty replica removes the marker, so the write is
# refused and the applier resyncs instead of quietly recreating a state that has
# forgotten purges (docs/invalidation.md, "losing the region's state").
# KEYS: shard generation, sync lease, tag keys...; ARGV: generation, floor, lease ms, seqs...
_APPLY_SHARD = """
if redis.call('get', KEYS[1]) ~= ARGV[1] then return 0 end
for i = 3, #KEYS do redis.call('set', KEYS[i], ARGV[i + 1]) end
redis.call('set', KEYS[2], ARGV[2], 'PX', ARGV[3])
return 1
"""
# KEYS: generation, applied, floor; ARGV: generation, applied as read, new applied, floor.
# 0: the state was lost; 2: someone else moved ``applied`` (a deposed leader): re-read.
_ADVANCE = """
if redis.call('get', KEYS[1]) ~= ARGV[1] then return 0 end
if redis.call('get', KEYS[2]) ~= ARGV[2] then return 2 end
redis.call('set', KEYS[2], ARGV[3])
redis.call('set', KEYS[3], ARGV[4])
return 1
"""


# What Redis failing looks like from here; anything else is a bug and surfaces as one.
#  - RedisError: redis-py's own (connection lost or refused, its timeouts, error replies,
#    a cluster node's NodeUnavailable, and the cluster client's glitches, which
#    tiers/cluster.py maps where they arise: AttributeError and RuntimeError while it
#    (re)connects become ConnectionGlitch);
#  - RedisClusterException: the cluster client's routing failures, which do not derive
#    from RedisError (no node reachable at setup; SlotNotCoveredError, which is also what
#    tiers/cluster.py makes of the KeyError of a slot missing from its map);
#  - OSError: the socket itself (ConnectionError and its kin are OSErrors);
#  - TimeoutError: asyncio's (the same class since Python 3.11), a bound of ours ran out.
REDIS_ERRORS: tuple[type[Exception], ...] = (
    RedisError,
    RedisClusterException,
    OSError,
    TimeoutError,
)


def _as_bytes(values: list[bytes | str | None]) -> list[bytes | None]:
    return [v.encode() if isinstance(v, str) else v for v in values]


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def redis_client(
    url: str, *, timeout: float, max_connections: int, cluster: bool, retry_after: float = 1.0
) -> Any:
    """A region's Redis client: standalone with a bounded, blocking pool, or Redis Cluster
    with a circuit breaker per node (tiers/cluster.py).

    A command that fails with a connection error is retried once on a fresh connection:
    after a Redis restart every pooled connection is dead, and without the retry each one
    failed a request (and opened the breaker) when it was next used. A timeout is not
    retried: that Redis is slow, and waiting twice would not help."""
    if cluster:
        return ScopedCluster.from_url(
            url,
            retry_after=retry_after,
            max_connections=max_connections,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )
    return aioredis.Redis(connection_pool=pool)


class TierUnavailable(RedisUnavailable):
    """The shared tier cannot be used right now (down, slow, or circuit open)."""

    refused = False  # True: a circuit breaker refused the command; nothing new failed

    @classmethod
    def refusal(cls, message: str) -> TierUnavailable:
        exc = cls(message)
        exc.refused = True
        return exc


class _Scope:
    """``with guard.request:`` and its kin (see :class:`RedisGuard`)."""

    __slots__ = ("_check", "_guard", "_record")

    def __init__(self, guard: RedisGuard, *, check: bool, record: bool) -> None:
        self._guard = guard
        self._check = check
        self._record = record

    def __enter__(self) -> None:
        if self._check:
            self._guard.check()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if isinstance(exc, REDIS_ERRORS):
            raise self._guard.failed(exc, record=self._record) from exc
        # None, TierUnavailable already mapped, or a bug: it goes on unchanged.


class RedisGuard:
    """The one place where Redis failures become TierUnavailable, and the circuit breaker
    that then skips Redis for ``retry_after`` seconds. Commands run in one of three scopes:

    - ``request``: a request's command; refused at once while the breaker is open, and a
      failure opens it;
    - ``upkeep``: background upkeep that must try even then (the purge applier, releasing
      a lock); a failure opens the breaker for requests;
    - ``probe``: readiness probes, setup, the purge feed and best-effort cleanup; a failure
      says so and opens nothing.

    ``scoped``: the client is a ScopedCluster, whose nodes have breakers of their own.
    """

    def __init__(
        self,
        retry_after: float,
        *,
        scoped: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._retry_after = retry_after
        self._scoped = scoped
        self._clock = clock
        self._open_until = float("-inf")
        self.failures = 0  # Redis failures seen (for metrics and tests)
        self.request = _Scope(self, check=True, record=True)
        self.upkeep = _Scope(self, check=False, record=True)
        self.probe = _Scope(self, check=False, record=False)

    @property
    def available(self) -> bool:
        return self._clock() >= self._open_until

    def check(self) -> None:
        if not self.available:
            raise TierUnavailable.refusal("redis unavailable (recent failure; retrying shortly)")

    def failed(self, exc: BaseException, *, record: bool = True) -> TierUnavailable:
        """The TierUnavailable for a Redis failure; with ``record``, counted, and the
        breaker opened unless only one cluster node failed."""
        if isinstance(exc, NodeUnavailable):
            # One cluster node: its own breaker is open (tiers/cluster.py) and keys on
            # the other nodes keep hitting. A refusal by that breaker is no new failure.
            if exc.cause is None:
                return TierUnavailable.refusal(f"redis error: {exc}")
            if record:
                self.failures += 1
            return TierUnavailable(f"redis error: {exc}")
        if record:
            self.failures += 1
            # A cluster node's error that did not come through its breaker came from a
            # pipeline (the applier writing every shard): the requests' own commands open
            # that node's breaker, and the cluster as a whole is not down.
            if not (self._scoped and isinstance(exc, NODE_ERRORS)):
                self._open_until = self._clock() + self._retry_after
        return TierUnavailable(f"redis error: {type(exc).__name__}: {exc}")


class StateLost(Exception):
    """The region's purge state is not the one the applier read.

    ``lost``: part of it is gone (flush, eviction, failover): resync. Otherwise
    another applier moved it on: read it again."""

    def __init__(self, message: str, *, lost: bool) -> None:
        super().__init__(message)
        self.lost = lost


@dataclass(frozen=True, slots=True)
class Progress:
    """What the region's Redis says about a tenant's purge state."""

    applied: int | None  # last purge seq applied; None: unknown (never synced, or lost)
    floor: int
    generation: str | None  # the marker every state write checks; None: lost
    epoch: str | None  # which purge log the state belongs to (origin/purge_log/log.py)

    @property
    def intact(self) -> bool:
        return self.applied is not None and self.generation is not None


class RedisTier:
    def __init__(
        self,
        url: str,
        *,
        timeout: float,
        max_connections: int,
        retry_after: float,
        cluster: bool = False,
        layout: Layout | None = None,
    ) -> None:
        self._redis = redis_client(
            url,
            timeout=timeout,
            max_connections=max_connections,
            cluster=cluster,
            retry_after=retry_after,
        )
        self.keys = layout or Layout(CLUSTER_SHARDS if cluster else 1)
        self._unlock = self._redis.register_script(_UNLOCK)
        self._lead = self._redis.register_script(_LEAD)
        self._extend = self._redis.register_script(_EXTEND)
        self._lookup = self._redis.register_script(_LOOKUP)
        self._store = self._redis.register_script(_STORE)
        self._advance = self._redis.register_script(_ADVANCE)
        self.guard = RedisGuard(retry_after, scoped=cluster)

    def entry_key(self, tenant: str, signature: str) -> str:
        return self.keys.entry(tenant, signature)

    def lock_key(self, tenant: str, signature: str) -> str:
        return self.keys.lock(tenant, signature)

    @property
    def available(self) -> bool:
        return self.guard.available

    @property
    def failures(self) -> int:
        return self.guard.failures

    async def get(self, key: str) -> bytes | None:
        with self.guard.request:
            value = await self._redis.get(key)
        return value if isinstance(value, bytes) else None

    async def lookup(
        self, tenant: str, signature: str, tags: tuple[str, ...], lock: FillLock | None = None
    ) -> Looked:
        """One round trip: the entry and the purge state it must be checked against (the
        sync lease, then one version per tag), all in the entry's hash slot; with ``lock``,
        the key's fill lock too when the entry cannot be served (see _LOOKUP)."""
        k = self.keys
        entry_key = k.entry(tenant, signature)
        if lock is None:
            with self.guard.request:
                values = await self._redis.mget([entry_key, *k.state_keys(tenant, signature, tags)])
            got = _as_bytes(values)
            return Looked(got[0], got[1:])
        keys = [entry_key, k.lock(tenant, signature), *k.state_keys(tenant, signature, tags)]
        max_age = "" if lock.max_age_ms is None else lock.max_age_ms
        args = [lock.token, lock.lease_ms, max_age, lock.now_ms, lock.min_watermark]
        with self.guard.request:
            taken, values = await self._eval(self._lookup, keys, args)
        got = _as_bytes(values)
        return Looked(got[0], got[1:], int(taken))

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
        """One round trip: store ``value`` only if an entry of ``watermark`` is current
        under the purge state read in the same step, and release the fill lock held under
        ``token`` unless a purge overtook the fetch (see _STORE)."""
        k = self.keys
        keys = [
            k.entry(tenant, signature),
            k.lock(tenant, signature),
            *k.state_keys(tenant, signature, tags),
        ]
        with self.guard.request:
            stored, *values = await self._eval(
                self._store, keys, [token, value, max(1, ttl_seconds), watermark]
            )
        return Stored(bool(stored), _as_bytes(values))

    async def _eval(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA, loading the script if Redis lost it (a restart, a failover). What
        redis-py's Script call does, minus its per-call overhead (a fifth of a Redis
        hit's client CPU, measured): the lookup is on every hit's path."""
        try:
            return await self._redis.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            await self._redis.script_load(script.script)
            return await self._redis.evalsha(script.sha, len(keys), *keys, *args)

    async def state(self, tenant: str, signature: str, tags: tuple[str, ...]) -> list[bytes | None]:
        """The sync floor and tag versions alone (checking a fresh fetch)."""
        with self.guard.request:
            return _as_bytes(await self._redis.mget(self.keys.state_keys(tenant, signature, tags)))

    async def progress(self, tenant: str) -> Progress:
        k = self.keys
        with self.guard.upkeep:
            applied, floor, gen, epoch = await self._redis.mget(
                [k.applied(tenant), k.floor(tenant), k.generation(tenant), k.epoch(tenant)]
            )
        return Progress(
            int(applied) if applied is not None else None,
            int(floor or 0),
            _text(gen),
            _text(epoch),
        )

    async def durable_floor(self, tenant: str) -> int | None:
        """The floor no entry below which may ever be served, or None if the region's
        state was lost (then nothing can be vouched for, not even as stale)."""
        k = self.keys
        with self.guard.request:
            floor, gen = await self._redis.mget([k.floor(tenant), k.generation(tenant)])
        return int(floor or 0) if gen is not None else None

    async def apply(
        self,
        tenant: str,
        seen: Progress,
        tag_versions: dict[str, int],
        applied: int,
        floor: int,
        sync_ttl: float,
    ) -> None:
        """Record purges in every shard (tag versions with the sync lease, under the
        generation marker), then move ``applied``. No MULTI across shards (they are
        different slots): ``applied`` only moves after every shard has the tags, so a
        crash midway is repaired by re-applying. Raises :class:`StateLost` when any
        part of the state is no longer the one ``seen`` described."""
        assert seen.generation is not None and seen.applied is not None
        k, gen = self.keys, seen.generation
        tags = list(tag_versions.items())
        lease_ms = int(sync_ttl * 1000)
        with self.guard.upkeep:
            async with self._redis.pipeline(transaction=False) as pipe:
                for shard in range(k.shards):
                    keys = [k.shard_generation(tenant, shard), k.sync(tenant, shard)]
                    keys += [k.tag(tenant, shard, tag) for tag, _ in tags]
                    args = [gen, floor, lease_ms, *(seq for _, seq in tags)]
                    # EVAL, not EVALSHA: a cluster pipeline cannot load scripts first.
                    pipe.eval(_APPLY_SHARD, len(keys), *keys, *args)
                shard_ok = await pipe.execute()
            if all(shard_ok):
                moved = await self._advance(
                    keys=[k.generation(tenant), k.applied(tenant), k.floor(tenant)],
                    args=[gen, seen.applied, applied, floor],
                )
        if not all(shard_ok) or moved == 0:
            raise StateLost(f"the region lost {tenant}'s purge state", lost=True)
        if moved == 2:
            raise StateLost(f"another applier moved {tenant}'s progress", lost=False)

    async def resync(
        self, tenant: str, floor: int, sync_ttl: float, epoch: str, generation: str
    ) -> None:
        """Start a new generation of ``tenant``'s state: every entry older than ``floor``
        is void from now on. Shards first, so the state becomes readable as a whole."""
        k = self.keys
        lease_ms = int(sync_ttl * 1000)
        with self.guard.upkeep:
            async with self._redis.pipeline(transaction=False) as pipe:
                for shard in range(k.shards):
                    pipe.set(k.shard_generation(tenant, shard), generation)
                    pipe.set(k.sync(tenant, shard), floor, px=lease_ms)
                await pipe.execute()
            await self._redis.mset(
                {
                    k.floor(tenant): floor,
                    k.applied(tenant): floor,
                    k.epoch(tenant): epoch,
                    k.generation(tenant): generation,
                }
            )

    async def wipe(self, tenant: str) -> int:
        """Delete every key of ``tenant`` in this region (its state belongs to another
        purge log: a restored or replaced database). Sync leases go first, so nothing
        is served while the rest is deleted. Returns how many keys were deleted."""
        k = self.keys
        deleted = 0
        with self.guard.upkeep:
            await self._redis.delete(*(k.sync(tenant, s) for s in range(k.shards)))
            for pattern in k.tenant_patterns(tenant):
                batch: list[str] = []
                async for raw in self._redis.scan_iter(match=pattern, count=1000):
                    key = raw.decode() if isinstance(raw, bytes) else str(raw)
                    if k.owns(tenant, key):
                        batch.append(key)
                    if len(batch) >= 500:
                        deleted += await self._delete(batch)
                        batch = []
                deleted += await self._delete(batch)
        return deleted

    async def _delete(self, keys: list[str]) -> int:
        # One DEL per key: in a cluster the keys live in different slots.
        if not keys:
            return 0
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.delete(key)
            return sum(int(n) for n in await pipe.execute())

    # ------------------------------------------------- the region's purge feed

    async def publish_purges(self, region: str, message: bytes) -> None:
        with self.guard.upkeep:
            await self._redis.publish(self.keys.purge_channel(region), message)

    async def purge_messages(
        self, region: str, subscribed: Callable[[], None] | None = None
    ) -> AsyncIterator[bytes]:
        """Messages on the region's purge channel, in order, until the connection fails;
        ``subscribed`` is called once Redis has confirmed the subscription."""
        # A lost feed is the mirror's to handle (it forgets what it knew and subscribes
        # again): it says Redis failed but opens no breaker for requests.
        with self.guard.probe:
            # A cluster client picks the pub/sub node from its slot map, which it only has
            # once set up: before that redis-py raised KeyError (the channel's slot).
            await self._redis.initialize()
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(self.keys.purge_channel(region))
                async for message in pubsub.listen():
                    kind = message.get("type")
                    if kind == "message":
                        yield message["data"]
                    elif kind == "subscribe" and subscribed is not None:
                        subscribed()
            finally:
                with contextlib.suppress(TierUnavailable), self.guard.probe:
                    await pubsub.aclose()

    async def ack_purges(self, region: str, member: str, seq: int, lease: float) -> None:
        """Record that ``member`` applied purges up to ``seq``; the ack expires with it."""
        expires_ms = int((time.time() + 3 * lease) * 1000)
        with self.guard.upkeep:
            await self._redis.hset(self.keys.members(region), member, f"{seq}:{expires_ms}")

    async def purge_acks(self, region: str, tenant: str) -> list[int]:
        """Applied seqs of the region's live processes for ``tenant``."""
        with self.guard.upkeep:
            raw = await self._redis.hgetall(self.keys.members(region))
        now_ms = time.time() * 1000
        out: list[int] = []
        dead: list[bytes] = []
        suffix = f":{tenant}".encode()
        for member, value in raw.items():
            seq, _, expires = value.decode().partition(":")
            if float(expires) <= now_ms:
                dead.append(member)  # a process that stopped acking (exited or cut off)
            elif member.endswith(suffix):
                out.append(int(seq))
        if dead:
            with contextlib.suppress(TierUnavailable), self.guard.probe:
                await self._redis.hdel(self.keys.members(region), *dead)  # or next time
        return out

    async def lead(self, key: str, token: str, ttl_ms: int) -> bool:
        """Take or keep a leadership lease (SET NX, or extend if we already hold it)."""
        with self.guard.upkeep:
            return bool(await self._lead(keys=[key], args=[token, ttl_ms]))

    async def extend(self, key: str, token: str, ttl_ms: int) -> bool:
        """Extend a fill lock held under ``token``; False once it is gone or another's."""
        with self.guard.upkeep:
            return bool(await self._extend(keys=[key], args=[token, ttl_ms]))

    async def unlock(self, key: str, token: str) -> None:
        # The lock expires by itself; failing to release it early only delays others.
        with self.guard.upkeep:
            await self._unlock(keys=[key], args=[token])

    async def connect(self) -> bool:
        """Set the client up before the node serves; False if Redis cannot be reached now.

        redis-py sets a cluster client up (slot map, node pools) on first use, and a
        burst of concurrent first uses raced that setup (issue 13, H). A node whose Redis
        is down still starts: every command falls back until Redis answers."""
        try:
            with self.guard.probe:
                if isinstance(self._redis, ScopedCluster):
                    await self._redis.initialize()
                elif not await self._redis.ping():
                    return False
                # Loaded now (on every master of a cluster), so that the first miss does
                # not pay NOSCRIPT and a load on top of its round trips.
                for script in (self._lookup, self._store, self._extend, self._unlock):
                    await self._redis.script_load(script.script)
                return True
        except TierUnavailable:
            return False

    async def ping(self) -> bool:
        try:
            with self.guard.probe:
                return bool(await self._redis.ping())
        except TierUnavailable:
            return False

    async def close(self) -> None:
        await self._redis.aclose()
